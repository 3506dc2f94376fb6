"""The architecture diagram: a pure function from a run's layer list to a plotly figure.

Each layer is drawn as a Net2Vis-style isometric box (Bäuerle et al., "Net2Vis", 2021): the front
face's height grows with the feature map's spatial size, its width with the channel count, and
the receding depth with the map's width, all log-scaled so a 224-pixel input and a 7-pixel map
are both visible. Boxes are coloured by layer family and laid out left to right in execution
order; data-flow edges that skip over boxes (ResNet shortcuts) are drawn as arcs above them.

Deep models stay readable by collapsing nested blocks (a ResNet bottleneck ``layer2.1`` becomes
one box) until the user expands them. Hover and click go through one invisible marker trace whose
``customdata`` carries the node id, never through coordinates.

The same builder draws the figure for papers (``style=PUBLICATION``, ``publication_figure``):
light theme, each box labelled with its output shape, a legend of layer families in words, no
interactive traces, and a fixed size in proportion to the diagram so boxes keep their shape.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from components.theme import (
    ACCENT,
    DARK,
    FAMILY_COLORS,
    FAMILY_TITLES,
    HOVER,
    LIGHT,
    Theme,
    base_layout,
    layer_family,
    message_figure,
    shade,
)
from pipelines.records import LayerSpec

Polygon = tuple[list[float], list[float]]

BLOCK_TYPE = "Block"
GAP = 0.55  # horizontal space between boxes, in diagram units
LABEL_LIMIT = 60  # above this many boxes, per-box labels would overlap: hover instead
FIGURE_HEIGHT = 250
LABEL_SIZE = 10  # px, per-box labels
CHAR_WIDTH = 0.62  # average glyph width of a sans-serif digit or "×", in font sizes
MAX_LABEL_ROWS = 3
# A fixed-size diagram's scale, in pixels per diagram unit: at most this big (a small model is
# not blown up), at least this small (boxes of a huge model stay visible; its figure grows).
MAX_PX_PER_UNIT = 48.0
MIN_PX_PER_UNIT = 8.0


@dataclass(frozen=True)
class DiagramStyle:
    """How the diagram is drawn: for the page (``SCREEN``) or for a paper (``PUBLICATION``)."""

    theme: Theme
    # Hover markers, the selection ring and caption, and the boxes' silhouettes in layout.meta
    # (for the clientside hover ring); a static export needs none of them.
    interactive: bool
    # Under each box: its name ("3", "fc", "layer2.1") or its output shape ("64×16×16").
    box_label: Literal["name", "shape"]
    # Legend entries in words ("convolution") rather than family keys ("conv").
    legend_titles: bool
    # None: the figure fills its container. Else a fixed size of about this many pixels wide
    # (the same scale on both axes, so boxes keep their proportions), within the scale limits
    # below: text stays legible when the figure is shrunk to a page's width.
    fit_width: int | None
    # The dotted silhouettes behind a collapsed block: lighter than the block on dark paper,
    # darker on white.
    stack_shade: float


SCREEN = DiagramStyle(
    theme=DARK,
    interactive=True,
    box_label="name",
    legend_titles=False,
    fit_width=None,
    stack_shade=1.3,
)
PUBLICATION = DiagramStyle(
    theme=LIGHT,
    interactive=False,
    box_label="shape",
    legend_titles=True,
    fit_width=1400,
    stack_shade=0.75,
)


@dataclass(frozen=True)
class DiagramNode:
    """One drawn box: a single layer, or a collapsed block standing for its member layers."""

    id: str
    kind: str  # "layer" | "block"
    layer_ids: tuple[str, ...]
    type: str
    output_shape: tuple[int, ...]
    params: int

    @property
    def output_layer(self) -> str:
        """The layer whose output the box shows: the block's last layer in execution order."""
        return self.layer_ids[-1]


@dataclass(frozen=True)
class Box:
    """Placement of a node: front face ``[x, x+w] x [-h/2, h/2]``, back face offset by (dx, dy)."""

    node: DiagramNode
    x: float
    w: float
    h: float
    dx: float
    dy: float

    @property
    def center_x(self) -> float:
        return self.x + self.w / 2

    @property
    def top(self) -> float:
        return self.h / 2 + self.dy

    @property
    def right(self) -> float:
        return self.x + self.w + self.dx


