"""The inspector's data: a per-run table the browser keeps, and the top-10 bar chart.

Hovering must update the inspector within 100 ms, so the browser gets every row's uid, labels and
top-10 predictions once per run (``inspector_table``) and draws the bar chart itself. The chart's
layout comes from ``top10_figure`` here; ``assets/layerscope.js`` fills in the bars exactly as
``top10_trace`` does (a browser test checks the two agree).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from components.theme import ACCENT, SUCCESS, base_layout

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
# The bar trace's fixed attributes; the browser copies them (``top10_style``) and adds the data.
STATIC_TRACE: dict[str, Any] = {
    "type": "bar",
    "orientation": "h",
    "textposition": "auto",
    "hovertemplate": "%{customdata[1]}<br>p = %{x:.4f}<br><i>click: explain this class</i>"
    "<extra></extra>",
}


def top10_style() -> dict[str, Any]:
    """What ``assets/layerscope.js`` needs to draw exactly the bars ``top10_trace`` draws."""
    return {
        "trace": dict(STATIC_TRACE),
        "barColor": BAR_COLOR,
        "trueColor": SUCCESS,
        "explainedColor": ACCENT,
        "lineWidth": LINE_WIDTH,
    }


def top10_trace(
    classes: Sequence[int],
    probs: Sequence[float],
    class_names: Sequence[str],
    true_class: int | None,
    explained_class: int | None,
) -> dict[str, Any]:
    """One horizontal bar per predicted class, best first; ``customdata`` is [class index,
    full name] per bar (lists: the click handler reads the class index from it).

    The true class is green, the class whose explanations are shown has an accent outline.
    """
    names = [str(class_names[c]) if c < len(class_names) else str(c) for c in classes]
    return {
        **STATIC_TRACE,
        "x": [round(float(p), PROB_DECIMALS) for p in probs],
        "y": [f"{short_name(name)} " for name in names],
        "customdata": [[int(c), name] for c, name in zip(classes, names, strict=True)],
        "text": [f"{100 * float(p):.1f}%" for p in probs],
        "marker": {
            "color": [SUCCESS if c == true_class else BAR_COLOR for c in classes],
            "line": {
                "color": [ACCENT if c == explained_class else "rgba(0,0,0,0)" for c in classes],
                "width": LINE_WIDTH,
            },
        },
    }


def top10_figure(
    classes: Sequence[int],
    probs: Sequence[float],
    class_names: Sequence[str],
    true_class: int | None = None,
    explained_class: int | None = None,
) -> dict[str, Any]:
    """The top-10 chart; with no classes it is the empty template the browser fills."""
    data = (
        [top10_trace(classes, probs, class_names, true_class, explained_class)] if classes else []
    )
    layout = base_layout(
        height=TOP10_HEIGHT,
        margin={"l": 8, "r": 12, "t": 8, "b": 28},
        xaxis={"range": [0, 1], "tickformat": ".0%", "fixedrange": True},
        yaxis={"autorange": "reversed", "automargin": True, "fixedrange": True},
        bargap=0.25,
        showlegend=False,
        hovermode="closest",
        uniformtext={"minsize": 9, "mode": "hide"},
    )
    return {"data": data, "layout": layout}
