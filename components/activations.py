"""Activation grids: channel scores, one tiled PNG for all channels, and the heatmap figures.

A layer with hundreds of channels is drawn as ONE image (every channel's map as a tile with its
index and score underneath) plus one invisible marker per tile for hover and click: hundreds of
separate image components would take seconds to lay out in the browser.

The channel score ranks maps that are both varied and strong: the Shannon entropy (bits) of the
channel's 10-bin value histogram times its mean absolute activation. A constant map scores 0
however large it is; a sparse map with a few strong spots scores above a uniformly weak one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from components.images import encode_png
from components.theme import MUTED, PAPER, TEXT, VIRIDIS_LUT, VIRIDIS_SCALE, base_layout

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
UInt8Image = npt.NDArray[np.uint8]

HISTOGRAM_BINS = 10
SORTS = ("score", "index")
LABEL_HEIGHT = 13  # px strip under each tile for "channel score"
PAD = 4
LABEL_FONT_SIZE = 10
DISPLAY_WIDTH = 1300  # px the grid is expected to be shown at (sets the figure height)


# ---- scores ---------------------------------------------------------------------------------


def channel_scores(acts: FloatArray) -> FloatArray:
    """acts: (C, H, W) float32 -> (C,) float32 score = entropy(10-bin histogram) * mean |a|.

    Each channel's histogram spans its own [min, max]; entropy is in bits (at most log2(10)).
    Vectorised: one ``bincount`` over all channels at once, so a 64 x 224 x 224 map costs tens of
    milliseconds, not a Python loop.
    """
    if acts.ndim != 3:
        raise ValueError(f"channel_scores needs (C, H, W) maps, got shape {acts.shape}")
    channels = acts.shape[0]
    flat = acts.reshape(channels, -1).astype(np.float32, copy=False)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scale = np.where(span > 0, HISTOGRAM_BINS / np.where(span > 0, span, 1), 0).astype(np.float32)
    bins = np.minimum(((flat - low) * scale).astype(np.int64), HISTOGRAM_BINS - 1)
    bins += (np.arange(channels, dtype=np.int64) * HISTOGRAM_BINS)[:, None]
    counts = np.bincount(bins.ravel(), minlength=channels * HISTOGRAM_BINS)
    p = counts.reshape(channels, HISTOGRAM_BINS) / flat.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    magnitude = np.abs(flat).mean(axis=1)
    scores = (entropy * magnitude).astype(np.float32)
    # A constant map's entropy is -(1 * log2 1) = -0.0, which would print as "-0": a score is
    # >= 0 by definition, so anything at or below zero is a plain 0 (NaN stays NaN).
    scores[scores <= 0] = 0.0
    return scores


def channel_order(scores: FloatArray, sort: str) -> IntArray:
    """Channel indices for display: by score (highest first, ties by index) or by index."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
    if sort == "index":
        return np.arange(len(scores), dtype=np.int64)
    return np.lexsort((np.arange(len(scores)), -scores.astype(np.float64))).astype(np.int64)


# ---- the tiled image ------------------------------------------------------------------------


@dataclass(frozen=True)
class GridGeometry:
    """Tiles of ``tile`` px in ``cols`` columns; each cell is tile + label strip + padding."""

    count: int
    cols: int
    rows: int
    tile: int

    @property
    def cell_w(self) -> int:
        return self.tile + PAD

    @property
    def cell_h(self) -> int:
        return self.tile + LABEL_HEIGHT + PAD

    @property
    def width(self) -> int:
        return self.cols * self.cell_w + PAD

    @property
    def height(self) -> int:
        return self.rows * self.cell_h + PAD

    def tile_origin(self, position: int) -> tuple[int, int]:
        """(left, top) px of the tile shown at ``position`` (row-major)."""
        row, col = divmod(position, self.cols)
        return PAD + col * self.cell_w, PAD + row * self.cell_h


