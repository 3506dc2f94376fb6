"""Prediction metrics of a run: per-sample correctness and loss, accuracy by split, confusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipelines.labels import UNMAPPED
from pipelines.records import SplitAccuracy

# The sample table's ``model_split``: whether the model was fitted on a sample.
TRAIN, HELD_OUT = "train", "held-out"
# The dataset class of a prediction that is no dataset class (an output the mapping leaves out).
OTHER = -1


def prediction_columns(log_prob: np.ndarray, model_labels: np.ndarray) -> dict[str, np.ndarray]:
    """log_prob: (N, K) float32; model_labels: (N,) int64 with UNMAPPED where unknown."""
    predicted = log_prob.argmax(axis=1)
    known = model_labels != UNMAPPED
    loss = np.full(len(predicted), np.nan, dtype=np.float32)
    loss[known] = -log_prob[known, model_labels[known]]
    correct = np.where(known, (predicted == model_labels).astype(np.int8), np.int8(-1))
    return {
        "predicted": predicted.astype(np.int64),
        "loss": loss,
        "correct": correct.astype(np.int8),
    }


def accuracy_by_split(correct: np.ndarray, held_out: np.ndarray) -> dict[str, SplitAccuracy]:
    """correct: (N,) int8, 1 / 0 / -1 (class not mapped); held_out: (N,) bool.

    {"held-out": SplitAccuracy, "train": SplitAccuracy}: accuracy over the split's rows whose
    class is known (None when there are none), and the split's number of rows.
    """
    result = {}
    for name, rows in ((HELD_OUT, held_out), (TRAIN, ~held_out)):
        known = correct[rows][correct[rows] >= 0]
        result[name] = SplitAccuracy(
            accuracy=float(known.mean()) if len(known) else None, samples=int(rows.sum())
        )
    return result


def output_classes(dataset_to_model: Sequence[int], num_outputs: int) -> np.ndarray:
    """(num_outputs,) int64: the dataset class each model output stands for, ``OTHER`` for an
    output no dataset class maps to (where several classes share an output, the last one)."""
    classes = np.full(num_outputs, OTHER, dtype=np.int64)
    for klass, output in enumerate(dataset_to_model):
        if output != UNMAPPED and 0 <= output < num_outputs:
            classes[output] = klass
    return classes


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, dataset_to_model: Sequence[int]
) -> np.ndarray:
    """(C, C+1) counts: rows true dataset class, columns predicted dataset class, last column
    a model output that is no dataset class. ``predicted``: model outputs."""
    predicted = np.asarray(predicted, dtype=np.int64)
    outputs = max(int(predicted.max()) + 1 if len(predicted) else 0, max(dataset_to_model) + 1)
    return class_confusion(
        labels, output_classes(dataset_to_model, outputs)[predicted], len(dataset_to_model)
    )


def class_confusion(
    labels: np.ndarray, predicted_class: np.ndarray, num_classes: int
) -> np.ndarray:
    """(C, C+1) counts of (true class, predicted dataset class) pairs; a ``predicted_class`` of
    ``OTHER`` counts in the last column."""
    predicted_class = np.asarray(predicted_class, dtype=np.int64)
    columns = np.where(predicted_class == OTHER, num_classes, predicted_class)
    matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), columns), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """matrix: (C, C+1) counts from ``confusion_matrix`` (rows true, columns predicted, last
    column "no dataset class") -> per-class arrays of length C: ``precision``, ``recall``,
    ``f1`` (NaN where undefined: nothing predicted, or no samples) and ``support`` (samples)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = matrix.shape[0]
    hits = np.diag(matrix[:, :num_classes]).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix[:, :num_classes].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), np.nan)
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), np.nan)
        f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}