# ---- which boxes to draw --------------------------------------------------------------------


def collapse_group(layer: LayerSpec) -> str | None:
    """The collapsible group of a layer: the first two components of its block path.

    "layer2.1.conv1" and "layer2.1.downsample.0" both fall in "layer2.1" (one bottleneck), while
    VGG's "features.28" (block "features") is in none: a flat Sequential is drawn layer by layer.
    """
    parts = [part for part in layer.block.split(".") if part]
    if len(parts) < 2:
        return None
    return ".".join(parts[:2])


def collapsible_groups(layers: Sequence[LayerSpec]) -> list[str]:
    """Groups with at least two member layers, in execution order."""
    counts: dict[str, int] = {}
    for layer in layers:
        group = collapse_group(layer)
        if group is not None:
            counts[group] = counts.get(group, 0) + 1
    return [group for group, count in counts.items() if count >= 2]


def diagram_nodes(layers: Sequence[LayerSpec], expanded: Collection[str]) -> list[DiagramNode]:
    """The boxes to draw: every layer, except that members of a collapsible group that is not in
    ``expanded`` merge into one block node placed where the group's first layer runs."""
    collapsed = set(collapsible_groups(layers)) - set(expanded)
    members: dict[str, list[LayerSpec]] = {}
    order: list[tuple[str, str]] = []  # (kind, key) in first-appearance order
    for layer in layers:
        group = collapse_group(layer)
        if group in collapsed:
            if group not in members:
                members[group] = []
                order.append(("block", group))
            members[group].append(layer)
        else:
            order.append(("layer", layer.id))
    by_id = {layer.id: layer for layer in layers}
    nodes = []
    for kind, key in order:
        if kind == "layer":
            layer = by_id[key]
            nodes.append(
                DiagramNode(
                    id=key,
                    kind="layer",
                    layer_ids=(key,),
                    type=layer.type,
                    output_shape=layer.output_shape,
                    params=layer.params,
                )
            )
        else:
            group_layers = members[key]
            nodes.append(
                DiagramNode(
                    id=key,
                    kind="block",
                    layer_ids=tuple(layer.id for layer in group_layers),
                    type=BLOCK_TYPE,
                    output_shape=group_layers[-1].output_shape,
                    params=sum(layer.params for layer in group_layers),
                )
            )
    return nodes


def node_of_layer(nodes: Sequence[DiagramNode]) -> dict[str, str]:
    """Layer id -> id of the box that draws it."""
    return {layer_id: node.id for node in nodes for layer_id in node.layer_ids}


def diagram_edges(
    layers: Sequence[LayerSpec], nodes: Sequence[DiagramNode]
) -> list[tuple[str, str]]:
    """Data-flow edges between boxes, from the manifest's ``parents``; edges inside a collapsed
    block vanish with it and duplicates are merged."""
    owner = node_of_layer(nodes)
    edges: dict[tuple[str, str], None] = {}
    for layer in layers:
        child = owner.get(layer.id)
        for parent_id in layer.parents:
            parent = owner.get(parent_id)
            if parent is not None and child is not None and parent != child:
                edges[(parent, child)] = None
    return list(edges)


# ---- geometry -------------------------------------------------------------------------------


def box_size(shape: Sequence[int]) -> tuple[float, float, float, float]:
    """(w, h, dx, dy) for an output of ``shape`` (no batch dim), log-scaled.

    (C, H, W) maps: width from C, height from H, depth from W. Vectors (F,) are thin slabs whose
    height grows with F, so a 4096-unit dense layer reads as big but not as a conv map.
    """
    if len(shape) >= 3:
        channels, height, width = shape[0], shape[-2], shape[-1]
        w = 0.35 + 0.3 * math.log2(channels + 1)
        h = 0.6 + 0.55 * math.log2(height + 1)
        depth = 0.6 + 0.55 * math.log2(width + 1)
        return w, min(h, 6.5), 0.3 * depth, 0.2 * depth
    features = math.prod(shape) if shape else 1
    return 0.35, min(0.6 + 0.45 * math.log2(features + 1), 6.5), 0.15, 0.1


