"""The confusion matrix figure and per-class metrics: exact counts, collapsing, cell selections."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from components.confusion import cell_selection, confusion_figure, confusion_view
from pipelines.metrics import confusion_matrix, per_class_metrics


def test_per_class_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 6, 500))
    predicted[predicted == 5] = 4  # class 5 is never predicted: its precision is undefined
    matrix = confusion_matrix(labels, predicted, list(range(6)))
    metrics = per_class_metrics(matrix)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(6)), zero_division=np.nan
    )
    np.testing.assert_allclose(metrics["precision"], precision, equal_nan=True)
    np.testing.assert_allclose(metrics["recall"], recall)
    np.testing.assert_allclose(metrics["f1"][:5], f1[:5])
    assert np.isnan(metrics["precision"][5]) and np.isnan(metrics["f1"][5])
    np.testing.assert_array_equal(metrics["support"], support)
    np.testing.assert_array_equal(
        matrix[:, :6], sk_confusion(labels, predicted, labels=list(range(6)))
    )


def test_predictions_outside_the_dataset_classes_have_their_own_column():
    # Dataset classes 0, 1 are model outputs 3 and 7; output 5 is no dataset class.
    matrix = confusion_matrix(np.array([0, 0, 1, 1]), np.array([3, 5, 7, 3]), [3, 7])
    assert matrix.tolist() == [[1, 0, 1], [1, 1, 0]]
    view = confusion_view(matrix, ["cat", "dog"])
    assert view.column_classes == [0, 1, "other"]
    figure = confusion_figure(view)
    go.Figure(figure)
    json.dumps(figure)
    cells, row_totals, column_totals = (trace["customdata"] for trace in figure["data"])
    assert cells[0] == ["true=0;pred=0", "true=0;pred=1", "true=0;pred=other"]
    assert row_totals == [["true=0"], ["true=1"]]
    assert column_totals == [["pred=0", "pred=1", "pred=other"]]


def test_many_classes_collapse_to_the_most_confused_and_keep_every_count():
    rng = np.random.default_rng(0)
    classes = 120
    matrix = np.zeros((classes, classes + 1), dtype=np.int64)
    matrix[np.arange(classes), np.arange(classes)] = 40
    matrix[7, 9] = 30  # the two most confused classes
    matrix[9, 7] = 25
    matrix[50, 51] = 3
    matrix[:, :classes] += rng.integers(0, 2, (classes, classes))
    view = confusion_view(matrix, [f"c{i}" for i in range(classes)], order="errors", max_classes=20)
    assert view.counts.sum() == matrix.sum()
    assert view.hidden == 100 and view.counts.shape == (21, 21)
    assert view.row_classes[:2] == [9, 7] or view.row_classes[:2] == [7, 9]
    assert view.row_classes[-1] is None
    figure = confusion_figure(view, normalise="rows")
    go.Figure(figure)
    cells = figure["data"][0]["customdata"]
    # The collapsed row and column select nothing; the rest name their classes.
    assert all(cell == "" for cell in cells[-1]) and all(row[-1] == "" for row in cells)
    assert cells[0][1] == cell_selection(view.row_classes[0], view.column_classes[1])
    z = np.array(figure["data"][0]["z"])
    np.testing.assert_allclose(z.sum(axis=1), 1.0)  # row-normalised


def test_order_and_normalise_are_checked():
    matrix = np.eye(3, 4, dtype=np.int64)
    with pytest.raises(ValueError):
        confusion_view(matrix, ["a", "b", "c"], order="size")
    with pytest.raises(ValueError):
        confusion_figure(confusion_view(matrix, ["a", "b", "c"]), normalise="columns")