def tile_size(channels: int) -> int:
    """Bigger tiles for few channels; never below 44 px, the width of a "511 12.5" label."""
    for limit, size in ((8, 112), (32, 80), (128, 60), (512, 48)):
        if channels <= limit:
            return size
    return 44


def grid_geometry(channels: int, target_width: int = 1500) -> GridGeometry:
    """Layout of ``channels`` tiles in rows at most ``target_width`` px wide (wider for >512
    channels, so a 2048-channel layer stays zoomable rather than a tall strip)."""
    if channels < 1:
        raise ValueError("a grid needs at least one channel")
    tile = tile_size(channels)
    width = target_width if channels <= 512 else int(target_width * 1.6)
    cols = max(1, min(channels, (width - PAD) // (tile + PAD)))
    return GridGeometry(count=channels, cols=cols, rows=math.ceil(channels / cols), tile=tile)


def normalize_maps(maps: FloatArray) -> FloatArray:
    """(C, H, W) -> (C, H, W) float32 in [0, 1], each channel by its own min and max (a
    constant channel becomes all 0): the grid compares patterns, the score compares strength."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(axis=1)[:, None, None]
    span = (flat.max(axis=1) - flat.min(axis=1))[:, None, None]
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def _bin_edges(length: int, size: int) -> npt.NDArray[np.intp]:
    """Start index of each of ``size`` near-equal bins over ``length`` (adaptive pooling's)."""
    return (np.arange(size) * length // size).astype(np.intp)


def resize_maps(maps: FloatArray, size: int) -> FloatArray:
    """(C, H, W) -> (C, size, size) float32: area-averaged when shrinking (no aliasing), nearest
    when enlarging (a 7x7 map keeps its 49 crisp cells).

    Plain numpy on purpose: these arrays are small, and a torch op would go through the OpenMP
    pool, whose fork-join latency on a busy 2-core machine costs more than the work.
    """
    maps = np.asarray(maps, dtype=np.float32)
    out: npt.NDArray[np.floating] = maps
    for axis, length in ((1, maps.shape[1]), (2, maps.shape[2])):
        if length > size:
            edges = _bin_edges(length, size)
            counts = np.diff(np.append(edges, length)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = size
            out = np.add.reduceat(out, edges, axis=axis) / counts.reshape(shape)
        elif length < size:
            out = np.take(out, (np.arange(size) * length // size).astype(np.intp), axis=axis)
    return np.ascontiguousarray(out, dtype=np.float32)


LABEL_CHARS = "0123456789.-+einfa"


@lru_cache(maxsize=4)
def glyph_atlas(size: int) -> dict[str, npt.NDArray[np.bool_]]:
    """1-bit masks of the characters labels use, rendered once per font size.

    Pasting cached masks with numpy is ~20x faster than 500 ``ImageDraw.text`` calls, which was
    most of a 512-channel grid's time.
    """
    font = ImageFont.load_default(size=size)
    height = size + 4
    atlas = {}
    for char in LABEL_CHARS:
        width = max(1, int(round(font.getlength(char))))
        image = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(image)
        draw.fontmode = "1"  # crisp pixels: an anti-aliased index would be a stray viridis level
        draw.text((0, 0), char, fill=255, font=font)
        atlas[char] = np.asarray(image) > 127
    return atlas


def stamp_text(canvas: UInt8Image, text: str, left: int, top: int, value: int, right: int) -> int:
    """Write ``text`` into ``canvas`` (H, W) uint8 at (left, top) as ``value``, clipped at the
    ``right`` pixel column; returns the column after the last glyph."""
    atlas = glyph_atlas(LABEL_FONT_SIZE)
    x = left
    for char in text:
        mask = atlas.get(char)
        if mask is None:
            continue
        height, width = mask.shape
        width = min(width, right - x, canvas.shape[1] - x)
        height = min(height, canvas.shape[0] - top)
        if width <= 0 or height <= 0:
            break
        region = canvas[top : top + height, x : x + width]
        region[mask[:height, :width]] = value
        x += mask.shape[1]
    return x


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def format_score(score: float) -> str:
    """A channel score in three significant digits; zero, -0.0 and the tiny negatives rounding
    can leave (a score is >= 0 by definition) all read "0"."""
    if score <= 0:  # False for NaN, which reads "nan"
        return "0"
    return f"{score:.3g}"


# Palette of the indexed grid image: 250 viridis levels, then the background and the label
# colour. An indexed PNG is a third of the bytes of RGB and encodes ~4x faster, which is most of
# the grid's time budget.
GRID_LEVELS = 250
BACKGROUND_INDEX = 250
TEXT_INDEX = 251  # channel index
MUTED_INDEX = 252  # score, greyer so "36 3.43" reads as two numbers
GRID_PALETTE: UInt8Image = np.zeros((256, 3), dtype=np.uint8)
GRID_PALETTE[:GRID_LEVELS] = VIRIDIS_LUT[np.linspace(0, 255, GRID_LEVELS).round().astype(int)]
GRID_PALETTE[BACKGROUND_INDEX] = _hex_rgb(PAPER)
GRID_PALETTE[TEXT_INDEX] = _hex_rgb(TEXT)
GRID_PALETTE[MUTED_INDEX] = _hex_rgb(MUTED)


def render_grid(
    acts: FloatArray, scores: FloatArray, order: IntArray, geometry: GridGeometry
) -> UInt8Image:
    """The whole grid as one indexed image (colours in ``GRID_PALETTE``).

    acts: (C, H, W) float32 raw maps; scores: (C,) float32; order: (C,) int64 channel shown at
    each position. Returns (geometry.height, geometry.width) uint8 palette indices: viridis
    tiles with the channel index (white) and its score (grey) under each.
    """
    tiles = resize_maps(normalize_maps(acts[order]), geometry.tile)
    levels = (tiles * (GRID_LEVELS - 1) + 0.5).astype(np.uint8)
    canvas = np.full((geometry.height, geometry.width), BACKGROUND_INDEX, dtype=np.uint8)
    for position in range(len(order)):
        left, top = geometry.tile_origin(position)
        canvas[top : top + geometry.tile, left : left + geometry.tile] = levels[position]
    for position, channel in enumerate(order):
        left, top = geometry.tile_origin(position)
        right = left + geometry.cell_w
        after = stamp_text(canvas, str(int(channel)), left, top + geometry.tile, TEXT_INDEX, right)
        score = format_score(float(scores[channel]))
        stamp_text(canvas, score, after + 4, top + geometry.tile, MUTED_INDEX, right)
    return canvas


def grid_png(acts: FloatArray, scores: FloatArray, sort: str) -> bytes:
    """The activation grid of a (C, H, W) float32 layer output as an indexed PNG, channels in
    ``sort`` order (see ``channel_order``); scores: (C,) float32 from ``channel_scores``."""
    order = channel_order(scores, sort)
    return encode_png(render_grid(acts, scores, order, grid_geometry(len(scores))), GRID_PALETTE)


# ---- figures --------------------------------------------------------------------------------


def grid_figure(
    image_url: str, geometry: GridGeometry, order: IntArray, scores: FloatArray
) -> dict[str, Any]:
    """The grid image (by URL) under one invisible marker per tile.

    ``customdata`` per marker is [channel, score] (lists, for the click handler); the axes are in
    image pixels with y pointing down, locked to the image's aspect ratio.
    """
    xs, ys, custom = [], [], []
    half = geometry.tile / 2
    for position, channel in enumerate(order):
        left, top = geometry.tile_origin(position)
        xs.append(left + half)
        ys.append(top + (geometry.tile + LABEL_HEIGHT) / 2)
        custom.append([int(channel), round(float(scores[channel]), 5)])
    scale = min(1.0, DISPLAY_WIDTH / geometry.width)
    height = int(min(1400, max(180, geometry.height * scale + 10)))
    layout = base_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        plot_bgcolor=PAPER,
        xaxis={"visible": False, "range": [0, geometry.width], "constrain": "domain"},
        yaxis={
            "visible": False,
            "range": [geometry.height, 0],
            "scaleanchor": "x",
            "constrain": "domain",
        },
        images=[
            {
                "source": image_url,
                "xref": "x",
                "yref": "y",
                "x": 0,
                "y": 0,
                "sizex": geometry.width,
                "sizey": geometry.height,
                "sizing": "stretch",
                "layer": "below",
            }
        ],
        hovermode="closest",
        hoverdistance=-1,
        dragmode="zoom",
        showlegend=False,
    )
    marker_trace = {
        "type": "scatter",
        "mode": "markers",
        "x": xs,
        "y": ys,
        "customdata": custom,
        "marker": {"size": max(8, geometry.tile * scale), "opacity": 0, "symbol": "square"},
        "hovertemplate": "channel %{customdata[0]}<br>score %{customdata[1]:.4g}"
        "<br><i>click: open the raw map</i><extra></extra>",
        "name": "channels",
    }
    return {"data": [marker_trace], "layout": layout}


def channel_heatmap_figure(values: FloatArray, title: str) -> dict[str, Any]:
    """values: (H, W) float32 raw activations of one channel -> zoomable heatmap, row 0 on top."""
    if values.ndim != 2:
        raise ValueError(f"a channel heatmap needs (H, W) values, got {values.shape}")
    decimals = 5
    layout = base_layout(
        title={"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        height=620,
        margin={"l": 50, "r": 20, "t": 48, "b": 40},
        xaxis={"title": {"text": "x"}, "constrain": "domain", "showgrid": False},
        yaxis={
            "title": {"text": "y"},
            "autorange": "reversed",
            "scaleanchor": "x",
            "constrain": "domain",
            "showgrid": False,
        },
    )
    trace = {
        "type": "heatmap",
        "z": np.round(values.astype(np.float64), decimals).tolist(),
        "colorscale": VIRIDIS_SCALE,
        "colorbar": {"title": {"text": "activation"}, "tickfont": {"color": MUTED}},
        "hovertemplate": "x %{x}, y %{y}<br>value %{z:.5g}<extra></extra>",
    }
    return {"data": [trace], "layout": layout}


def dense_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a roughly 2:1 rectangle holding ``count`` neurons."""
    if count < 1:
        raise ValueError("a dense layer needs at least one neuron")
    cols = max(1, math.ceil(math.sqrt(2 * count)))
    return math.ceil(count / cols), cols


def dense_heatmap_figure(values: FloatArray, title: str) -> dict[str, Any]:
    """values: (F,) float32 neuron activations -> a rows x cols heatmap in neuron order (row
    major); padding cells are empty and hover names each neuron's index."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    rows, cols = dense_shape(len(flat))
    grid = np.full(rows * cols, np.nan)
    grid[: len(flat)] = np.round(flat, 5)
    index = np.arange(rows * cols)
    z = [[None if math.isnan(v) else v for v in row] for row in grid.reshape(rows, cols).tolist()]
    custom = np.where(index < len(flat), index, -1).reshape(rows, cols).tolist()
    layout = base_layout(
        title={"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"},
        height=int(min(620, max(220, 60 + rows * 14))),
        margin={"l": 40, "r": 20, "t": 44, "b": 30},
        xaxis={"showgrid": False, "title": {"text": "neuron (row-major)"}, "constrain": "domain"},
        yaxis={"showgrid": False, "autorange": "reversed", "constrain": "domain"},
    )
    trace = {
        "type": "heatmap",
        "z": z,
        "customdata": custom,
        "colorscale": VIRIDIS_SCALE,
        "hoverongaps": False,
        "colorbar": {"title": {"text": "activation"}, "tickfont": {"color": MUTED}},
        "hovertemplate": "neuron %{customdata}<br>value %{z:.5g}<extra></extra>",
    }
    return {"data": [trace], "layout": layout}