def place_nodes(nodes: Sequence[DiagramNode]) -> list[Box]:
    """Left-to-right placement in the given (execution) order."""
    boxes = []
    cursor = 0.0
    for node in nodes:
        w, h, dx, dy = box_size(node.output_shape)
        boxes.append(Box(node=node, x=cursor, w=w, h=h, dx=dx, dy=dy))
        cursor += w + dx + GAP
    return boxes


def front_face(box: Box) -> Polygon:
    x, w, h = box.x, box.w, box.h
    return [x, x + w, x + w, x, x], [-h / 2, -h / 2, h / 2, h / 2, -h / 2]


def top_face(box: Box) -> Polygon:
    x, w, h, dx, dy = box.x, box.w, box.h, box.dx, box.dy
    return [x, x + w, x + w + dx, x + dx, x], [h / 2, h / 2, h / 2 + dy, h / 2 + dy, h / 2]


def side_face(box: Box) -> Polygon:
    x, w, h, dx, dy = box.x, box.w, box.h, box.dx, box.dy
    return (
        [x + w, x + w + dx, x + w + dx, x + w, x + w],
        [-h / 2, -h / 2 + dy, h / 2 + dy, h / 2, -h / 2],
    )


def outline(box: Box, pad: float = 0.0) -> Polygon:
    """The silhouette of a box (for hover and selection rings), grown by ``pad``."""
    x, w, h, dx, dy = box.x - pad, box.w + 2 * pad, box.h + 2 * pad, box.dx, box.dy
    xs = [x, x + w, x + w + dx, x + w + dx, x + dx, x, x]
    ys = [-h / 2, -h / 2, -h / 2 + dy, h / 2 + dy, h / 2 + dy, h / 2, -h / 2]
    return [round(v, 4) for v in xs], [round(v, 4) for v in ys]


def _join(polygons: Sequence[Polygon]) -> tuple[list[float | None], list[float | None]]:
    """Concatenate polygons into one trace's x/y, separated by None so each fills on its own."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for px, py in polygons:
        xs.extend(round(v, 4) for v in px)
        ys.extend(round(v, 4) for v in py)
        xs.append(None)
        ys.append(None)
    return xs, ys


def arc_points(start: tuple[float, float], end: tuple[float, float], peak: float) -> Polygon:
    """A cubic Bézier from ``start`` to ``end`` bulging up to about ``peak``, as 20 points."""
    (x0, y0), (x1, y1) = start, end
    xs, ys = [], []
    for i in range(21):
        t = i / 20
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
        xs.append(round(a * x0 + b * x0 + c * x1 + d * x1, 4))
        ys.append(round(a * y0 + (b + c) * peak + d * y1, 4))
    return xs, ys


# ---- text -----------------------------------------------------------------------------------


def format_shape(shape: Sequence[int]) -> str:
    return " × ".join(str(int(v)) for v in shape) if shape else "?"


def shape_label(shape: Sequence[int]) -> str:
    """The compact shape a paper prints under a box: "64×16×16", "4096"."""
    return "×".join(str(int(v)) for v in shape) if shape else "?"


def layer_summary(layer: LayerSpec) -> str:
    """ "features.3 · Conv2d · output 32 × 16 × 16 · 4,640 parameters"."""
    params = layer.params
    parts = [
        layer.id,
        layer.type,
        f"output {format_shape(layer.output_shape)}",
        f"{params:,} parameter{'s' if params != 1 else ''}",
    ]
    if layer.same_as:
        parts.append(f"reshape of {layer.same_as}")
    return " · ".join(parts)


def layer_option_label(layer: LayerSpec) -> str:
    """Dropdown label: "features.3 — Conv2d 32×16×16"."""
    shape = "×".join(str(v) for v in layer.output_shape)
    return f"{layer.id} — {layer.type} {shape}".rstrip()


def short_label(node: DiagramNode) -> str:
    """Under-box label: the last path component of a layer ("features.3" -> "3"), the id of a
    top-level layer ("fc"), or the group id of a collapsed block ("layer2.1")."""
    if node.kind == "block":
        return node.id
    head, _, tail = node.id.partition(".")
    return node.id.rsplit(".", 1)[-1] if tail else head


def bracket_key(node: DiagramNode) -> str | None:
    """The top-level module a box belongs to ("features", "layer2"); None for top-level layers."""
    head, dot, _ = node.id.partition(".")
    return head if dot else None


def hover_text(node: DiagramNode) -> str:
    params = f"{node.params:,} parameters"
    if node.kind == "block":
        return (
            f"<b>{node.id}</b> (collapsed block, {len(node.layer_ids)} layers)<br>"
            f"output {format_shape(node.output_shape)}<br>{params}<br><i>click to expand</i>"
        )
    return (
        f"<b>{node.id}</b><br>{node.type}<br>output {format_shape(node.output_shape)}<br>{params}"
    )


# ---- the figure -----------------------------------------------------------------------------


def _family_traces(boxes: Sequence[Box], style: DiagramStyle) -> list[dict[str, Any]]:
    """Three filled traces per family (front, top, side), so 170 boxes cost ~30 traces; the
    front one carries the family's legend entry."""
    by_family: dict[str, list[Box]] = {}
    for box in boxes:
        by_family.setdefault(layer_family(box.node.type), []).append(box)
    traces = []
    for family in [f for f in FAMILY_COLORS if f in by_family] + sorted(
        f for f in by_family if f not in FAMILY_COLORS
    ):
        color = FAMILY_COLORS.get(family, FAMILY_COLORS["other"])
        name = FAMILY_TITLES.get(family, family) if style.legend_titles else family
        members = by_family[family]
        for face, builder, factor in (
            ("front", front_face, 1.0),
            ("top", top_face, 1.35),
            ("side", side_face, 0.62),
        ):
            xs, ys = _join([builder(box) for box in members])
            traces.append(
                {
                    "type": "scatter",
                    "x": xs,
                    "y": ys,
                    "mode": "lines",
                    "fill": "toself",
                    "fillcolor": shade(color, factor),
                    "line": {"color": shade(color, 0.45), "width": 1},
                    "hoverinfo": "skip",
                    "name": name,
                    "legendgroup": family,
                    "showlegend": face == "front",
                }
            )
    return traces


