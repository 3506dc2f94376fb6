"""The embedding scatter: one Scattergl trace per colour group, rows in ``customdata``.

Figures are plain dicts that never need ``go.Figure`` validation. Coordinates travel packed
(``components.packing``): 16-bit levels over the map's range per axis, shared by every trace of
the map, which the browser turns back into floats (``ls.unpack``) within 1/131,070 of the
range: finer than the four significant digits they were rounded to as JSON, at 4 bytes a point
instead of ~12. The sample rows in ``customdata`` travel packed as integers too, and the
browser turns them into a plain list, because Scattergl hover events in plotly.js 3 drop
``customdata`` given as a typed array. A 60,000-point layer switch is then ~0.6 MB and a few
milliseconds of the server's time instead of 1 MB and 57 ms. Every point is drawn; there is no
cap on the number of points.

The trace structure (which rows go in which trace, in which order) depends only on the run, the
subset and the colouring, never on the layer: the clientside animation interpolates trace by
trace, index by index, which therefore matches points by sample, not by position.

The optional 3-D view (``embedding_figure_3d``) draws the same groups as Scatter3d traces through
the same ``group_traces``, so its colours, legend, hover and ``customdata`` rows are the 2-D map's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from components.packing import pack_ints, pack_quantized, value_range
from components.theme import (
    ACCENT,
    DANGER,
    GRID,
    HOVER,
    MUTED,
    PLOT,
    SUCCESS,
    UNKNOWN,
    base_layout,
    class_color,
)

IntArray = npt.NDArray[np.int64]
COLOR_BY = ("label", "prediction", "correct", "split", "loss", "label_issue")
# The continuous colourings: one trace coloured by value (a colour bar instead of a legend).
CONTINUOUS = {"loss": "loss", "label_issue": "label-issue score"}
CONTINUOUS_SCALE = "Viridis"
# Loss has a long tail: the scale ends at this quantile so most points are not one colour.
LOSS_SCALE_QUANTILE = 0.98
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
# Legend entries for "colour by prediction": ImageNet models can predict hundreds of classes; past
# this many the rarest share one grey group (their points are all still drawn).
MAX_PREDICTION_GROUPS = 20
PINNED_TRACE_NAME = "pinned sample"
UPLOADS_TRACE_NAME = "your images"


@dataclass(frozen=True)
class PointGroup:
    """One legend entry: its name, colour and the sample rows (ascending) it draws."""

    name: str
    color: str
    rows: IntArray
    # Continuous colourings: each row's value (the group's ``color`` is then unused).
    values: npt.NDArray[np.float32] | None = None
    scale_max: float | None = None


def label_groups(labels: IntArray, class_names: Sequence[str]) -> list[PointGroup]:
    """labels: (n,) int64 dataset class per row -> one group per class present, class order."""
    groups = []
    for index in np.unique(labels):
        name = class_names[index] if 0 <= index < len(class_names) else f"class {index}"
        rows = np.flatnonzero(labels == index).astype(np.int64)
        groups.append(PointGroup(str(name), class_color(int(index)), rows))
    return groups


def prediction_groups(
    predicted: IntArray, model_class_names: Sequence[str], dataset_to_model: Sequence[int]
) -> list[PointGroup]:
    """predicted: (n,) int64 model class per row.

    A model class that is some dataset class keeps that class's colour, so "label" and
    "prediction" views read alike; others follow by frequency, and beyond
    ``MAX_PREDICTION_GROUPS`` the rarest merge into one "other" group.
    """
    model_to_dataset = {int(m): d for d, m in enumerate(dataset_to_model) if int(m) >= 0}
    classes, counts = np.unique(predicted, return_counts=True)
    mapped = sorted(
        (c for c in classes if int(c) in model_to_dataset), key=lambda c: model_to_dataset[int(c)]
    )
    unmapped = [
        c for _, c in sorted(zip(-counts, classes, strict=True)) if int(c) not in model_to_dataset
    ]
    ordered = [*mapped, *unmapped]
    keep, rest = ordered[:MAX_PREDICTION_GROUPS], ordered[MAX_PREDICTION_GROUPS:]
    groups = []
    next_color = len(dataset_to_model)
    for model_class in keep:
        if int(model_class) in model_to_dataset:
            color = class_color(model_to_dataset[int(model_class)])
        else:
            color = class_color(next_color)
            next_color += 1
        name = (
            model_class_names[model_class]
            if model_class < len(model_class_names)
            else f"class {model_class}"
        )
        rows = np.flatnonzero(predicted == model_class).astype(np.int64)
        groups.append(PointGroup(f"pred: {name}", color, rows))
    if rest:
        rows = np.flatnonzero(np.isin(predicted, rest)).astype(np.int64)
        groups.append(PointGroup(f"pred: {len(rest)} other classes", UNKNOWN, rows))
    return groups


def correct_groups(correct: npt.NDArray[np.int8]) -> list[PointGroup]:
    """correct: (n,) int8 with 1 correct, 0 wrong, -1 unknown (label not among the model's)."""
    groups = []
    for value, name, color in (
        (1, "correct", SUCCESS),
        (0, "wrong", DANGER),
        (-1, "unknown label", UNKNOWN),
    ):
        rows = np.flatnonzero(correct == value).astype(np.int64)
        if len(rows):
            groups.append(PointGroup(name, color, rows))
    return groups


def split_groups(split: Sequence[str]) -> list[PointGroup]:
    """split: (n,) "train" / "held-out" per row (the sample table's ``model_split``)."""
    values = np.asarray(split)
    groups = []
    for name, color in (("held-out", SUCCESS), ("train", ACCENT)):
        rows = np.flatnonzero(values == name).astype(np.int64)
        if len(rows):
            groups.append(PointGroup(name, color, rows))
    return groups


def value_groups(
    values: npt.NDArray[np.floating], name: str, quantile: float = 1.0
) -> list[PointGroup]:
    """A continuous colouring: one group of the rows with a value, coloured along the scale
    (which ends at ``quantile`` of the values), and a grey group of those without one (NaN)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    groups = []
    rows = np.flatnonzero(finite).astype(np.int64)
    if len(rows):
        top = (
            float(np.quantile(values[rows], quantile))
            if quantile < 1
            else float(values[rows].max())
        )
        groups.append(PointGroup(name, UNKNOWN, rows, values=values[rows], scale_max=top or 1.0))
    missing = np.flatnonzero(~finite).astype(np.int64)
    if len(missing):
        groups.append(PointGroup(f"no {name}", UNKNOWN, missing))
    return groups


@dataclass(frozen=True)
class RowValues:
    """The per-row arrays a colouring may need, over the subset rows; None where the run does
    not have them (yet)."""

    labels: IntArray
    predicted: IntArray | None = None
    correct: npt.NDArray[np.int8] | None = None
    split: Sequence[str] | None = None
    loss: npt.NDArray[np.float32] | None = None
    label_issue: npt.NDArray[np.float32] | None = None


def color_groups(
    color_by: str,
    values: RowValues,
    class_names: Sequence[str],
    model_class_names: Sequence[str],
    dataset_to_model: Sequence[int],
) -> list[PointGroup]:
    """The legend groups for ``color_by`` in ``COLOR_BY``. A colouring whose values the run
    does not have (predictions still running, no quality stage) falls back to true labels;
    ``has_values`` says whether it will."""
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {COLOR_BY}, got {color_by!r}")
    if color_by == "prediction" and values.predicted is not None:
        return prediction_groups(values.predicted, model_class_names, dataset_to_model)
    if color_by == "correct" and values.correct is not None:
        return correct_groups(values.correct)
    if color_by == "split" and values.split is not None:
        return split_groups(values.split)
    if color_by == "loss" and values.loss is not None:
        return value_groups(values.loss, CONTINUOUS["loss"], LOSS_SCALE_QUANTILE)
    if color_by == "label_issue" and values.label_issue is not None:
        return value_groups(values.label_issue, CONTINUOUS["label_issue"])
    return label_groups(values.labels, class_names)


def has_values(color_by: str, values: RowValues) -> bool:
    """Whether ``color_groups`` can colour by ``color_by`` (rather than fall back to labels)."""
    needed = {
        "prediction": values.predicted,
        "correct": values.correct,
        "split": values.split,
        "loss": values.loss,
        "label_issue": values.label_issue,
    }
    return color_by == "label" or needed.get(color_by) is not None


def marker_size(n: int) -> float:
    """Smaller markers for more points, so 13k points do not become one blob."""
    if n <= 300:
        return 8.0
    if n <= 2000:
        return 6.0
    if n <= 6000:
        return 4.5
    return 3.5


def method_label(method: str, perplexity: float | str | None) -> str:
    """ "t-SNE, perplexity 30" or "PCA"."""
    name = METHOD_NAMES.get(method, method)
    if method == "tsne" and perplexity not in (None, "none"):
        return f"{name}, perplexity {float(perplexity):g}"
    return name


def embedding_title(
    method: str,
    perplexity: float | str | None,
    layer_id: str,
    layer_type: str,
    n: int,
    same_as: str | None = None,
) -> str:
    """ "t-SNE, perplexity 30 — layer features.3 (Conv2d), 1,797 samples"."""
    kind = f"{layer_type}, same values as {same_as}" if same_as else layer_type
    return f"{method_label(method, perplexity)} — layer {layer_id} ({kind}), {n:,} samples"


def marker_of(group: PointGroup, size: float) -> dict[str, Any]:
    if group.values is None:
        return {"color": group.color, "size": size, "opacity": 0.85}
    return {
        "color": pack_quantized(group.values, *value_range(group.values)),
        "colorscale": CONTINUOUS_SCALE,
        "cmin": 0.0,
        "cmax": group.scale_max,
        "showscale": True,
        "colorbar": {"title": {"text": group.name}, "thickness": 12, "len": 0.6},
        "size": size,
        "opacity": 0.9,
    }


HOVER_TEMPLATE = "%{fullData.name} · row %{customdata}<extra></extra>"
AXES = "xyz"


def group_traces(
    coords: npt.NDArray[np.float32], groups: Sequence[PointGroup], trace_type: str
) -> list[dict[str, Any]]:
    """coords: (n, 2) or (n, 3) float32, row i = sample row i; ``groups`` partition rows 0..n-1.

    One ``trace_type`` trace ("scattergl" or "scatter3d") per group, in group order: its name,
    colour, marker size, hover and ``customdata`` rows are the same in 2-D and 3-D.
    """
    scales = [value_range(coords[:, axis]) for axis in range(coords.shape[1])]
    size = marker_size(len(coords))
    traces = []
    for group in groups:
        rows = group.rows
        trace: dict[str, Any] = {"type": trace_type, "mode": "markers", "name": group.name}
        for axis, (lo, step) in enumerate(scales):
            trace[AXES[axis]] = pack_quantized(coords[rows, axis], lo, step)
        trace["customdata"] = pack_ints(rows)
        trace["marker"] = marker_of(group, size)
        trace["hovertemplate"] = HOVER_TEMPLATE
        traces.append(trace)
    return traces


def pinned_trace(trace_type: str, dims: int) -> dict[str, Any]:
    """The ring on the pinned sample, empty: the browser puts it on the pinned row's point."""
    trace: dict[str, Any] = {
        "type": trace_type,
        "mode": "markers",
        "name": PINNED_TRACE_NAME,
        **{AXES[axis]: [] for axis in range(dims)},
        "marker": {
            "symbol": "circle-open",
            "size": 20,
            "color": ACCENT,
            "line": {"width": 3, "color": ACCENT},
        },
        "hoverinfo": "skip",
        "showlegend": False,
    }
    return trace


def embedding_figure(
    coords: npt.NDArray[np.float32],
    groups: Sequence[PointGroup],
    title: str,
    structure: str,
    uirevision: str,
) -> dict[str, Any]:
    """coords: (n, 2) float32, row i = sample row i; ``groups`` partition rows 0..n-1.

    ``structure`` names the trace layout (run, subset, colouring): the browser animates between
    two figures only when it is equal. The last two traces are empty, filled in the browser:
    stars for the user's uploaded images, then a ring for the pinned sample.
    """
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got {coords.shape}")
    data = group_traces(coords, groups, "scattergl")
    # The user's own images, filled in the browser from their placements (assets/uploads.js).
    # SVG, not WebGL, so their names can be drawn beside them.
    data.append(
        {
            "type": "scatter",
            "mode": "markers+text",
            "name": UPLOADS_TRACE_NAME,
            "x": [],
            "y": [],
            "text": [],
            "customdata": [],
            "textposition": "top center",
            "textfont": {"color": HOVER, "size": 11},
            "marker": {
                "symbol": "star",
                "size": 16,
                "color": HOVER,
                "line": {"width": 2, "color": ACCENT},
            },
            "hovertemplate": "your image: %{text}<extra></extra>",
            "showlegend": False,
        }
    )
    data.append(pinned_trace("scattergl", 2))
    layout = base_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        margin={"l": 20, "r": 10, "t": 44, "b": 20},
        xaxis={"showticklabels": False, "showgrid": False, "zeroline": False},
        yaxis={"showticklabels": False, "showgrid": False, "zeroline": False},
        legend={"itemsizing": "constant", "font": {"size": 12}, "title": {"text": ""}},
        hovermode="closest",
        uirevision=uirevision,
        meta={
            "structure": structure,
            "n": int(len(coords)),
            "uploadsTrace": len(data) - 2,
            "pinnedTrace": len(data) - 1,
        },
        annotations=[],
    )
    return {"data": data, "layout": layout}


