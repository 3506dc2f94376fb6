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
    names = [str(class_names[c]) if c < len(class_names) else f"class {c}" for c in shown]
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


def cell_selection(true_class: int | None, predicted: int | str | None) -> str:
    """The selection spec of one cell ("" where it selects nothing: a collapsed row or column)."""
    terms = []
    if true_class is not None:
        terms.append(f"true={true_class}")
    if predicted is not None:
        terms.append(f"pred={predicted}")
    return ";".join(terms)


def short(name: str) -> str:
    first = name.split(",")[0].strip() or name
    return first if len(first) <= SHORT_NAME else first[: SHORT_NAME - 1] + "…"


def confusion_figure(
    view: ConfusionView, normalise: str = "counts", title: str = ""
) -> dict[str, Any]:
    """The heatmap (+ Σ column and row), every cell's selection in ``customdata``."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise must be one of {NORMALISE}, got {normalise!r}")
    counts = view.counts
    rows, cols = counts.shape
    row_totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = counts / np.maximum(row_totals, 1)[:, None]
    z = fractions if normalise == "rows" else counts.astype(np.float64)
    # Unique tick labels: plotly merges equal category names.
    xs = [f"{short(n)} ·{i}" for i, n in enumerate(view.column_names)]
    ys = [f"{short(n)} ·{i}" for i, n in enumerate(view.row_names)]
    selections = [
        [
            cell_selection(rc, cc) if rc is not None and cc is not None else ""
            for cc in view.column_classes
        ]
        for rc in view.row_classes
    ]
    hover = [
        [
            f"true: {view.row_names[i]}<br>predicted: {view.column_names[j]}<br>"
            f"{counts[i, j]:,} samples ({100 * fractions[i, j]:.1f}% of the row)"
            for j in range(cols)
        ]
        for i in range(rows)
    ]
    with_text = max(rows, cols) <= MAX_TEXT_CLASSES
    if normalise == "rows":
        text = [
            [f"{100 * v:.0f}" if c else "" for v, c in zip(fr, ct, strict=True)]
            for fr, ct in zip(fractions, counts, strict=True)
        ]
    else:
        text = [[f"{c}" if c else "" for c in row] for row in counts.tolist()]
    # Cell numbers are annotations (hover text is already the cell's long description).
    main = {
        "type": "heatmap",
        "x": xs,
        "y": ys,
        "z": z.tolist(),
        "customdata": selections,
        "text": hover,
        "hovertemplate": "%{text}<extra></extra>",
        "colorscale": "Blues",
        "reversescale": False,
        "showscale": False,
        "xgap": 1,
        "ygap": 1,
    }
    totals_column = {
        "type": "heatmap",
        "x": ["Σ true"] * rows,
        "y": ys,
        "z": row_totals.astype(float).reshape(-1, 1).tolist(),
        "customdata": [
            [cell_selection(rc, None) if rc is not None else ""] for rc in view.row_classes
        ],
        "text": [
            [f"true: {n}<br>{t:,} samples — click to select the class"]
            for n, t in zip(view.row_names, row_totals, strict=True)
        ],
        "hovertemplate": "%{text}<extra></extra>",
        "colorscale": [[0, "#3a3a3a"], [1, "#5a5a5a"]],
        "showscale": False,
        "xgap": 1,
        "ygap": 1,
    }
    column_totals = counts.sum(axis=0)
    totals_row = {
        "type": "heatmap",
        "x": xs,
        "y": ["Σ predicted"],
        "z": [column_totals.astype(float).tolist()],
        "customdata": [
            [cell_selection(None, cc) if cc is not None else "" for cc in view.column_classes]
        ],
        "text": [
            [
                f"predicted: {n}<br>{t:,} samples — click to select the prediction"
                for n, t in zip(view.column_names, column_totals, strict=True)
            ]
        ],
        "hovertemplate": "%{text}<extra></extra>",
        "colorscale": [[0, "#3a3a3a"], [1, "#5a5a5a"]],
        "showscale": False,
        "xgap": 1,
        "ygap": 1,
    }
    annotations: list[dict[str, Any]] = []
    if with_text:
        peak = float(np.nanmax(z)) if z.size else 0.0
        for i in range(rows):
            for j in range(cols):
                if not text[i][j]:
                    continue
                annotations.append(
                    {
                        "x": xs[j],
                        "y": ys[i],
                        "text": text[i][j],
                        "showarrow": False,
                        "font": {
                            "size": 11,
                            "color": "#111" if peak and z[i, j] > 0.55 * peak else TEXT,
                        },
                    }
                )
        for i in range(rows):
            annotations.append(
                {
                    "x": "Σ true",
                    "y": ys[i],
                    "text": f"{row_totals[i]}",
                    "showarrow": False,
                    "font": {"size": 10, "color": MUTED},
                }
            )
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
            "categoryorder": "array",
            "categoryarray": [*xs, "Σ true"],
            "showgrid": False,
        },
        yaxis={
            "title": {"text": "true", "font": {"color": MUTED}},
            "autorange": "reversed",
            "tickfont": {"size": tick_font},
            "automargin": True,
            "categoryorder": "array",
            "categoryarray": [*ys, "Σ predicted"],
            "showgrid": False,
        },
        annotations=annotations,
        hovermode="closest",
        meta={"accent": ACCENT, "hidden": view.hidden},
        height=max(320, min(900, 140 + 22 * size)),
    )
    return {"data": [main, totals_column, totals_row], "layout": layout}
