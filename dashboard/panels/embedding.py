"""Embedding: the selected layer's 2-D reduction as a Scattergl, one trace per colour group.

The server builds the figure (``load``) into a store; the browser draws it (``renderEmbedding``),
animating points from the previous layer's positions when only the layer changed. A click writes
the pinned row into the selection clientside, so it never waits on the server; hover reaches the
inspector straight from the graph's ``hoverData``.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, dcc, html

from components.embedding import (
    RowValues,
    color_groups,
    embedding_figure,
    embedding_title,
    has_values,
)
from components.figure_download import figure_download
from components.theme import message_figure
from dashboard import ids
from dashboard.context import current
from dashboard.data import NotReady, RunData
from dashboard.registry import callback, clientside_callback
from pipelines.errors import UserError

TSNE_PENDING = "t-SNE computing…"
VIEW_FIELDS = ("run", "layer", "subset", "method", "perplexity", "color")


def layout() -> dbc.Card:
    return dbc.Card(
        [
            dbc.CardHeader(
                html.Div(
                    [
                        html.Span("Embedding", className="ls-card-title me-3"),
                        html.Span(
                            "hover a point to inspect it · click to pin · legend toggles classes",
                            className="ls-hint",
                        ),
                        figure_download(ids.EMBEDDING_GRAPH, "layerscope-embedding"),
                    ],
                    className="d-flex align-items-baseline flex-wrap",
                )
            ),
            dbc.CardBody(
                [
                    html.Div(id=ids.EMBEDDING_MESSAGE),
                    dcc.Graph(
                        id=ids.EMBEDDING_GRAPH,
                        figure=message_figure("Loading…", 400),
                        clear_on_unhover=True,
                        config={"displaylogo": False, "scrollZoom": True},
                        className="ls-embedding-graph",
                    ),
                    dcc.Store(id=ids.EMBEDDING_DATA),
                ],
                className="p-1",
            ),
        ],
        id=ids.EMBEDDING_CARD,
        className="ls-card mb-3",
    )


def view_key_text(key: dict[str, Any]) -> str:
    return "|".join(str(key.get(field)) for field in VIEW_FIELDS)


FALLBACK_REASON = {
    "label_issue": "label issues are not computed for this run (run its precompute again)",
    "split": "this run's sample table does not record the split",
}


def row_values(run: RunData, subset: int) -> RowValues:
    """What every colouring may need, for the subset's rows."""
    samples = run.samples()
    predictions = run.predictions()
    quality = run.quality()
    split = samples.get("model_split")
    return RowValues(
        labels=np.asarray(samples["label"][:subset], dtype=np.int64),
        predicted=None
        if predictions is None
        else np.asarray(predictions["predicted"][:subset], dtype=np.int64),
        correct=None
        if predictions is None
        else np.asarray(predictions["correct"][:subset], dtype=np.int8),
        split=None if split is None else split[:subset],
        loss=None
        if predictions is None
        else np.asarray(predictions["loss"][:subset], dtype=np.float32),
        label_issue=None if quality is None else quality.label_issue_score[:subset],
    )


def build_embedding(run: RunData, key: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The figure for a view key, and a note when it shows the PCA map in place of a t-SNE map
    still computing; raises NotReady / UserError with a message for the page."""
    layer_id = key["layer"]
    subset = int(key["subset"])
    method = key["method"]
    perplexity = float(key["perplexity"]) if method == "tsne" and key.get("perplexity") else None
    coords, pending_note = maps_of(run, layer_id, subset, method, perplexity)
    if pending_note:
        method, perplexity = "pca", None
    values = row_values(run, subset)
    color = key["color"]
    groups = color_groups(
        color, values, run.class_names, run.model_class_names, run.dataset_to_model
    )
    layer = run.layer(layer_id)
    title = embedding_title(method, perplexity, layer_id, layer.type, subset, layer.same_as)
    if not has_values(color, values):
        title += f" (coloured by true label: {FALLBACK_REASON.get(color, 'predictions are not computed yet')})"
    if pending_note:
        title += f" · {pending_note}"
    structure = f"{run.run_id}|{run.version}|{subset}|{color}|{has_values(color, values)}"
    return embedding_figure(coords, groups, title, structure, uirevision=structure), pending_note


def maps_of(
    run: RunData, layer_id: str, subset: int, method: str, perplexity: float | None
) -> tuple[np.ndarray, str | None]:
    """The layer's map, or, while its t-SNE is still computing, its PCA map and a note saying
    so ("t-SNE computing… 3 of 14 layers"): the precompute stores every PCA map first, so the
    page is useful long before the last t-SNE map."""
    try:
        return run.embedding(layer_id, subset, method, perplexity), None
    except NotReady:
        if method != "tsne":
            raise
        coords = run.embedding(layer_id, subset, "pca", None)  # NotReady too: the first message
        stage = run.stage("embeddings")
        total = stage.total or len(run.layers)
        return coords, f"{TSNE_PENDING} {stage.done or 0} of {total} layers, PCA shown meanwhile"


@callback(
    Output(ids.EMBEDDING_DATA, "data"),
    Output(ids.EMBEDDING_MESSAGE, "children"),
    Input(ids.VIEW_KEY, "data"),
    Input(ids.RUN_VERSION, "data"),
)
def load(key: dict[str, Any] | None, version: dict[str, Any] | None) -> tuple:
    """View key (or a newer manifest) -> {"key", "run", "figure"} for the browser to draw."""
    if not key or not key.get("run"):
        return {"key": "none", "run": None, "figure": message_figure("No run selected.", 400)}, None
    stamp = (version or {}).get("stamp") if (version or {}).get("run") == key.get("run") else None
    payload_key = f"{view_key_text(key)}|{stamp}"
    try:
        run = current().catalog.open(key["run"])
        if not key.get("layer") or key.get("subset") is None:
            raise NotReady(
                f"run '{run.run_id}' has no layers or subsets yet; its precompute is still indexing"
            )
        figure, pending_note = build_embedding(run, key)
    except NotReady as exc:
        return (
            {"key": payload_key, "run": key["run"], "figure": message_figure(str(exc), 400)},
            dbc.Alert(str(exc), color="info", className="ls-alert mb-1"),
        )
    except UserError as exc:
        return (
            {"key": payload_key, "run": key["run"], "figure": message_figure(str(exc), 400)},
            dbc.Alert(str(exc), color="warning", className="ls-alert mb-1"),
        )
    badge = (
        None
        if pending_note is None
        else dbc.Badge(pending_note, color="info", className="ls-pending-badge mb-1")
    )
    return {"key": payload_key, "run": key["run"], "figure": figure}, badge


clientside_callback(
    "renderEmbedding",
    Output(ids.EMBEDDING_GRAPH, "figure"),
    Input(ids.EMBEDDING_DATA, "data"),
    Input(ids.SELECTION, "data"),
    Input(ids.SELECTION_ROWS, "data"),
    State(ids.EMBEDDING_GRAPH, "figure"),
)

clientside_callback(
    "clickToSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.EMBEDDING_GRAPH, "clickData"),
    prevent_initial_call=True,
)
