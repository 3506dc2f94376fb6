"""The inspector's data: a per-run table the browser keeps, and the top-10 bar chart.

Hovering must update the inspector within 100 ms, so the browser gets every row's uid, labels and
top-10 predictions once per run (``inspector_table``) and draws the bar chart itself. The chart's
layout comes from ``top10_figure`` here; ``assets/layerscope.js`` fills in the bars exactly as
``top10_traces`` does (a browser test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from components.theme import ACCENT, MUTED, SUCCESS, base_layout

BAR_COLOR = "#4e9de6"
NAME_CHARS = 26  # ImageNet names run long ("German shepherd, German shepherd dog, ...")
PROB_DECIMALS = 4
TOP10_HEIGHT = 250


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    """The first synonym of a class name, cut to ``limit`` characters with an ellipsis."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


def inspector_table(
    samples: Mapping[str, Sequence[Any]],
    predictions: Mapping[str, npt.NDArray[Any]] | None,
    model_class_names: Sequence[str],
) -> dict[str, Any]:
    """Everything the browser needs to describe any row on hover, as JSON-ready lists.

    samples: the run's ``samples`` columns (uid, label_name, model_label per row).
    predictions: the ``predictions`` arrays (top10_index (N, k) int64, top10_prob (N, k)
    float32, predicted (N,) int64, correct (N,) int8), or None while not computed yet.
    """
    table: dict[str, Any] = {
        "uid": list(samples["uid"]),
        "label": list(samples["label_name"]),
        "model_label": [int(v) for v in samples["model_label"]],
        "classes": [str(name) for name in model_class_names],
        "short": [short_name(str(name)) for name in model_class_names],
        "pred": None,
        "correct": None,
        "top_idx": None,
        "top_prob": None,
    }
    if predictions is not None:
        table["pred"] = np.asarray(predictions["predicted"]).astype(np.int64).tolist()
        table["correct"] = np.asarray(predictions["correct"]).astype(np.int64).tolist()
        table["top_idx"] = np.asarray(predictions["top10_index"]).astype(np.int64).tolist()
        probs = np.asarray(predictions["top10_prob"], dtype=np.float64)
        table["top_prob"] = np.round(probs, PROB_DECIMALS).tolist()
    return table


LINE_WIDTH = 3
# The bars' fixed attributes; the browser copies them (``top10_style``) and adds the data. The
# visible bars do not take the mouse: a transparent full-width bar per class does, so a class at
# 0.0% (a zero-width bar) can still be hovered and clicked.
STATIC_TRACE: dict[str, Any] = {
    "type": "bar",
    "orientation": "h",
    "textposition": "auto",
    "hoverinfo": "skip",
    "name": "probability",
}
HIT_TRACE: dict[str, Any] = {
    "type": "bar",
    "orientation": "h",
    "marker": {"color": "rgba(0,0,0,0)"},
    "hovertemplate": "%{customdata[1]}<br>p = %{customdata[2]:.4f}"
    "<br><i>click: explain this class</i><extra></extra>",
    "name": "classes",
}


def top10_style() -> dict[str, Any]:
    """What ``assets/layerscope.js`` needs to draw exactly the bars ``top10_traces`` draws."""
    return {
        "trace": dict(STATIC_TRACE),
        "hitTrace": dict(HIT_TRACE),
        "barColor": BAR_COLOR,
        "trueColor": SUCCESS,
        "explainedColor": ACCENT,
        "lineWidth": LINE_WIDTH,
    }


def top10_traces(
    classes: Sequence[int],
    probs: Sequence[float],
    class_names: Sequence[str],
    true_class: int | None,
    explained_class: int | None,
) -> list[dict[str, Any]]:
    """The visible bars (best first) and the transparent full-width bars that take hover and
    click; both carry ``customdata`` [class index, full name, probability] per bar (lists: the
    click handler reads the class index from it).

    The true class is green, the class whose explanations are shown has an accent outline.
    """
    names = [str(class_names[c]) if c < len(class_names) else str(c) for c in classes]
    rounded = [round(float(p), PROB_DECIMALS) for p in probs]
    labels = [f"{short_name(name)} " for name in names]
    custom = [[int(c), name, p] for c, name, p in zip(classes, names, rounded, strict=True)]
    bars = {
        **STATIC_TRACE,
        "x": rounded,
        "y": labels,
        "customdata": custom,
        "text": [f"{100 * float(p):.1f}%" for p in probs],
        "marker": {
            "color": [SUCCESS if c == true_class else BAR_COLOR for c in classes],
            "line": {
                "color": [ACCENT if c == explained_class else "rgba(0,0,0,0)" for c in classes],
                "width": LINE_WIDTH,
            },
        },
    }
    hit = {**HIT_TRACE, "x": [1.0] * len(classes), "y": labels, "customdata": custom}
    return [bars, hit]


def top10_layout() -> dict[str, Any]:
    """The chart's layout (the browser reuses it for every hovered sample)."""
    return base_layout(
        height=TOP10_HEIGHT,
        margin={"l": 8, "r": 12, "t": 8, "b": 28},
        xaxis={"range": [0, 1.08], "tickformat": ".0%", "fixedrange": True},
        # "category": class names such as "4" must not turn the axis numeric.
        yaxis={"type": "category", "autorange": "reversed", "automargin": True, "fixedrange": True},
        bargap=0.25,
        barmode="overlay",
        showlegend=False,
        hovermode="closest",
    )


def top10_figure(
    classes: Sequence[int],
    probs: Sequence[float],
    class_names: Sequence[str],
    true_class: int | None = None,
    explained_class: int | None = None,
    empty_message: str = "hover a point to see its top-10 predictions",
) -> dict[str, Any]:
    """The top-10 chart of one sample, or a chart saying ``empty_message`` when ``classes`` is
    empty."""
    layout = top10_layout()
    if not classes:
        layout["xaxis"] = {**layout["xaxis"], "visible": False}
        layout["yaxis"] = {**layout["yaxis"], "visible": False}
        layout["annotations"] = [
            {
                "text": empty_message,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"color": MUTED, "size": 13},
            }
        ]
        return {"data": [], "layout": layout}
    return {
        "data": top10_traces(classes, probs, class_names, true_class, explained_class),
        "layout": layout,
    }
