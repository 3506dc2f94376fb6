"""Likely mislabelled samples: cleanlab's confident learning (Northcutt, Jiang and Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021) on out-of-sample
predicted probabilities, in the dataset's classes.

Pure: labels and probabilities in, per-sample verdicts out. Where the probabilities come from
(k-fold training, or a pretrained model's own) is the quality stage's business.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.quality import NO_LABEL
from pipelines.types import FloatArray, IntArray

# cleanlab's ranking score. "self_confidence" (cleanlab's default) is the out-of-sample
# probability of the given label, so 1 - it, the page's label-issue score, reads as "the mass
# the model puts on other classes". It also ranked best: on digits with 5% of labels flipped
# (90 of 1,797) and the stage's 5-fold probabilities (tests/test_quality.py), precision@90 was
# 0.87 against 0.83 for "confidence_weighted_entropy" and 0.78 for "normalized_margin".
RANK_METHOD = "self_confidence"
# Probabilities below this are raised to it before renormalising, so a row whose dataset
# classes all underflowed to 0 (the model favours an output no dataset class maps to) becomes
# uniform rather than 0/0.
PROBABILITY_FLOOR = 1e-12


@dataclass(frozen=True)
class LabelIssues:
    """Per-sample results, one entry per row of the labels given.

    score: (N,) float32 in [0, 1], 1 - cleanlab's label quality (higher: more likely wrong),
    NaN where the label is not among the classes the probabilities cover; is_issue: (N,) bool,
    cleanlab's ``find_label_issues`` verdict; suggested: (N,) int64, the dataset class the
    probabilities favour, NO_LABEL where the label is not covered; few: dataset classes with
    fewer than two labelled samples, which cleanlab cannot judge."""

    score: FloatArray
    is_issue: npt.NDArray[np.bool_]
    suggested: IntArray
    few: tuple[int, ...] = ()


def renormalised(probabilities: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(N, C') probabilities of the covered classes -> (N, C') float64 rows summing to 1."""
    p = np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR)
    return p / p.sum(axis=1, keepdims=True)


def find_label_issues(labels: npt.ArrayLike, probabilities: npt.ArrayLike) -> LabelIssues:
    """labels: (N,) int64 dataset class per sample; probabilities: (N, C) float32 out-of-sample
    probability of each dataset class (``pipelines.labels.class_probabilities``), NaN in the
    columns of classes the model has no output for.

    The probabilities are restricted to the covered classes (the columns without NaN) and
    renormalised; samples labelled with an uncovered class get a NaN score and NO_LABEL.
    """
    import cleanlab.filter  # imported here: it brings pandas, which only this stage needs
    import cleanlab.rank

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    n, num_classes = probabilities.shape
    covered = np.flatnonzero(np.isfinite(probabilities).all(axis=0))
    position = np.full(num_classes, -1, dtype=np.int64)
    position[covered] = np.arange(len(covered))
    known = position[labels] >= 0
    score = np.full(n, np.nan, dtype=np.float32)
    is_issue = np.zeros(n, dtype=bool)
    suggested = np.full(n, NO_LABEL, dtype=np.int64)
    if len(covered) < 2 or known.sum() < 2:
        return LabelIssues(score, is_issue, suggested)
    p = renormalised(probabilities[known][:, covered])
    given = position[labels[known]]
    counts = np.bincount(given, minlength=len(covered))
    few = tuple(int(covered[c]) for c in np.flatnonzero(counts < 2))
    score[known] = 1.0 - cleanlab.rank.get_label_quality_scores(given, p, method=RANK_METHOD)
    with warnings.catch_warnings():
        # "May not flag all label issues in class: k, it has too few examples" names a class
        # by its position among the covered ones; the caller is told about ``few`` by name.
        warnings.filterwarnings("ignore", message="May not flag all label issues")
        # n_jobs=1: cleanlab would otherwise fork a process per core from this one, which holds
        # torch's thread pools (forking those can deadlock); one process takes well under a
        # second for tens of thousands of samples.
        is_issue[known] = cleanlab.filter.find_label_issues(given, p, n_jobs=1)
    suggested[known] = covered[p.argmax(axis=1)]
    return LabelIssues(score, is_issue, suggested, few)


def precision_at_k(score: npt.ArrayLike, truly_wrong: npt.ArrayLike) -> float:
    """The fraction of the k highest scores that are truly wrong labels, k = how many are
    (NaN scores rank last). The measure the tests and the benchmark report."""
    truly_wrong = np.asarray(truly_wrong, dtype=bool)
    k = int(truly_wrong.sum())
    if k == 0:
        return float("nan")
    ranked = np.argsort(-np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf))
    return float(truly_wrong[ranked[:k]].mean())
