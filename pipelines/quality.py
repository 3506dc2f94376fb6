"""What the ``quality`` stage finds in a run's data: label issues, near-duplicates, outliers.

The stage (``pipelines/stages/quality.py``) writes one ``SampleQuality`` per run; the dashboard's
workbench, ``main.py export`` and the tests read it with ``load_quality``. Rows are sample rows
(nested-subset order), like every other per-sample array of a run.

Near-duplicate *groups* are not stored: they depend on a similarity threshold the user moves in
the page, so they are derived on request from each sample's stored nearest neighbours
(``duplicate_groups``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipelines.store import RunStore

NO_LABEL = -1  # suggested_label where the sample's class is not among the model's outputs
NO_GROUP = -1  # duplicate_groups for a sample with no near-duplicate
# Cosine similarity; the page's slider starts here. Measured on digits + smallcnn in the default
# layer (the last hidden one, classifier.2: 128 values a trained classifier packs by class), with
# 25 exact copies and 25 copies with pixel noise (sigma 1 of 255) planted among the 1,797 digits:
# the copies are at >= 0.9997 and distinct digits' nearest neighbours reach 0.9985, so 0.999
# groups exactly the 50 planted pairs; 0.98 grouped 799 samples (one group of 141 distinct
# digits), 0.995 146. Noisier copies (sigma 6) fall to 0.993 there; the last conv block
# (--quality-layer features.8) keeps them >= 0.9927 with distinct digits <= 0.989.
DEFAULT_DUPLICATE_THRESHOLD = 0.999


@dataclass(frozen=True)
class QualityInfo:
    """How the stage's numbers were made: shown in the page and kept in the manifest."""

    # Which predicted probabilities cleanlab ranked, in words for the page, e.g.
    # "out-of-fold probabilities of 5 smallcnn models, each trained without its fold".
    probabilities: str
    probabilities_kind: str  # "out-of-fold" (k-fold training) | "model" (a pretrained model's own)
    folds: int | None  # k of the k-fold training; None for "model"
    layer: str  # the layer whose features the neighbours were found in
    neighbour_index: str  # "exact" | the faiss index used: "faiss IndexIVFFlat"
    neighbours: int  # K neighbours stored per sample
    label_issues: int  # how many samples cleanlab flags
    # Epochs each fold model was trained ("out-of-fold"; the run's smallcnn has 8); None for "model".
    fold_epochs: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QualityInfo:
        return cls(
            probabilities=str(data["probabilities"]),
            probabilities_kind=str(data["probabilities_kind"]),
            folds=None if data.get("folds") is None else int(data["folds"]),
            layer=str(data["layer"]),
            neighbour_index=str(data["neighbour_index"]),
            neighbours=int(data["neighbours"]),
            label_issues=int(data["label_issues"]),
            fold_epochs=None if data.get("fold_epochs") is None else int(data["fold_epochs"]),
        )


@dataclass(frozen=True)
class SampleQuality:
    """Per-sample results of the quality stage; every array has one entry per sample row."""

    # (N,) float32 in [0, 1]: 1 - cleanlab's label quality score, so higher means more likely
    # mislabelled; NaN where the sample's class is not among the model's outputs.
    label_issue_score: npt.NDArray[np.float32]
    # (N,) bool: cleanlab's find_label_issues verdict.
    is_label_issue: npt.NDArray[np.bool_]
    # (N,) int64: the dataset class the out-of-sample probabilities favour; NO_LABEL if unknown.
    suggested_label: npt.NDArray[np.int64]
    # (N, K) int64: rows of the K most similar other samples (cosine), most similar first.
    neighbours: npt.NDArray[np.int64]
    # (N, K) float32: the cosine similarity to each of those neighbours.
    similarities: npt.NDArray[np.float32]
    # (N,) float32: mean cosine distance to the K neighbours; higher means less typical.
    outlier_score: npt.NDArray[np.float32]
    info: QualityInfo

    ARRAYS = (
        "label_issue_score",
        "is_label_issue",
        "suggested_label",
        "neighbours",
        "similarities",
        "outlier_score",
    )

    @property
    def duplicate_score(self) -> npt.NDArray[np.float32]:
        """(N,) float32: the similarity to the nearest other sample (sort key of the gallery)."""
        if self.similarities.shape[1] == 0:
            return np.zeros(len(self.similarities), dtype=np.float32)
        return self.similarities[:, 0]


def recorded_info(manifest: dict[str, Any]) -> QualityInfo | None:
    """The manifest's ``quality`` entry (written when the stage is done), or None."""
    data = manifest.get("quality")
    return None if data is None else QualityInfo.from_json(data)


def save_quality(store: RunStore, quality: SampleQuality) -> None:
    """Arrays first, then the info that marks them complete."""
    store.save_arrays("quality", {name: getattr(quality, name) for name in SampleQuality.ARRAYS})
    store.save_json("quality_info", quality.info.to_json())


def load_quality(store: RunStore) -> SampleQuality | None:
    """The run's quality results, or None when its quality stage has not run (yet)."""
    if not (store.has("quality_info") and store.has("quality")):
        return None
    arrays = store.load_arrays("quality")
    return SampleQuality(
        **{name: arrays[name] for name in SampleQuality.ARRAYS},
        info=QualityInfo.from_json(store.load_json("quality_info")),
    )


def duplicate_groups(
    neighbours: npt.NDArray[np.int64], similarities: npt.NDArray[np.float32], threshold: float
) -> npt.NDArray[np.int64]:
    """(N,) int64 group per row: samples joined by a neighbour link of similarity >= threshold
    share a group (transitively); a row with no such link is NO_GROUP. Groups are numbered
    0, 1, ... in the order of their first row."""
    n = len(neighbours)
    keep = (similarities >= threshold) & (neighbours >= 0)
    rows = np.repeat(np.arange(n), neighbours.shape[1])[keep.ravel()]
    cols = neighbours.ravel()[keep.ravel()]
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=component.max() + 1 if n else 0)
    in_group = sizes[component] > 1
    groups = np.full(n, NO_GROUP, dtype=np.int64)
    # Renumber the groups by their first row so numbering is stable and dense (vectorised: a
    # per-group Python loop took 0.4 s for 13k samples in 3k groups).
    _, first, inverse = np.unique(component[in_group], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    groups[in_group] = rank[inverse]
    return groups
