"""The one dark theme every LayerScope figure is drawn with, and its light twin for print.

Colours match the vendored Bootswatch "darkly" stylesheet (``assets/00-bootstrap-darkly.min.css``)
so plots sit on the cards without a visible seam. ``LIGHT`` is the same palette on white with
dark text, for figures exported into papers (the architecture's SVG/PDF). Figures are plain
plotly dicts: building them without ``go.Figure`` validation keeps a 13k-point embedding update
in the low milliseconds.
"""

from __future__ import annotations

import copy
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

PAPER = "#303030"  # darkly card background
PLOT = "#262626"
TEXT = "#e9ecef"
MUTED = "#9aa0a6"
GRID = "#444444"
ACCENT = "#f5c542"  # selection / highlight, distinct from every class colour
HOVER = "#ffffff"
SUCCESS = "#00bc8c"
DANGER = "#e74c3c"
UNKNOWN = "#8c8c8c"
FONT_FAMILY = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
# Fonts every PDF viewer and journal template has: an exported figure reads the same everywhere.
PRINT_FONT_FAMILY = 'Arial, "Helvetica Neue", Helvetica, "Liberation Sans", sans-serif'


@dataclass(frozen=True)
class Theme:
    """The colours and font a figure is drawn with (``DARK`` on the page, ``LIGHT`` for print)."""

    paper: str
    plot: str
    text: str
    muted: str
    grid: str
    font_family: str
    hover_bg: str
    hover_border: str
    legend_bg: str  # behind a legend drawn over the plot
    edge: str  # architecture: data-flow links
    skip: str  # architecture: skip-connection arcs


DARK = Theme(
    paper=PAPER,
    plot=PLOT,
    text=TEXT,
    muted=MUTED,
    grid=GRID,
    font_family=FONT_FAMILY,
    hover_bg="#1b1b1b",
    hover_border="#666666",
    legend_bg="rgba(38,38,38,0.7)",
    edge="#8a8a8a",
    skip="#d9c36a",
)
LIGHT = Theme(
    paper="#ffffff",
    plot="#ffffff",
    text="#212529",
    muted="#495057",
    grid="#9aa0a6",
    font_family=PRINT_FONT_FAMILY,
    hover_bg="#ffffff",
    hover_border="#9aa0a6",
    legend_bg="rgba(255,255,255,0)",
    edge="#6c757d",
    skip="#b8860b",  # dark goldenrod: the page's skip colour, dark enough on white
)

# Twenty colours legible on a dark background, in the order classes get them (Tableau-derived,
# lightened where the original is too dark on #262626).
CLASS_PALETTE: tuple[str, ...] = (
    "#4e9de6",
    "#f28e2b",
    "#59c26a",
    "#e15759",
    "#b07aa1",
    "#edc948",
    "#76d7ea",
    "#ff9da7",
    "#c49c7c",
    "#d0cac6",
    "#8cd17d",
    "#a0cbe8",
    "#ffbe7d",
    "#d4a6c8",
    "#86bcb6",
    "#d37295",
    "#fabfd2",
    "#c9ad3f",
    "#58b0a8",
    "#9d9df0",
)

# Layer families, each one colour in the architecture diagram (legend order).
FAMILY_COLORS: dict[str, str] = {
    "input": "#d0cac6",
    "conv": "#4e9de6",
    "norm": "#76d7ea",
    "activation": "#f28e2b",
    "pool": "#e15759",
    "linear": "#59c26a",
    "reshape": "#c49c7c",
    "dropout": "#8c8c8c",
    "block": "#b07aa1",
    "other": "#9d9df0",
}

# The families in words, for legends that must stand on their own (an exported figure).
FAMILY_TITLES: dict[str, str] = {
    "input": "input",
    "conv": "convolution",
    "norm": "normalization",
    "activation": "activation",
    "pool": "pooling",
    "linear": "fully connected",
    "reshape": "reshape",
    "dropout": "dropout",
    "block": "block (collapsed)",
    "other": "other",
}

_FAMILY_BY_TYPE: dict[str, str] = {
    "Input": "input",
    "Linear": "linear",
    "LazyLinear": "linear",
    "Bilinear": "linear",
    "Flatten": "reshape",
    "Unflatten": "reshape",
    "Identity": "reshape",
    "Block": "block",
}


def class_color(index: int) -> str:
    """Colour of class ``index``; cycles past twenty classes."""
    return CLASS_PALETTE[index % len(CLASS_PALETTE)]


def layer_family(layer_type: str) -> str:
    """The family ("conv", "norm", ...) of a module type name such as "Conv2d" or "ReLU6"."""
    if layer_type in _FAMILY_BY_TYPE:
        return _FAMILY_BY_TYPE[layer_type]
    lowered = layer_type.lower()
    if "conv" in lowered:
        return "conv"
    if "norm" in lowered:
        return "norm"
    if "pool" in lowered:
        return "pool"
    if "dropout" in lowered:
        return "dropout"
    activations = ("relu", "gelu", "silu", "sigmoid", "tanh", "swish", "elu", "softmax", "mish")
    if any(name in lowered for name in activations):
        return "activation"
    return "other"


