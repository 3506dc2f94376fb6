"""Embedding: the selected layer's 2-D reduction as a Scattergl, one trace per colour group.

The server builds the figure (``load``); the browser fetches it from ``VIEW_URL`` (``loadView``,
not a Dash callback: a layer click starts that request itself, ``ls.prefetchView``, two Dash
rounds before the view key reaches the store) and draws it (``renderEmbedding``), animating
points from the previous layer's positions when only the layer changed. A click writes
the pinned row into the selection clientside, so it never waits on the server; hover reaches the
inspector straight from the graph's ``hoverData``.

The "3-D" switch draws the same view as a rotatable Scatter3d in the same graph, so hover, click
and pin reach the inspector by exactly the 2-D map's path. 3-D PCA is the layer's first three
PCA scores; 3-D t-SNE is computed once per (layer, subset, perplexity) by a background job
(``compute_3d``) and kept as the run's ``embedding3d`` artifact (in memory if the run is
read-only). The workbench's selection is not dimmed in 3-D: Scatter3d has no ``selectedpoints``.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from components.embedding import (
    PointGroup,
    RowValues,
    color_groups,
    embedding_figure,
    embedding_figure_3d,
    embedding_title,
    has_values,
)
from components.figure_download import figure_download
from components.theme import message_figure
from dashboard import ids
from dashboard.context import by_token, current
from dashboard.data import NotReady, RunCatalog, RunData
from dashboard.jobs import on_timeout, slow_job
from dashboard.registry import callback, clientside_callback, publish
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
                        dbc.Switch(
                            id=ids.EMBEDDING_3D,
                            label="3-D",
                            value=False,
                            className="ls-hint ms-auto me-2 mb-0",
                        ),
                        html.Span(id=ids.EMBEDDING_3D_STATUS, className="ls-hint me-2"),
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
                    dcc.Store(id=ids.EMBEDDING_3D_REQUEST),
                    dcc.Store(id=ids.EMBEDDING_3D_READY),
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


def view_groups(run: RunData, key: dict[str, Any], title: str) -> tuple[list[PointGroup], str, str]:
    """The colouring's legend groups, the title with why a colouring fell back to labels, and
    the trace structure (run, subset, colouring) of a view key."""
    subset = int(key["subset"])
    values = row_values(run, subset)
    color = key.get("color") or "label"  # the page always sends one; a bare request may not
    groups = color_groups(
        color, values, run.class_names, run.model_class_names, run.dataset_to_model
    )
    if not has_values(color, values):
        title += f" (coloured by true label: {FALLBACK_REASON.get(color, 'predictions are not computed yet')})"
    structure = f"{run.run_id}|{run.version}|{subset}|{color}|{has_values(color, values)}"
    return groups, title, structure


def view_perplexity(key: dict[str, Any]) -> float | None:
    return float(key["perplexity"]) if key["method"] == "tsne" and key.get("perplexity") else None


def build_embedding(run: RunData, key: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The figure for a view key, and a note when it shows the PCA map in place of a t-SNE map
    still computing; raises NotReady / UserError with a message for the page."""
    layer_id = key["layer"]
    subset = int(key["subset"])
    method = key["method"]
    perplexity = view_perplexity(key)
    coords, pending_note = maps_of(run, layer_id, subset, method, perplexity)
    if pending_note:
        method, perplexity = "pca", None
    layer = run.layer(layer_id)
    title = embedding_title(method, perplexity, layer_id, layer.type, subset, layer.same_as)
    groups, title, structure = view_groups(run, key, title)
    if pending_note:
        title += f" · {TSNE_PENDING}"  # the badge above says how far
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


def map_3d_request(run: RunData, key: dict[str, Any]) -> dict[str, Any]:
    """What the 3-D t-SNE job computes for a view key (the version: a recomputed run's map is
    another map)."""
    return {
        "run": run.run_id,
        "version": run.version,
        "layer": key["layer"],
        "subset": int(key["subset"]),
        "perplexity": view_perplexity(key),
    }


