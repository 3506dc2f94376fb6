"""The confusion matrix as a clickable heatmap, readable at 10 classes and at 1,000.

Rows are true dataset classes, columns predicted ones (plus "other" where the model predicted a
class that is no dataset class). A Σ column holds each true class's total and a Σ row each
predicted class's total. Every cell carries, in ``customdata``, the selection it stands for
(``pipelines.selection`` spec text, e.g. ``"true=3;pred=5"``): the browser copies it into the
page's selection on click, so the figure and the selection grammar cannot disagree.

Past ``max_classes`` classes only the most confused ones are shown (most errors, as true or as
predicted class); the rest are summed into one "other classes" row and column, whose cells
select nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from components.theme import ACCENT, MUTED, TEXT, base_layout

ORDERS = ("class", "errors")
NORMALISE = ("counts", "rows")
DEFAULT_MAX_CLASSES = 25
# Cells get their number written in them up to this many shown classes; beyond, hover says it.
MAX_TEXT_CLASSES = 30
OTHER_PREDICTED = "other (not a dataset class)"
SHORT_NAME = 14


@dataclass(frozen=True)
class ConfusionView:
    """What the figure shows: the (possibly collapsed) matrix and what each row/column is."""

    counts: npt.NDArray[np.int64]  # (R, K) shown counts, rows true, columns predicted
    row_names: list[str]
    column_names: list[str]
    row_classes: list[int | None]  # dataset class of each row; None = the collapsed rest
    column_classes: list[int | str | None]  # ... of each column; "other" = no dataset class
    hidden: int  # classes collapsed into "other classes"


def class_errors(matrix: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """matrix: (C, C+1) -> (C,) errors each class takes part in, as true class or as prediction."""
    num_classes = matrix.shape[0]
    square = matrix[:, :num_classes]
    off = square - np.diag(np.diag(square))
    return off.sum(axis=1) + matrix[:, num_classes] + off.sum(axis=0)


def confusion_view(
    matrix: npt.NDArray[np.int64],
    class_names: Sequence[str],
    order: str = "class",
    max_classes: int = DEFAULT_MAX_CLASSES,
) -> ConfusionView:
    """matrix: (C, C+1) from ``pipelines.metrics.confusion_matrix``. ``order``: "class" keeps
    the dataset's order, "errors" puts the most confused classes first."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = matrix.shape[0]
    errors = class_errors(matrix)
    shown = np.arange(num_classes)
    hidden = 0
    if num_classes > max_classes:
        # The most confused classes, ties by class index; the rest become one row and column.
        shown = np.sort(np.argsort(-errors, kind="stable")[:max_classes])
        hidden = num_classes - len(shown)
    if order == "errors":
        shown = shown[np.argsort(-errors[shown], kind="stable")]
    rest = np.setdiff1d(np.arange(num_classes), shown)
    has_other = bool(matrix[:, num_classes].any())

    def columns_of(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        parts = [rows[:, shown]]
        if hidden:
            parts.append(rows[:, rest].sum(axis=1, keepdims=True))
        if has_other:
            parts.append(rows[:, num_classes : num_classes + 1])
        return np.concatenate(parts, axis=1)

    counts = columns_of(matrix[shown])
    if hidden:
        counts = np.concatenate([counts, columns_of(matrix[rest].sum(axis=0, keepdims=True))])
    names = [str(class_names[c]) if c < len(class_names) else f"class {c}" for c in shown.tolist()]
    rest_name = f"{hidden} other classes"
    row_classes: list[int | None] = [int(c) for c in shown] + ([None] if hidden else [])
    column_classes: list[int | str | None] = [int(c) for c in shown]
    column_names = list(names)
    if hidden:
        column_classes.append(None)
        column_names.append(rest_name)
    if has_other:
        column_classes.append("other")
        column_names.append(OTHER_PREDICTED)
    return ConfusionView(
        counts=counts,
        row_names=names + ([rest_name] if hidden else []),
        column_names=column_names,
        row_classes=row_classes,
        column_classes=column_classes,
        hidden=hidden,
    )


def cell_selection(
    true_class: int | None, predicted: int | str | None, split: str | None = None
) -> str:
    """The selection spec of one cell ("" where it selects nothing: a collapsed row or column);
    ``split`` ("train" / "held-out") when the matrix counts only that split's samples."""
    terms = []
    if true_class is not None:
        terms.append(f"true={true_class}")
    if predicted is not None:
        terms.append(f"pred={predicted}")
    if split is not None:
        terms.append(f"split={split}")
    return ";".join(terms)


def short(name: str) -> str:
    first = name.split(",")[0].strip() or name
    return first if len(first) <= SHORT_NAME else first[: SHORT_NAME - 1] + "…"


def tick_labels(names: Sequence[str]) -> list[str]:
    """Short, unique axis labels (plotly merges equal category names into one)."""
    labels = [short(n) for n in names]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    return [f"{label} ({i})" if seen[label] > 1 else label for i, label in enumerate(labels)]


# Dark cells for nothing, the page's blue for a full row; the square root (below) lifts a
# 2% confusion to a visible shade next to a 98% diagonal.
# The Σ cells' z, below every share: the scale's first stop paints them grey.
TOTAL_Z = -0.1
TRUE_TOTAL, PREDICTED_TOTAL = "Σ true", "Σ predicted"
CELL_SCALE = [
    [0.0, "#3d3d3d"],
    [0.08, "#3d3d3d"],
    [0.1 / 1.1, "#2a2a2a"],  # a share of 0: (0 - TOTAL_Z) / (1 - TOTAL_Z)
    [0.15, "#23405e"],
    [1.0, "#4e9de6"],
]


def confusion_figure(
    view: ConfusionView, normalise: str = "counts", title: str = "", split: str | None = None
) -> dict[str, Any]:
    """One heatmap: the matrix plus a Σ column (true-class totals) and a Σ row (prediction
    totals), every cell's selection in ``customdata`` (restricted to ``split`` when the matrix
    counts one split only) and the counts in the trace's ``meta``.

    The Σ cells are in the same trace (one trace, one grid) and sit below the colour scale's
    range (``TOTAL_Z``), which the scale paints grey."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    counts = view.counts
    rows, cols = counts.shape
    row_totals = counts.sum(axis=1)
    column_totals = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = counts / np.maximum(row_totals, 1)[:, None]
    # Colour by row share whatever the numbers say (a class's errors read the same at any class
    # size); the square root lifts a 2% confusion to a visible shade next to a 98% diagonal.
    z = np.full((rows + 1, cols + 1), TOTAL_Z)
    z[:rows, :cols] = np.sqrt(np.nan_to_num(fractions))
    xs = [*tick_labels(view.column_names), TRUE_TOTAL]
    ys = [*tick_labels(view.row_names), PREDICTED_TOTAL]
    selections = [
        [
            cell_selection(rc, cc, split) if rc is not None and cc is not None else ""
            for cc in view.column_classes
        ]
        + [cell_selection(rc, None, split) if rc is not None else ""]
        for rc in view.row_classes
    ]
    selections.append(
        [cell_selection(None, cc, split) if cc is not None else "" for cc in view.column_classes]
        + [""]
    )
    if normalise == "rows":
        numbers = [
            [f"{100 * v:.0f}%" if c else "" for v, c in zip(fr, ct, strict=True)]
            for fr, ct in zip(fractions, counts, strict=True)
        ]
    else:
        numbers = [[f"{c:,}" if c else "" for c in row] for row in counts.tolist()]
    text = [[*numbers[i], f"{row_totals[i]:,}"] for i in range(rows)]
    text.append([*(f"{t:,}" for t in column_totals.tolist()), f"{counts.sum():,}"])
    hover = [
        [
            f"true: {view.row_names[i]}<br>predicted: {view.column_names[j]}<br>"
            f"{counts[i, j]:,} samples, {100 * fractions[i, j]:.1f}% of the row"
            for j in range(cols)
        ]
        + [f"true: {view.row_names[i]}<br>{row_totals[i]:,} samples — click to select the class"]
        for i in range(rows)
    ]
    hover.append(
        [
            f"predicted: {view.column_names[j]}<br>{column_totals[j]:,} samples — click to "
            "select the prediction"
            for j in range(cols)
        ]
        + [f"{counts.sum():,} samples"]
    )
    with_text = max(rows, cols) <= MAX_TEXT_CLASSES
    main = {
        "type": "heatmap",
        "x": xs,
        "y": ys,
        "z": z.tolist(),
        "zmin": TOTAL_Z,
        "zmax": 1.0,
        "meta": {"counts": counts.tolist()},
        "customdata": selections,
        "text": text,
        "hovertext": hover,
        "hovertemplate": "%{hovertext}<extra></extra>",
        "texttemplate": "%{text}" if with_text else "",
        "textfont": {"size": 11, "color": TEXT},
        "colorscale": CELL_SCALE,
        "showscale": False,
        "xgap": 1,
        "ygap": 1,
    }
    size = max(rows, cols)
    tick_font = 11 if size <= 30 else (8 if size <= 60 else 6)
    layout = base_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={
            "title": {"text": "predicted", "font": {"color": MUTED}},
            "side": "top",
            "tickangle": -45,
            "tickfont": {"size": tick_font},
            "automargin": True,
            # Class names such as "0".."9" would make plotly guess a numeric axis.
            "type": "category",
            "categoryorder": "array",
            "categoryarray": xs,
            "showgrid": False,
        },
        yaxis={
            "title": {"text": "true", "font": {"color": MUTED}},
            "autorange": "reversed",
            "tickfont": {"size": tick_font},
            "automargin": True,
            "type": "category",
            "categoryorder": "array",
            "categoryarray": ys,
            "showgrid": False,
        },
        hovermode="closest",
        meta={"accent": ACCENT, "hidden": view.hidden},
        height=max(360, min(1000, 150 + 28 * size)),
    )
    return {"data": [main], "layout": layout}
