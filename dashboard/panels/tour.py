"""The guided tour: a floating card that walks through the panels, highlighting each in turn.

The steps live here; stepping and highlighting are pure UI, so they run clientside (``tourStep``
and ``tourRender`` in assets/tour.js). Escape closes the tour.
"""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import ids
from dashboard.registry import clientside_callback

STEPS: list[dict[str, str]] = [
    {
        "target": ids.MODEL_CARD,
        "title": "1 · The model",
        "text": "Every layer of the network as a box: taller boxes have larger feature maps, wider "
        "ones more channels. Click a box to select its layer (← and → step through layers); click "
        "a dotted block to expand it.",
    },
    {
        "target": ids.CONTROLS_CARD,
        "title": "2 · Controls",
        "text": "Pick the run, how many samples to show, t-SNE or PCA, the t-SNE perplexity, and "
        "whether points are coloured by true label, prediction or correctness.",
    },
    {
        "target": ids.EMBEDDING_CARD,
        "title": "3 · The embedding",
        "text": "Each point is one image, placed by how the selected layer sees it. Switch layers "
        "and watch classes separate as the points move. Hover a point to inspect it; click to pin it.",
    },
    {
        "target": ids.INSPECTOR_CARD,
        "title": "4 · The inspector",
        "text": "The image, its true and predicted label, the top-10 predictions, and where the "
        "model looked (Grad-CAM, guided backprop, guided Grad-CAM). Click a bar to explain another class.",
    },
    {
        "target": ids.ACTIVATIONS_CARD,
        "title": "5 · Activations",
        "text": "For the pinned image, every channel of the selected layer, ranked by score "
        "(entropy × mean magnitude). Click a tile to zoom into its raw values.",
    },
    {
        "target": ids.WORKBENCH_CARD,
        "title": "6 · Where the model fails",
        "text": "The confusion matrix (click a cell to select those images), per-class precision, "
        "recall and F1, and the data's likely label errors, near-duplicates and outliers.",
    },
    {
        "target": ids.GALLERY_CARD,
        "title": "7 · The selection",
        "text": "Whatever you select (a confusion cell, a lasso in the map, the filters) is "
        "highlighted in the map and listed here. Hover a thumbnail to inspect it, click to pin it; "
        "relabel samples and download the table.",
    },
    {
        "target": ids.ABOUT_CARD,
        "title": "8 · About",
        "text": "What this run is: dataset, model, accuracy, when it was computed, and the state "
        "of each precompute stage.",
    },
]


def layout() -> html.Div:
    card = dbc.Card(
        [
            dbc.CardHeader(html.Span(id=ids.TOUR_TITLE, className="ls-card-title")),
            dbc.CardBody(
                [
                    html.P(id=ids.TOUR_TEXT, className="mb-3"),
                    html.Div(
                        [
                            dbc.Button(
                                "Back",
                                id=ids.TOUR_BACK,
                                size="sm",
                                color="secondary",
                                className="me-2",
                            ),
                            dbc.Button(
                                "Next",
                                id=ids.TOUR_NEXT,
                                size="sm",
                                color="primary",
                                className="me-auto",
                            ),
                            dbc.Button("Close", id=ids.TOUR_CLOSE, size="sm", color="link"),
                        ],
                        className="d-flex",
                    ),
                ]
            ),
        ],
        id=ids.TOUR_CARD,
        className="ls-tour-card",
        style={"display": "none"},
    )
    return html.Div(
        [card, dcc.Store(id=ids.TOUR_STEP, data=None), dcc.Store(id=ids.TOUR_STEPS, data=STEPS)]
    )


clientside_callback(
    "tourStep",
    Output(ids.TOUR_STEP, "data"),
    Input(ids.TOUR_START, "n_clicks"),
    Input(ids.TOUR_NEXT, "n_clicks"),
    Input(ids.TOUR_BACK, "n_clicks"),
    Input(ids.TOUR_CLOSE, "n_clicks"),
    State(ids.TOUR_STEP, "data"),
    State(ids.TOUR_STEPS, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "tourRender",
    Input(ids.TOUR_STEP, "data"),
    State(ids.TOUR_STEPS, "data"),
    outputs={
        "card": Output(ids.TOUR_CARD, "style"),
        "title": Output(ids.TOUR_TITLE, "children"),
        "text": Output(ids.TOUR_TEXT, "children"),
        "nextLabel": Output(ids.TOUR_NEXT, "children"),
        "backDisabled": Output(ids.TOUR_BACK, "disabled"),
    },
)