def build_embedding_3d(
    run: RunData, key: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the 3-D figure for a view key, or None while its t-SNE map is not computed; the request
    that computes it). Raises NotReady / UserError with a message for the page."""
    layer_id = key["layer"]
    subset = int(key["subset"])
    method = key["method"]
    perplexity = view_perplexity(key)
    request = map_3d_request(run, key)
    found = run.embedding_3d(layer_id, subset, method, perplexity)
    if found is None:
        return None, request
    layer = run.layer(layer_id)
    title = "3-D " + embedding_title(
        method, perplexity, layer_id, layer.type, subset, layer.same_as
    )
    if found.padded:
        title += f" (the layer has {found.pca_dims} PCA dimension(s): the other axes are zero)"
    groups, title, structure = view_groups(run, key, title)
    # The camera stays where the user turned it across colourings, layers and subsets.
    return embedding_figure_3d(
        found.coords, groups, title, f"{structure}|3d", uirevision=f"{run.run_id}|3d"
    ), request


def load(key: dict[str, Any] | None, version: dict[str, Any] | None) -> tuple:
    """View key (or a newer manifest) -> ({"key", "run", "figure"} for the browser to draw,
    the message above the map): the 2-D map."""
    return view_payload(current().catalog, key, version, False)[:2]


def load_view(
    key: dict[str, Any] | None, version: dict[str, Any] | None, three_d: bool | None
) -> tuple:
    """``load``, in 3-D while the switch is on, and the request for ``compute_3d`` when the
    view's 3-D t-SNE map is not computed yet."""
    return view_payload(current().catalog, key, version, bool(three_d))


# The map's data comes from a route (``view_answer``, registered in dashboard/routes.py) rather
# than a server callback: Dash runs a callback only after every callback that feeds its inputs,
# so the request waited for the click's chain (clickData -> selection -> view key, ~35 ms a
# round on 2 cores) and then shared the server with the model view's and the activations'
# requests. The layer click now starts it first (``selectLayer`` -> ``ls.prefetchView``).
VIEW_URL = "/maps/view"
publish("viewUrl", VIEW_URL)

clientside_callback(
    "loadView",
    Input(ids.VIEW_KEY, "data"),
    Input(ids.RUN_MAPS_VERSION, "data"),
    Input(ids.EMBEDDING_3D, "value"),
    outputs={
        "data": Output(ids.EMBEDDING_DATA, "data"),
        "message": Output(ids.EMBEDDING_MESSAGE, "children"),
        "request3d": Output(ids.EMBEDDING_3D_REQUEST, "data"),
    },
)


def view_answer(
    catalog: RunCatalog, key: dict[str, Any] | None, version: dict[str, Any] | None, three_d: bool
) -> dict[str, Any]:
    """``VIEW_URL``'s answer: what ``load_view`` returns, by name, the 3-D request None when
    there is none."""
    payload, message, request = view_payload(catalog, key, version, three_d)
    return {
        "data": payload,
        "message": message,
        "request3d": None if request is no_update else request,
    }


def view_payload(
    catalog: RunCatalog, key: dict[str, Any] | None, version: dict[str, Any] | None, three_d: bool
) -> tuple[dict[str, Any], Any, Any]:
    """(the payload for ``renderEmbedding``, the message above the map, the 3-D t-SNE request
    or no_update). A payload still waiting for its map says ``pending``: the browser draws the
    job's answer in its place when that answer carries the same ``key``."""
    if not key or not key.get("run"):
        return (
            {"key": "none", "run": None, "figure": message_figure("No run selected.", 400)},
            None,
            no_update,
        )
    stamp = (version or {}).get("stamp") if (version or {}).get("run") == key.get("run") else None
    payload_key = f"{view_key_text(key)}|{stamp}" + ("|3d" if three_d else "")
    try:
        run = catalog.open(key["run"])
        if not key.get("layer") or key.get("subset") is None:
            raise NotReady(run.building_note())
        pending_note = None
        if not three_d:
            figure, pending_note = build_embedding(run, key)
            shown = ("pca", None) if pending_note else (key["method"], view_perplexity(key))
            # The map as drawn, not the manifest's stamp: a new stamp (another layer's map, an
            # epoch of training) then changes the badge above the map, not the map.
            payload_key = f"{view_key_text(key)}|" + run.map_identity(
                key["layer"], int(key["subset"]), *shown
            )
        else:
            built, wanted = build_embedding_3d(run, key)
            if built is None:
                pending = {
                    "key": payload_key,
                    "run": key["run"],
                    "figure": message_figure("computing 3-D t-SNE…", 400),
                    "pending": True,
                }
                request = {**wanted, "key": payload_key, "view": key, "runVersion": version}
                return pending, None, request
            figure = built
    except NotReady as exc:
        return (
            {"key": payload_key, "run": key["run"], "figure": message_figure(str(exc), 400)},
            dbc.Alert(str(exc), color="info", className="ls-alert mb-1"),
            no_update,
        )
    except UserError as exc:
        return (
            {"key": payload_key, "run": key["run"], "figure": message_figure(str(exc), 400)},
            dbc.Alert(str(exc), color="warning", className="ls-alert mb-1"),
            no_update,
        )
    badge = (
        None
        if pending_note is None
        else dbc.Badge(pending_note, color="info", className="ls-pending-badge mb-1")
    )
    return {"key": payload_key, "run": key["run"], "figure": figure}, badge, no_update