def scene_axis(title: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"color": MUTED, "size": 11}},
        "showticklabels": False,
        "backgroundcolor": PLOT,
        "showbackground": True,
        "gridcolor": GRID,
        "zerolinecolor": GRID,
        "color": MUTED,
    }


def embedding_figure_3d(
    coords: npt.NDArray[np.float32],
    groups: Sequence[PointGroup],
    title: str,
    structure: str,
    uirevision: str,
) -> dict[str, Any]:
    """coords: (n, 3) float32, row i = sample row i; ``groups`` partition rows 0..n-1.

    The 2-D map's traces as rotatable Scatter3d (WebGL), then the pinned ring. ``uirevision``
    keeps the camera while it is unchanged: pass one that colourings do not change, so
    recolouring does not reset the rotation. No uploads trace: uploaded images are placed in
    the 2-D maps only. ``meta.dims`` = 3 tells the browser not to animate or dim a selection
    (Scatter3d has no ``selectedpoints``).
    """
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (n, 3), got {coords.shape}")
    data = group_traces(coords, groups, "scatter3d")
    data.append(pinned_trace("scatter3d", 3))
    layout = base_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        margin={"l": 0, "r": 0, "t": 44, "b": 0},
        scene={
            "xaxis": scene_axis("1"),
            "yaxis": scene_axis("2"),
            "zaxis": scene_axis("3"),
            "bgcolor": PLOT,
            "aspectmode": "cube",
            "uirevision": uirevision,
        },
        legend={"itemsizing": "constant", "font": {"size": 12}, "title": {"text": ""}},
        hovermode="closest",
        uirevision=uirevision,
        meta={
            "structure": structure,
            "n": int(len(coords)),
            "dims": 3,
            "pinnedTrace": len(data) - 1,
        },
        annotations=[],
    )
    return {"data": data, "layout": layout}