def _stack_trace(boxes: Sequence[Box], style: DiagramStyle) -> dict[str, Any]:
    """Offset silhouettes behind collapsed blocks: they read as a stack of layers."""
    polygons = []
    for box in boxes:
        if box.node.kind == "block":
            xs, ys = outline(box)
            polygons.append(([v + 0.18 for v in xs], [v + 0.18 for v in ys]))
    joined_xs, joined_ys = _join(polygons)
    return {
        "type": "scatter",
        "x": joined_xs,
        "y": joined_ys,
        "mode": "lines",
        "line": {
            "color": shade(FAMILY_COLORS["block"], style.stack_shade),
            "width": 1,
            "dash": "dot",
        },
        "hoverinfo": "skip",
        "showlegend": False,
        "name": "stacked",
    }


def _edge_traces(
    boxes: Sequence[Box], edges: Sequence[tuple[str, str]], theme: Theme
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Straight links between neighbours and arcs for skips; returns both traces and the highest
    arc point (for the y range)."""
    index = {box.node.id: i for i, box in enumerate(boxes)}
    straight: list[Polygon] = []
    arcs: list[Polygon] = []
    highest = max((box.top for box in boxes), default=1.0)
    for parent, child in edges:
        a, b = sorted((index[parent], index[child]))
        first, last = boxes[a], boxes[b]
        if b - a == 1:
            straight.append(([first.right - first.dx / 2, last.x], [first.dy / 2, 0.0]))
            continue
        between = max(box.top for box in boxes[a : b + 1])
        peak = between + 0.6 + 0.25 * math.log2(b - a)
        start = (first.center_x + first.dx / 2, first.top)
        end = (last.center_x + last.dx / 2, last.top)
        arcs.append(arc_points(start, end, peak))
        highest = max(highest, 0.75 * peak + 0.25 * between)
    sx, sy = _join(straight)
    ax, ay = _join(arcs)
    common = {"type": "scatter", "mode": "lines", "hoverinfo": "skip"}
    straight_trace = {
        **common,
        "x": sx,
        "y": sy,
        "line": {"color": theme.edge, "width": 1.5},
        "name": "data flow",
        "showlegend": False,
    }
    arc_trace = {
        **common,
        "x": ax,
        "y": ay,
        "line": {"color": theme.skip, "width": 1.5},
        "name": "skip connection",
        "showlegend": bool(arcs),
        "legendrank": 1001,  # after the layer families (default rank 1000)
    }
    return straight_trace, arc_trace, highest


def _hover_trace(boxes: Sequence[Box]) -> dict[str, Any]:
    """Invisible markers down each box's front face (and on its top face): plotly picks the
    nearest one, so hovering anywhere on a box names it."""
    xs, ys, custom, text = [], [], [], []
    for box in boxes:
        steps = max(2, round(box.h / 0.8))
        points = [(box.center_x, -box.h / 2 + box.h * i / (steps - 1)) for i in range(steps)]
        points.append((box.center_x + box.dx / 2, box.h / 2 + box.dy / 2))
        label = hover_text(box.node)
        for x, y in points:
            xs.append(round(x, 4))
            ys.append(round(y, 4))
            custom.append([box.node.id, box.node.kind, box.node.output_layer])
            text.append(label)
    return {
        "type": "scatter",
        "x": xs,
        "y": ys,
        "mode": "markers",
        "marker": {"size": 16, "opacity": 0, "color": HOVER},
        "customdata": custom,
        "text": text,
        "hovertemplate": "%{text}<extra></extra>",
        "showlegend": False,
        "name": "layers",
    }


def label_rows(boxes: Sequence[Box], texts: Sequence[str], px_per_unit: float) -> list[int]:
    """The row of each box's label (0: right under the boxes). A label that would overlap the
    previous label of its row moves down a row; past ``MAX_LABEL_ROWS`` it takes the row that
    frees up first."""
    ends = [-math.inf] * MAX_LABEL_ROWS
    rows = []
    pad = 0.1
    for box, text in zip(boxes, texts, strict=True):
        half = len(text) * CHAR_WIDTH * LABEL_SIZE / px_per_unit / 2 + pad
        left = box.center_x - half
        free = [row for row, end in enumerate(ends) if end <= left]
        row = free[0] if free else min(range(MAX_LABEL_ROWS), key=ends.__getitem__)
        ends[row] = box.center_x + half
        rows.append(row)
    return rows


def diagram_scale(style: DiagramStyle, x_extent: float) -> float | None:
    """Pixels per diagram unit of a fixed-size figure ``x_extent`` units wide (None: the
    figure fills its container)."""
    if style.fit_width is None:
        return None
    return min(MAX_PX_PER_UNIT, max(MIN_PX_PER_UNIT, style.fit_width / max(x_extent, 1e-6)))


def gap(units: float, px: float, px_per_unit: float | None) -> float:
    """A distance between text and boxes, in diagram units: ``units`` in a figure that fills
    its container (about 25 px per unit on a page), ``px`` pixels at a fixed scale (text keeps
    its pixel size there however small the boxes get)."""
    return units if px_per_unit is None else px / px_per_unit


def _label_traces(
    boxes: Sequence[Box], baseline: float, style: DiagramStyle, px_per_unit: float | None
) -> tuple[list[dict[str, Any]], float]:
    """Per-box labels (when they fit, or always at a fixed scale: staggered into rows where
    neighbours would overlap) and one bracket per top-level module; also returns the lowest y
    they use."""
    theme = style.theme
    traces: list[dict[str, Any]] = []
    label_bottom = baseline
    if px_per_unit is not None or len(boxes) <= LABEL_LIMIT:
        if style.box_label == "shape":
            texts = [shape_label(box.node.output_shape) for box in boxes]
        else:
            texts = [short_label(box.node) for box in boxes]
        if px_per_unit is None:
            ys = [baseline] * len(boxes)
        else:
            step = 1.3 * LABEL_SIZE / px_per_unit
            ys = [baseline - row * step for row in label_rows(boxes, texts, px_per_unit)]
        label_bottom = min(ys, default=baseline)
        traces.append(
            {
                "type": "scatter",
                "x": [round(box.center_x, 4) for box in boxes],
                "y": [round(y, 4) for y in ys],
                "mode": "text",
                "text": texts,
                "textfont": {"color": theme.muted, "size": LABEL_SIZE},
                "hoverinfo": "skip",
                "showlegend": False,
                "name": "labels",
            }
        )
    runs: list[tuple[str, int, int]] = []
    for i, box in enumerate(boxes):
        key = bracket_key(box.node)
        if key is None:
            continue
        if runs and runs[-1][0] == key and runs[-1][2] == i - 1:
            runs[-1] = (key, runs[-1][1], i)
        else:
            runs.append((key, i, i))
    bracket_y = label_bottom - gap(0.55, 12, px_per_unit)
    tick = gap(0.2, 5, px_per_unit)
    lines: list[Polygon] = []
    names_x, names = [], []
    for key, first, last in runs:
        x0, x1 = boxes[first].x, boxes[last].right
        lines.append(([x0, x0, x1, x1], [bracket_y + tick, bracket_y, bracket_y, bracket_y + tick]))
        names_x.append(round((x0 + x1) / 2, 4))
        names.append(key)
    lx, ly = _join(lines)
    traces.append(
        {
            "type": "scatter",
            "x": lx,
            "y": ly,
            "mode": "lines",
            "line": {"color": theme.grid, "width": 1},
            "hoverinfo": "skip",
            "showlegend": False,
            "name": "blocks",
        }
    )
    names_y = bracket_y - gap(0.45, 10, px_per_unit)
    traces.append(
        {
            "type": "scatter",
            "x": names_x,
            "y": [round(names_y, 4)] * len(names),
            "mode": "text",
            "text": names,
            "textfont": {"color": theme.text, "size": 11},
            "hoverinfo": "skip",
            "showlegend": False,
            "name": "block names",
        }
    )
    return traces, names_y


def text_extent(trace: dict[str, Any], font_size: float, px_per_unit: float) -> tuple[float, float]:
    """Leftmost and rightmost x a centred text trace's labels reach (estimated widths)."""
    lefts, rights = [], []
    for x, text in zip(trace["x"], trace["text"], strict=True):
        half = len(text) * CHAR_WIDTH * font_size / px_per_unit / 2
        lefts.append(x - half)
        rights.append(x + half)
    return min(lefts, default=0.0), max(rights, default=0.0)


def _selection_geometry(boxes: Sequence[Box], nodes: Sequence[DiagramNode]) -> dict[str, Any]:
    """What the browser needs to ring the selected layer itself (assets/model_view.js): each
    box's selection ring and caption anchor, and which box draws each layer. The figure then
    does not change with the selection, so a layer click never redraws the diagram (70 ms of
    a 60,000-point layer switch on 2 cores)."""
    return {
        "rings": {box.node.id: outline(box, 0.12) for box in boxes},
        "captions": {box.node.id: [box.center_x, round(box.top + 0.15, 4)] for box in boxes},
        "nodeOfLayer": node_of_layer(nodes),
        "accent": ACCENT,
    }


def _legend_rows(names: Sequence[str], width_px: float) -> int:
    """How many lines a horizontal legend of ``names`` takes in ``width_px`` (an estimate: a
    symbol and gap of 46 px plus the text at 11 px)."""
    rows, used = 1, 0.0
    for name in names:
        entry = 46 + len(name) * CHAR_WIDTH * 11
        if used and used + entry > width_px:
            rows, used = rows + 1, 0.0
        used += entry
    return rows


def _fixed_size(
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    px_per_unit: float,
    legend_names: Sequence[str],
) -> dict[str, Any]:
    """Width, height and margins that give both axes ``px_per_unit`` and leave the legend a
    strip of its own above the diagram."""
    side = 12
    plot_w = (x_range[1] - x_range[0]) * px_per_unit
    width = max(plot_w + 2 * side, 480.0)
    legend_h = 24 * _legend_rows(legend_names, width - 2 * side) if legend_names else 0
    top = 10 + legend_h
    height = (y_range[1] - y_range[0]) * px_per_unit + top + side
    return {
        "width": round(width),
        "height": round(height),
        "margin": {"l": side, "r": round(width - plot_w - side), "t": top, "b": side},
    }


def architecture_figure(
    layers: Sequence[LayerSpec],
    expanded: Collection[str] = (),
    height: int | None = None,
    style: DiagramStyle = SCREEN,
) -> dict[str, Any]:
    """The diagram of ``layers`` (the manifest's list, execution order, "input" first).

    ``expanded`` lists collapse groups drawn layer by layer. With the interactive ``SCREEN``
    style, ``layout.meta`` carries the silhouette of every box (for the clientside hover ring)
    and what the browser needs to ring the selected layer (``_selection_geometry``: its box, or
    the collapsed block holding it), and without a ``height`` the figure fills its container
    (the page sizes it to the screen). A style with a ``fit_width`` sizes the figure
    to the diagram instead (``PUBLICATION``: see ``publication_figure``).
    """
    if not layers:
        return message_figure("The model's layers are not described yet.", height or FIGURE_HEIGHT)
    nodes = diagram_nodes(layers, expanded)
    boxes = place_nodes(nodes)
    edges = diagram_edges(layers, nodes)

    right = boxes[-1].right
    x_range = (-0.6, right + 0.6)
    scale = diagram_scale(style, x_range[1] - x_range[0])
    straight, arcs, highest = _edge_traces(boxes, edges, style.theme)
    lowest = -max(box.h for box in boxes) / 2
    baseline = lowest - gap(0.45, 10, scale)
    data: list[dict[str, Any]] = [_stack_trace(boxes, style), straight, arcs]
    families = _family_traces(boxes, style)
    data.extend(families)
    labels, label_bottom = _label_traces(boxes, baseline, style, scale)
    data.extend(labels)
    if scale is not None:
        # Nothing may be cut at the edges of a fixed-size figure: the first and last labels
        # can be wider than their boxes.
        for trace in labels:
            if trace["mode"] == "text" and trace["x"]:
                left, right_text = text_extent(trace, trace["textfont"]["size"], scale)
                x_range = (min(x_range[0], left - 0.2), max(x_range[1], right_text + 0.2))
    if style.interactive:
        data.append(_hover_trace(boxes))
    y_range = (label_bottom - gap(0.3, 10, scale), highest + gap(0.9, 8, scale))
    legend = {
        "orientation": "h",
        "x": 1,
        "xanchor": "right",
        "y": 1,
        "yanchor": "top",
        "bgcolor": style.theme.legend_bg,
        "font": {"size": 11, "color": style.theme.text},
    }
    extra: dict[str, Any] = {}
    if style.interactive:
        extra = {
            "hovermode": "closest",
            "hoverdistance": 40,
            "dragmode": "zoom",
            "meta": {
                "outlines": {box.node.id: outline(box, 0.08) for box in boxes},
                **_selection_geometry(boxes, nodes),
            },
            # Keeps a user's zoom while the selection moves, resets it when boxes are re-laid
            # out.
            "uirevision": "expanded:" + ",".join(sorted(expanded)),
        }
    else:
        extra = {"hovermode": False, "dragmode": False}
    if scale is not None:
        # The legend gets a strip of its own above the diagram, left-aligned like a caption.
        legend.update({"x": 0, "xanchor": "left", "y": 1, "yanchor": "bottom"})
        names = [t["name"] for t in families if t["showlegend"]]
        if arcs["showlegend"]:
            names.append(arcs["name"])
        extra.update(_fixed_size(x_range, y_range, scale, names))
    else:
        extra["margin"] = {"l": 8, "r": 8, "t": 8, "b": 4}
    layout = base_layout(
        style.theme,
        plot_bgcolor=style.theme.plot if scale is not None else "rgba(0,0,0,0)",
        xaxis={"visible": False, "range": list(x_range), "fixedrange": not style.interactive},
        yaxis={"visible": False, "range": list(y_range), "fixedrange": True},
        showlegend=True,
        legend=legend,
        **extra,
    )
    if height is not None:
        layout["height"] = height
    return {"data": data, "layout": layout}


def publication_figure(layers: Sequence[LayerSpec], collapsed: bool) -> dict[str, Any]:
    """The diagram for a paper: white, each box labelled with its output shape, a legend of
    layer families; ``collapsed`` draws each nested block (a ResNet bottleneck) as one box,
    else every layer is a box of its own. About ``PUBLICATION.fit_width`` pixels wide."""
    expanded = () if collapsed else collapsible_groups(layers)
    return architecture_figure(layers, expanded, style=PUBLICATION)