def shade(color: str, factor: float) -> str:
    """``color`` (#rrggbb) scaled towards black (factor < 1) or white (factor > 1)."""
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    if factor >= 1:
        rgb = rgb + (255 - rgb) * (factor - 1)
    else:
        rgb = rgb * factor
    r, g, b = np.clip(np.round(rgb), 0, 255).astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def base_layout(theme: Theme = DARK, **overrides: Any) -> dict[str, Any]:
    """The shared layout in ``theme``; ``overrides`` are merged one level deep (axes keep
    theme keys)."""
    axis = {
        "gridcolor": theme.grid,
        "zerolinecolor": theme.grid,
        "linecolor": theme.grid,
        "color": theme.muted,
    }
    layout: dict[str, Any] = {
        "paper_bgcolor": theme.paper,
        "plot_bgcolor": theme.plot,
        "font": {"family": theme.font_family, "color": theme.text, "size": 13},
        "margin": {"l": 40, "r": 16, "t": 40, "b": 36},
        "hoverlabel": {
            "bgcolor": theme.hover_bg,
            "bordercolor": theme.hover_border,
            "font": {"color": theme.text},
        },
        "legend": {"bgcolor": "rgba(0,0,0,0)", "font": {"color": theme.text}},
        "xaxis": dict(axis),
        "yaxis": dict(axis),
        "colorway": list(CLASS_PALETTE),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            merged = copy.deepcopy(layout[key])
            merged.update(value)
            layout[key] = merged
        else:
            layout[key] = value
    return layout


def colorscale_lut(stops: list[str], size: int = 256) -> npt.NDArray[np.uint8]:
    """A (size, 3) uint8 lookup table interpolating the hex colour ``stops`` evenly."""
    rgb = np.array([[int(s[i : i + 2], 16) for i in (1, 3, 5)] for s in stops], dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(stops))
    samples = np.linspace(0.0, 1.0, size)
    table = np.stack([np.interp(samples, positions, rgb[:, c]) for c in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


# Perceptually uniform maps for activations (viridis) and CAM heat (inferno, readable on images).
VIRIDIS_STOPS = [
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
]
INFERNO_STOPS = [
    "#000004",
    "#1b0c41",
    "#4a0c6b",
    "#781c6d",
    "#a52c60",
    "#cf4446",
    "#ed6925",
    "#fb9b06",
    "#f7d13d",
    "#fcffa4",
]
# Signed attributions (LRP, Integrated Gradients, occlusion): ColorBrewer's RdBu reversed, blue
# for evidence against the class, white for none, red for evidence for it.
DIVERGING_STOPS = [
    "#2166ac",
    "#4393c3",
    "#92c5de",
    "#d1e5f0",
    "#f7f7f7",
    "#fddbc7",
    "#f4a582",
    "#d6604d",
    "#b2182b",
]
VIRIDIS_LUT = colorscale_lut(VIRIDIS_STOPS)
INFERNO_LUT = colorscale_lut(INFERNO_STOPS)
DIVERGING_LUT = colorscale_lut(DIVERGING_STOPS)
VIRIDIS_SCALE: list[list[Any]] = [
    [i / (len(VIRIDIS_STOPS) - 1), color] for i, color in enumerate(VIRIDIS_STOPS)
]


# Characters per line of a figure's message: a long one (a run being built, an error) wraps
# inside the embedding card at 1366 px instead of running off both sides.
MESSAGE_LINE_CHARS = 56


def message_lines(message: str) -> str:
    """``message`` wrapped for a Plotly annotation: lines joined by ``<br>``, and ``<`` / ``>``
    escaped so that Plotly's HTML subset shows them instead of taking them for tags."""
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "<br>".join(textwrap.wrap(escaped, MESSAGE_LINE_CHARS, break_on_hyphens=False))


def message_figure(message: str, height: int | None = 300) -> dict[str, Any]:
    """An empty themed figure that says ``message`` in its centre (e.g. "not computed yet"),
    wrapped to fit; with ``height`` None it fills its container."""
    figure: dict[str, Any] = {
        "data": [],
        "layout": base_layout(
            xaxis={"visible": False},
            yaxis={"visible": False},
            margin={"l": 10, "r": 10, "t": 10, "b": 10},
            annotations=[
                {
                    "text": message_lines(message),
                    "showarrow": False,
                    "xref": "paper",
                    "yref": "paper",
                    "x": 0.5,
                    "y": 0.5,
                    "font": {"color": MUTED, "size": 15},
                }
            ],
        ),
    }
    if height is not None:
        figure["layout"]["height"] = height
    return figure
