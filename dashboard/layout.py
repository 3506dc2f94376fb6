"""The page: stores, navbar, and the panels in a grid that fits 1366×768 and fills 2560×1440.

Also the page-wide clientside callbacks: splitting the selection into the small keys the
server callbacks listen to, mirroring the view into the URL (``?run=&layer=...``) so any
view can be shared as a link, and saving any graph's figure from its download buttons
(``components/figure_download.py``).
"""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import MATCH, Input, Output, State, dcc, html

from dashboard import ids
from dashboard.panels import (
    about,
    activations,
    controls,
    embedding,
    gallery,
    inspector,
    model_view,
    new_run,
    tour,
    uploads,
    workbench,
)
from dashboard.registry import clientside_callback
from dashboard.state import EMPTY_SELECTION


def navbar() -> dbc.Navbar:
    return dbc.Navbar(
        dbc.Container(
            [
                html.Span(
                    [
                        html.Span("LayerScope", className="ls-brand"),
                        html.Span("see inside image-classification CNNs", className="ls-tagline"),
                    ],
                    className="d-flex align-items-baseline gap-3",
                ),
                html.Div(
                    [
                        html.Span(id=ids.STATUS, className="me-3"),
                        # A link, not a button: the page switches without a reload (showNewPage).
                        dcc.Link(
                            "New run",
                            id=ids.NEW_LINK,
                            href=new_run.NEW_PATH,
                            className="ls-nav-link me-3",
                        ),
                        dbc.Button(
                            "Guided tour", id=ids.TOUR_START, size="sm", color="info", outline=True
                        ),
                    ],
                    className="d-flex align-items-center",
                ),
            ],
            fluid=True,
        ),
        color="dark",
        dark=True,
        className="ls-navbar mb-2",
    )


def page(token: str) -> html.Div:
    """The whole layout; ``token`` names the app (data dir) for background callbacks."""
    stores = [
        dcc.Location(id=ids.URL, refresh=False),
        dcc.Store(id=ids.SELECTION, data=dict(EMPTY_SELECTION)),
        dcc.Store(id=ids.VIEW_KEY),
        dcc.Store(id=ids.LAYER_KEY),
        dcc.Store(id=ids.SAMPLE_KEY),
        dcc.Store(id=ids.RUN_KEY),
        dcc.Store(id=ids.SEL_KEY),
        dcc.Store(id=ids.RUN_VERSION),
        dcc.Store(id=ids.RUN_LAYERS_VERSION),
        dcc.Store(id=ids.RUN_SAMPLES_VERSION),
        dcc.Store(id=ids.RUN_MAPS_VERSION),
        dcc.Store(id=ids.RUN_PROGRESS),
        dcc.Store(id=ids.APP_TOKEN, data=token),
        dcc.Store(id=ids.URL_SINK),
        dcc.Interval(id=ids.POLL, interval=about.POLL_MS, disabled=True),
    ]
    grid = dbc.Container(
        [
            html.Div(id=ids.ALERTS),
            html.Div(id=ids.RUN_NOTE),
            model_view.layout(),
            dbc.Row(
                [
                    dbc.Col(
                        [controls.layout(), about.layout()],
                        xxl=2,
                        xl=3,
                        lg=3,
                        md=12,
                        className="ls-col",
                    ),
                    dbc.Col(
                        [embedding.layout(), uploads.layout()],
                        xxl=6,
                        xl=5,
                        lg=5,
                        md=12,
                        className="ls-col",
                    ),
                    dbc.Col(inspector.layout(), xxl=4, xl=4, lg=4, md=12, className="ls-col"),
                ],
                className="g-3",
            ),
            activations.layout(),
            dbc.Row(
                [
                    dbc.Col(workbench.layout(), xxl=5, xl=6, lg=6, md=12, className="ls-col"),
                    dbc.Col(gallery.layout(), xxl=7, xl=6, lg=6, md=12, className="ls-col"),
                ],
                className="g-3",
            ),
        ],
        fluid=True,
        className="ls-main",
        id=ids.EXPLORE_PAGE,
    )
    return html.Div([*stores, navbar(), grid, new_run.layout(), tour.layout()], className="ls-page")


clientside_callback(
    "splitSelection",
    Input(ids.SELECTION, "data"),
    State(ids.VIEW_KEY, "data"),
    State(ids.LAYER_KEY, "data"),
    State(ids.SAMPLE_KEY, "data"),
    State(ids.RUN_KEY, "data"),
    State(ids.SEL_KEY, "data"),
    outputs={
        "viewKey": Output(ids.VIEW_KEY, "data"),
        "layerKey": Output(ids.LAYER_KEY, "data"),
        "sampleKey": Output(ids.SAMPLE_KEY, "data"),
        "runKey": Output(ids.RUN_KEY, "data"),
        "selKey": Output(ids.SEL_KEY, "data"),
    },
)

clientside_callback(
    "syncUrl",
    Output(ids.URL_SINK, "data"),
    Input(ids.VIEW_KEY, "data"),
    Input(ids.SAMPLE_KEY, "data"),
    Input(ids.SEL_KEY, "data"),
    prevent_initial_call=True,
)

# One callback for every figure_download control on the page, present or added later: MATCH
# pairs each control's buttons with its target. The output is never changed (a callback needs
# one); the file is saved by plotly.js in the browser.
clientside_callback(
    "downloadFigure",
    Output(ids.figure_download_target(MATCH), "data"),
    Input(ids.figure_download_button(MATCH, "png"), "n_clicks"),
    Input(ids.figure_download_button(MATCH, "svg"), "n_clicks"),
    State(ids.figure_download_target(MATCH), "data"),
    prevent_initial_call=True,
)
