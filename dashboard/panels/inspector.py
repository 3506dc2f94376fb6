"""Inspector: the hovered (or pinned) sample's image, labels, top-10 bars and explanations.

Hover must show within 50 ms, so the server sends the per-run table once (``load_table``) and
the browser fills the panel itself (``renderInspector`` in assets/inspector.js): image URLs from
templates, the top-10 bars from the table (the JS is their only builder). Clicking a bar picks
that class for the explanations, whose controls and jobs are ``panels/explain.py``.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from components.inspector import inspector_table
from dashboard import ids
from dashboard.context import current
from dashboard.data import RunData
from dashboard.panels import explain
from dashboard.registry import callback, clientside_callback
from dashboard.routes import url_templates
from pipelines.errors import UserError


def layout() -> dbc.Card:
    header = html.Div(
        [
            html.Span("Inspector", className="ls-card-title me-2"),
            html.Span("hover a point", id=ids.INSPECTOR_HINT, className="ls-hint me-auto"),
            dbc.Button(
                "unpin",
                id=ids.INSPECTOR_UNPIN,
                size="sm",
                color="warning",
                outline=True,
                disabled=True,
            ),
        ],
        className="d-flex align-items-center",
    )
    body = dbc.CardBody(
        [
            html.Div(
                [
                    html.Img(
                        id=ids.INSPECTOR_IMAGE, src="", className="ls-sample-image", alt="sample"
                    ),
                    html.Div(
                        [
                            html.Div(id=ids.INSPECTOR_UID, className="ls-uid"),
                            html.Div(id=ids.INSPECTOR_LABELS, className="ls-labels"),
                        ],
                        className="ms-3 flex-grow-1 ls-minw0",
                    ),
                ],
                className="d-flex align-items-start mb-2",
            ),
            # Filled by assets/inspector.js only: Dash never renders children into it.
            html.Div(id=ids.INSPECTOR_TOP10, className="ls-top10"),
            html.Div(
                [
                    html.Span(className="ls-swatch is-true"),
                    "true label",
                    html.Span(className="ls-swatch is-explained"),
                    "explained class",
                ],
                className="ls-top10-legend",
            ),
            explain.controls(),
            html.Div(
                [
                    html.Span(id=ids.INSPECTOR_EXPLAIN_CAPTION, className="ls-hint me-2"),
                    html.Span(id=ids.INSPECTOR_EXPLAIN_STATUS, className="ls-status"),
                ],
                className="mt-1 mb-1",
            ),
            explain.images(),
            dcc.Store(id=ids.INSPECTOR_TABLE),
            dcc.Store(id=ids.INSPECTOR_RUN_INFO),
            dcc.Store(id=ids.INSPECTOR_SHOWN),
            dcc.Store(id=ids.INSPECTOR_CLASS),
            dcc.Store(id=ids.INSPECTOR_CLASS_REQUEST),
        ]
    )
    return dbc.Card([dbc.CardHeader(header), body], id=ids.INSPECTOR_CARD, className="ls-card mb-3")


def run_info(run: RunData) -> dict[str, Any]:
    """What the browser needs besides the table: URL templates and what exists, with the note
    to show where something does not."""
    methods = run.explanation_methods()
    gradcam_layer = run.gradcam_layer
    if methods:
        note = None
    elif not gradcam_layer and run.stage("index").state == "done":
        note = "This model has no spatial conv layer, so it has no Grad-CAM explanations."
    else:
        note = (
            "The run's explanations are not stored yet (its precompute is still running): click "
            "a point to compute its own now."
        )
    return {
        "run": run.run_id,
        "version": run.version,
        "urls": url_templates(run),
        "hasThumbnails": run.store.has("thumbnails"),
        "explanations": methods,
        "explanationNote": note,
        "hasPredictions": run.predictions() is not None,
        "hasQuality": run.quality() is not None,
        "canExplainClass": bool(run.layers),
        "gradcamLayer": gradcam_layer,
        # Layers with channel maps: those the Grad-CAM family can weigh.
        "spatialLayers": [
            layer.id
            for layer in run.layers
            if layer.output_shape is not None and len(layer.output_shape) == 3
        ],
    }


def label_issues(run: RunData) -> tuple[Any, list[str | None]] | None:
    """Each sample's label-issue flag and suggested class name, when the run has them."""
    quality = run.quality()
    if quality is None:
        return None
    names = run.class_names
    suggested = [
        names[c] if 0 <= c < len(names) else None for c in quality.suggested_label.tolist()
    ]
    return quality.is_label_issue, suggested


@callback(
    Output(ids.INSPECTOR_TABLE, "data"),
    Output(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_SAMPLES_VERSION, "data"),
    State(ids.INSPECTOR_RUN_INFO, "data"),
)
def load_table(run_id: str | None, _version: Any, previous: dict[str, Any] | None) -> tuple:
    """Per-run rows (uid, labels, top-10) for the clientside hover; re-sent only when the run
    or what it has computed changed (packed, a 60k-row table is ~4 MB)."""
    if not run_id:
        return None, None
    try:
        run = current().catalog.open(run_id)
        info = run_info(run)
        if previous and all(
            previous.get(k) == info[k]
            for k in (
                "run",
                "version",
                "hasPredictions",
                "explanations",
                "hasThumbnails",
                "hasQuality",
            )
        ):
            return no_update, no_update
        table = inspector_table(
            run.samples(), run.predictions(), run.model_class_names, label_issues(run)
        )
    except UserError as exc:  # NotReady included: the panel says what is missing
        return None, {"run": run_id, "error": str(exc)}
    return table, info


# The top-10 bars and the explanation figures are not outputs: renderInspector draws them into
# INSPECTOR_TOP10 and EXPLAIN_FIGURES itself.
clientside_callback(
    "renderInspector",
    Input(ids.SELECTION, "data"),
    Input(ids.EMBEDDING_GRAPH, "hoverData"),
    Input(ids.INSPECTOR_TABLE, "data"),
    Input(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.EXPLAIN_ANSWERS, "data"),
    Input(ids.EXPLAIN_METHODS, "value"),
    Input(ids.EXPLAIN_REQUEST_QUICK, "data"),
    Input(ids.EXPLAIN_REQUEST_SLOW, "data"),
    Input(ids.EXPLAIN_CLASS, "value"),
    Input(ids.EXPLAIN_USE_SELECTED_LAYER, "value"),
    Input(ids.UPLOADS, "data"),
    Input(ids.EXPLAIN_CANCEL, "n_clicks"),
    Input(ids.GALLERY_HOVER, "data"),
    State(ids.INSPECTOR_SHOWN, "data"),
    State(ids.UPLOAD_SESSION, "data"),
    outputs={
        "image": Output(ids.INSPECTOR_IMAGE, "src"),
        "uid": Output(ids.INSPECTOR_UID, "children"),
        "labels": Output(ids.INSPECTOR_LABELS, "children"),
        "hint": Output(ids.INSPECTOR_HINT, "children"),
        "caption": Output(ids.INSPECTOR_EXPLAIN_CAPTION, "children"),
        # {method: value}, one per explanation image / note on the page
        "shown": Output(ids.INSPECTOR_SHOWN, "data"),
        "unpinDisabled": Output(ids.INSPECTOR_UNPIN, "disabled"),
    },
)

clientside_callback(
    "unpin",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.INSPECTOR_UNPIN, "n_clicks"),
    prevent_initial_call=True,
)
