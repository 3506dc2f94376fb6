"""A download control for any ``dcc.Graph``: "PNG" and "SVG" buttons that save the figure as the
page shows it right now (zoom, hidden legend entries and all). plotly.js draws the file in the
browser (``Plotly.downloadImage``), so there is no server round trip; plotly's own mode bar only
offers PNG.

Use it in a panel's layout, next to the graph (a card header is the usual place; in a flex row it
sits at the right end)::

    from components.figure_download import figure_download

    dbc.CardHeader(html.Div([html.Span("Metrics"), figure_download(ids.METRICS_GRAPH, "metrics")],
                            className="d-flex align-items-center"))

``filename`` has no extension (the browser adds ".png" / ".svg"). One clientside callback
(``downloadFigure`` in ``assets/figure_download.js``, declared in ``dashboard/layout.py``) serves
every control through pattern-matching ids, so a new panel registers nothing; each ``graph_id``
may carry one control.
"""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import dcc

from dashboard import ids

FORMATS = ("png", "svg")
PNG_SCALE = 2  # pixels per CSS pixel: sharp on a slide or a high-density screen


def figure_download(graph_id: str, filename: str) -> dbc.ButtonGroup:
    """ "PNG" and "SVG" buttons saving the figure of ``graph_id`` as ``filename``.png / .svg."""
    buttons = [
        dbc.Button(
            fmt.upper(),
            id=ids.figure_download_button(graph_id, fmt),
            size="sm",
            color="secondary",
            title=f"download this figure as {fmt.upper()}",
            className="ls-figure-download-button",
        )
        for fmt in FORMATS
    ]
    target = dcc.Store(
        id=ids.figure_download_target(graph_id),
        data={"graph": graph_id, "filename": filename, "scale": {"png": PNG_SCALE, "svg": 1}},
    )
    return dbc.ButtonGroup([*buttons, target], size="sm", className="ls-figure-download")
