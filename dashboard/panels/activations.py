"""Activations: every channel of the selected layer for the pinned sample, as one tiled image.

The model service runs one forward pass per sample (all layers at once, cached), so stepping
through layers of a pinned sample costs no further passes. Clicking a tile opens the channel's
raw values as a zoomable heatmap; dense layers show all neurons as one heatmap instead.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from components.activations import (
    channel_heatmap_figure,
    channel_order,
    dense_heatmap_figure,
    format_score,
    grid_figure,
    grid_geometry,
)
from components.architecture import format_shape
from components.figure_download import figure_download
from components.theme import message_figure
from dashboard import ids
from dashboard.context import current
from dashboard.data import RunData
from dashboard.model_service import ImageSample, Sample
from dashboard.registry import callback
from dashboard.routes import grid_url, upload_url
from dashboard.uploads import check_session
from pipelines.errors import UserError

SORT_OPTIONS = [{"label": "by score", "value": "score"}, {"label": "by channel", "value": "index"}]
HIDDEN = {"display": "none"}
SHOWN: dict[str, str] = {}


def layout() -> dbc.Card:
    header = html.Div(
        [
            html.Span("Activations", className="ls-card-title me-3"),
            html.Span(id=ids.ACTIVATIONS_HEADER, className="ls-hint me-auto"),
            dbc.RadioItems(
                id=ids.ACTIVATIONS_SORT,
                options=SORT_OPTIONS,
                value="score",
                inline=True,
                className="ls-sort",
            ),
        ],
        className="d-flex align-items-center flex-wrap",
    )
    modal = dbc.Modal(
        [
            dbc.ModalHeader(dbc.ModalTitle(id=ids.ACTIVATIONS_MODAL_TITLE)),
            dbc.ModalBody(
                [
                    html.Div(
                        figure_download(ids.ACTIVATIONS_MODAL_GRAPH, "layerscope-channel"),
                        className="d-flex",
                    ),
                    dcc.Graph(id=ids.ACTIVATIONS_MODAL_GRAPH, config={"displaylogo": False}),
                ]
            ),
        ],
        id=ids.ACTIVATIONS_MODAL,
        size="xl",
        is_open=False,
        className="ls-modal",
    )
    body = dbc.CardBody(
        [
            html.Div(id=ids.ACTIVATIONS_MESSAGE),
            dcc.Loading(
                dcc.Graph(
                    id=ids.ACTIVATIONS_GRAPH,
                    figure=message_figure("", 120),
                    config={"displaylogo": False},
                    style=HIDDEN,
                    className="ls-activations-graph",
                ),
                type="dot",
                delay_show=400,
            ),
            modal,
        ],
        className="p-2",
    )
    return dbc.Card(
        [dbc.CardHeader(header), body], id=ids.ACTIVATIONS_CARD, className="ls-card mb-3"
    )


def _info(text: str, color: str = "secondary") -> dbc.Alert:
    return dbc.Alert(text, color=color, className="ls-alert mb-1")


def shown_sample(key: dict[str, Any], session: str | None) -> tuple[Sample, str] | None:
    """The sample a sample key names (an uploaded image first, else the pinned row) and how
    the page names it; None when neither is set."""
    if key.get("upload"):
        return current().uploads.sample(check_session(session), str(key["upload"])), "your image"
    if key.get("pinned") is not None:
        return int(key["pinned"]), f"sample {int(key['pinned'])}"
    return None


def sample_grid_url(
    run: RunData, key: dict[str, Any], session: str | None, layer_id: str, sort: str
) -> str:
    """The grid image of the sample key's upload (checked by ``shown_sample``) or pinned row."""
    if key.get("upload"):
        rest = f"activations/{quote(layer_id)}.png?sort={sort}"
        return upload_url(run, str(session), str(key["upload"]), rest)
    return grid_url(run, layer_id, int(key["pinned"]), sort)


