"""Inspector: the hovered (or pinned) sample's image, labels, top-10 bars and explanations.

Hover must show within 50 ms, so the server sends the per-run table once (``load_table``) and
the browser fills the panel itself (``renderInspector`` in assets/inspector.js): image URLs from
templates, the top-10 bars from the table (the JS is their only builder). Clicking a bar writes
{cls, name} into ``INSPECTOR_CLASS_REQUEST``, which asks a background callback
(``explain_class``) to compute every explanation for that class through the model service; the
images then load by URL.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, dcc, html, no_update

from components.inspector import inspector_table
from dashboard import ids
from dashboard.context import by_token, current
from dashboard.data import EXPLANATION_METHODS, RunData
from dashboard.jobs import on_timeout
from dashboard.registry import callback, clientside_callback, publish
from dashboard.routes import class_explanation_url, url_templates
from pipelines.errors import UserError

# The explanation package names the stored methods; the page shows one image per method, in its order.
publish("explanationMethods", list(EXPLANATION_METHODS))

# Display names; a method without one shows its registry name.
METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "guided_backprop": "Guided backprop",
    "guided_gradcam": "Guided Grad-CAM",
}


def _explanation(method: str) -> html.Figure:
    title = METHOD_TITLES.get(method, method)
    return html.Figure(
        [
            html.Img(
                id=ids.explanation_image(method),
                src="",
                className="ls-explanation-image",
                alt=title,
            ),
            html.Div(id=ids.explanation_note(method), className="ls-hint"),
            html.Figcaption(title, className="ls-caption"),
        ],
        className="ls-explanation m-0",
    )


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
            html.Div(
                [
                    html.Span(id=ids.INSPECTOR_EXPLAIN_CAPTION, className="ls-hint me-2"),
                    html.Span(id=ids.INSPECTOR_EXPLAIN_STATUS, className="ls-status"),
                ],
                className="mt-1 mb-1",
            ),
            html.Div([_explanation(m) for m in EXPLANATION_METHODS], className="ls-explanations"),
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
            "Explanations are not computed yet (the precompute's forward stage is still running)."
        )
    return {
        "run": run.run_id,
        "version": run.version,
        "urls": url_templates(run),
        "hasThumbnails": run.store.has("thumbnails"),
        "explanations": methods,
        "explanationNote": note,
        "hasPredictions": run.predictions() is not None,
        "canExplainClass": bool(gradcam_layer),
    }


@callback(
    Output(ids.INSPECTOR_TABLE, "data"),
    Output(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_VERSION, "data"),
    State(ids.INSPECTOR_RUN_INFO, "data"),
)
def load_table(run_id: str | None, _version: Any, previous: dict[str, Any] | None) -> tuple:
    """Per-run rows (uid, labels, top-10) for the clientside hover; re-sent only when the run
    or what it has computed changed (a 13k-row table is ~1 MB)."""
    if not run_id:
        return None, None
    try:
        run = current().catalog.open(run_id)
        info = run_info(run)
        if previous and all(
            previous.get(k) == info[k]
            for k in ("run", "version", "hasPredictions", "explanations", "hasThumbnails")
        ):
            return no_update, no_update
        table = inspector_table(run.samples(), run.predictions(), run.model_class_names)
    except UserError as exc:  # NotReady included: the panel says what is missing
        return None, {"run": run_id, "error": str(exc)}
    return table, info


def clicked_class(request: dict[str, Any] | None, shown: dict[str, Any] | None) -> dict[str, Any]:
    """What a click on a top-10 bar asks for (``request``: {"cls", "name"} of the bar), as every
    answer to it starts: the run, row and class (the page shows an answer only while that row is
    shown), or an error saying what to do first."""
    class_index = (request or {}).get("cls")
    if not shown or shown.get("row") is None or not isinstance(class_index, int):
        return {"error": "Hover or pin a sample first, then click one of its bars."}
    name = str((request or {}).get("name") or class_index)
    return {"run": shown.get("run"), "row": int(shown["row"]), "cls": class_index, "name": name}


def explain_timed_out(
    seconds: float, request: dict[str, Any] | None, shown: dict[str, Any] | None, _token: Any
) -> dict[str, Any]:
    """``explain_class``'s answer when its job runs out of time: the page says so under the
    images instead of "computing…" for ever."""
    error = (
        f"Computing the explanations took longer than {seconds:g} s; click the bar to try again."
    )
    return {**clicked_class(request, shown), "error": error}


@callback(
    Output(ids.INSPECTOR_CLASS, "data"),
    Input(ids.INSPECTOR_CLASS_REQUEST, "data"),
    State(ids.INSPECTOR_SHOWN, "data"),
    State(ids.APP_TOKEN, "data"),
    background=True,
    interval=200,
    running=[
        (
            Output(ids.INSPECTOR_EXPLAIN_STATUS, "children"),
            "computing explanations for the clicked class…",
            "",
        )
    ],
    prevent_initial_call=True,
)
@on_timeout(explain_timed_out)
def explain_class(
    request: dict[str, Any] | None, shown: dict[str, Any] | None, token: str | None
) -> dict[str, Any]:
    """A click on a top-10 bar -> every explanation method for that class, computed (and
    cached) by the model service; the browser then loads them by URL."""
    result = clicked_class(request, shown)
    if "error" in result:
        return result
    try:
        context = by_token(token)
        run = context.catalog.open(result["run"])
        context.service.class_explanations(run, result["row"], result["cls"])
    except UserError as exc:
        return {**result, "error": str(exc)}
    result["urls"] = {
        m: class_explanation_url(run, result["cls"], m, result["row"]) for m in EXPLANATION_METHODS
    }
    return result


# The top-10 bars are not an output: renderInspector draws them into INSPECTOR_TOP10 itself.
clientside_callback(
    "renderInspector",
    Input(ids.SELECTION, "data"),
    Input(ids.EMBEDDING_GRAPH, "hoverData"),
    Input(ids.INSPECTOR_TABLE, "data"),
    Input(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.INSPECTOR_CLASS, "data"),
    State(ids.INSPECTOR_SHOWN, "data"),
    outputs={
        "image": Output(ids.INSPECTOR_IMAGE, "src"),
        "uid": Output(ids.INSPECTOR_UID, "children"),
        "labels": Output(ids.INSPECTOR_LABELS, "children"),
        "hint": Output(ids.INSPECTOR_HINT, "children"),
        "caption": Output(ids.INSPECTOR_EXPLAIN_CAPTION, "children"),
        # {method: value}, one per explanation image / note on the page
        "explanationImages": Output(ids.explanation_image(ALL), "src"),
        "explanationNotes": Output(ids.explanation_note(ALL), "children"),
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