def failed_3d(request: Any, message: str) -> dict[str, Any]:
    """The job's answer when it could not make the map: the message where the map would be."""
    key = request.get("key") if isinstance(request, dict) else None
    run = request.get("run") if isinstance(request, dict) else None
    return {"key": key, "payload": {"key": key, "run": run, "figure": message_figure(message, 400)}}


def compute_3d_timed_out(seconds: float, request: Any, _token: Any) -> dict[str, Any]:
    return failed_3d(
        request, f"The 3-D t-SNE map took longer than {seconds:g} s; pick a smaller subset."
    )


# The job's answer goes to its own store, which renderEmbedding reads, not back into load_view:
# load_view -> request -> job -> load_view would be a callback cycle, which dash does not run.
@callback(
    Output(ids.EMBEDDING_3D_READY, "data"),
    Input(ids.EMBEDDING_3D_REQUEST, "data"),
    State(ids.APP_TOKEN, "data"),
    background=True,
    interval=500,
    running=[
        (Output(ids.EMBEDDING_3D_STATUS, "children"), "computing 3-D t-SNE…", ""),
        # The spinner is CSS (ls-computing::before): running values are set as plain props.
        (Output(ids.EMBEDDING_3D_STATUS, "className"), "ls-hint me-2 ls-computing", "ls-hint me-2"),
    ],
    prevent_initial_call=True,
)
@slow_job
@on_timeout(compute_3d_timed_out)
def compute_3d(request: Any, token: str | None) -> dict[str, Any]:
    """Compute and keep a view's 3-D t-SNE map (the request ``view_payload`` made), then
    answer {"key", "payload"}: the view drawn with it, or the error in its place."""
    if not isinstance(request, dict) or not isinstance(request.get("run"), str):
        return failed_3d(request, "There is no view to compute a 3-D map of.")
    try:
        catalog = by_token(token).catalog
        run = catalog.open(request["run"])
        layer, subset = str(request["layer"]), int(request["subset"])
        perplexity = request.get("perplexity")
        if perplexity is None:
            raise UserError("3-D t-SNE needs a perplexity; pick one in the controls")
        if run.embedding_3d(layer, subset, "tsne", float(perplexity)) is None:
            run.compute_tsne_3d(layer, subset, float(perplexity))
        payload, _, _ = view_payload(catalog, request.get("view"), request.get("runVersion"), True)
    except (UserError, ValueError, TypeError, KeyError) as exc:
        return failed_3d(request, str(exc))
    if payload.get("pending"):
        # Computed, yet not found again: kept by another process (a Celery worker) of a
        # read-only run.
        return failed_3d(request, "The 3-D t-SNE map was computed but could not be kept.")
    return {"key": request.get("key"), "payload": payload}


clientside_callback(
    "renderEmbedding",
    Output(ids.EMBEDDING_GRAPH, "figure"),
    Input(ids.EMBEDDING_DATA, "data"),
    Input(ids.EMBEDDING_3D_READY, "data"),
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