@callback(
    Output(ids.ACTIVATIONS_GRAPH, "figure"),
    Output(ids.ACTIVATIONS_GRAPH, "style"),
    Output(ids.ACTIVATIONS_HEADER, "children"),
    Output(ids.ACTIVATIONS_MESSAGE, "children"),
    Input(ids.SAMPLE_KEY, "data"),
    Input(ids.ACTIVATIONS_SORT, "value"),
    State(ids.UPLOAD_SESSION, "data"),
)
def render_grid(key: dict[str, Any] | None, sort: str | None, session: str | None) -> tuple:
    """Pinned sample (or the chosen uploaded image) + selected layer -> the channel grid (or
    the dense heatmap)."""
    key = key or {}
    layer_id, sort = str(key.get("layer")), sort or "score"
    start = time.perf_counter()
    try:
        shown = shown_sample(key, session) if key.get("run") else None
        if shown is None:
            layer_name = key.get("layer") or "the selected layer"
            message = f"Click a point in the embedding to pin a sample: every channel of {layer_name} for that sample appears here."
            return no_update, HIDDEN, "", _info(message)
        sample, name = shown
        context = current()
        run = context.catalog.open(key["run"])
        layer = run.layer(layer_id)
        activation = context.service.layer_activation(run, sample, layer_id)
        values = activation.values
        if not isinstance(sample, ImageSample):
            name = f"{name} · {run.samples()['uid'][run.check_row(sample)]}"
        if values.ndim == 3:
            scores = context.service.scores(run, sample, layer_id, values)
            order = channel_order(scores, sort)
            geometry = grid_geometry(len(scores))
            url = sample_grid_url(run, key, session, layer_id, sort)
            figure = grid_figure(url, geometry, order, scores)
            what = f"{values.shape[0]} channels of {values.shape[1]}×{values.shape[2]}, sorted by {'score' if sort == 'score' else 'channel'}"
        else:
            flat = np.asarray(values, dtype=np.float32).ravel()
            title = f"{layer_id} ({layer.type}): {flat.size:,} neurons, {name}"
            figure = dense_heatmap_figure(flat, title)
            what = f"dense layer, {flat.size:,} neurons as a heatmap"
    except UserError as exc:
        return no_update, HIDDEN, "", _info(str(exc), "warning")
    elapsed = 1000 * (time.perf_counter() - start)
    source = {
        "memory": "from memory",
        "disk": "from the disk cache",
        "computed": "one forward pass",
    }[activation.source]
    header = f"{name} · layer {layer_id} ({layer.type}, output {format_shape(layer.output_shape)}) · {what} · {source}, {elapsed:.0f} ms"
    notice = _info(activation.notice, "warning") if activation.notice else None
    return figure, SHOWN, header, notice


@callback(
    Output(ids.ACTIVATIONS_MODAL, "is_open"),
    Output(ids.ACTIVATIONS_MODAL_TITLE, "children"),
    Output(ids.ACTIVATIONS_MODAL_GRAPH, "figure"),
    Input(ids.ACTIVATIONS_GRAPH, "clickData"),
    State(ids.SAMPLE_KEY, "data"),
    State(ids.UPLOAD_SESSION, "data"),
    prevent_initial_call=True,
)
def open_channel(
    click: dict[str, Any] | None, key: dict[str, Any] | None, session: str | None
) -> tuple:
    """A click on a tile -> that channel's raw values, zoomable, in a modal."""
    points = (click or {}).get("points") or []
    custom = points[0].get("customdata") if points else None
    key = key or {}
    if not isinstance(custom, list) or not custom or not key.get("run") or not key.get("layer"):
        # Dense-layer heatmap cells carry a plain neuron index: nothing to open.
        return no_update, no_update, no_update
    channel, layer_id = int(custom[0]), str(key["layer"])
    try:
        shown = shown_sample(key, session)
        if shown is None:
            return no_update, no_update, no_update
        sample, name = shown
        context = current()
        run = context.catalog.open(key["run"])
        values = context.service.layer_activation(run, sample, layer_id).values
        if values.ndim != 3 or not 0 <= channel < values.shape[0]:
            raise UserError(
                f"channel {channel} is not a map of layer {layer_id}; pick a tile again"
            )
        score = context.service.scores(run, sample, layer_id, values)[channel]
    except UserError as exc:
        return True, "Cannot show this channel", message_figure(str(exc), 300)
    channel_values = values[channel]
    title = (
        f"{layer_id} · channel {channel} · {name} · score {format_score(float(score))} · "
        f"min {float(channel_values.min()):.4g}, max {float(channel_values.max()):.4g}"
    )
    return (
        True,
        title,
        channel_heatmap_figure(
            channel_values, "raw activations (drag to zoom, double-click to reset)"
        ),
    )
