"""Explanations in the inspector: which class (a searchable picker, the top-10 bars, "predicted"
and "true class"), which of the registered methods (plugins included), and which layer the
Grad-CAM family weighs; the images side by side with their colour legends.

What to compute is decided in the browser (``explainRequest`` in assets/explain.js): nothing on
hover (the precomputed maps of the predicted class load by URL), and for a pinned sample, a chosen
class or a method the precompute did not store, two requests: the quick methods go to
``explain_quick``, a plain callback answering in well under a second, the slow ones (many
passes: SmoothGrad, Integrated Gradients, occlusion) to ``explain_slow``, a job on the slow
lane's own threads with a progress bar and a cancel button, on a copy of the model of its own,
so neither the quick job nor anybody's hover waits behind it. Results are cached per sample,
class, layer and method (``OnDemand.class_explanations``); the answers carry image URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import ids
from dashboard.context import by_token, current
from dashboard.data import RunData
from dashboard.jobs import on_timeout, slow_job
from dashboard.model_service import Sample
from dashboard.registry import callback, clientside_callback, publish
from dashboard.routes import class_explanation_url, upload_url
from dashboard.uploads import check_session, check_upload_id
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, STORED_METHODS, Display
from pipelines.explain.base import Progress, no_progress

# How many of occlusion's patches the table lists (those whose hiding lowers p the most).
OCCLUSION_ROWS = 5


def method_catalogue() -> dict[str, dict[str, Any]]:
    """What the browser needs of every registered method, in registry order."""
    return {
        name: {
            "title": explainer.title,
            "display": explainer.display.value,
            "slow": explainer.slow,
            "layer": explainer.uses_target_layer,
        }
        for name, explainer in EXPLAINERS.items()
    }


def method_options() -> list[dict[str, Any]]:
    """Checklist options: slow methods marked, since they run as a job with a progress bar."""
    return [
        {"label": explainer.title + (" (slow)" if explainer.slow else ""), "value": name}
        for name, explainer in EXPLAINERS.items()
    ]


def _legend(display: Display, low: str, high: str, middle: str = "") -> html.Div:
    return html.Div(
        [
            html.Span(low, className="ls-legend-end"),
            html.Span(className=f"ls-legend-bar is-{display.value}"),
            html.Span(high, className="ls-legend-end"),
            html.Span(middle, className="ls-legend-middle") if middle else None,
        ],
        id=f"{ids.EXPLAIN_LEGEND}-{display.value}",
        className="ls-legend",
        style={"display": "none"},
    )


def controls() -> html.Div:
    """The class picker, the method checklist and the layer line, above the images."""
    publish("explainers", method_catalogue(), latest=True)
    class_row = html.Div(
        [
            html.Span("Class", className="ls-label me-2"),
            dcc.Dropdown(
                id=ids.EXPLAIN_CLASS,
                options=[],
                value=None,
                placeholder="predicted class (type to search)",
                clearable=True,
                searchable=True,
                className="ls-class-picker flex-grow-1",
            ),
            dbc.Button(
                "predicted",
                id=ids.EXPLAIN_PREDICTED,
                size="sm",
                color="info",
                outline=True,
                className="ms-2",
            ),
            dbc.Button(
                "true class",
                id=ids.EXPLAIN_TRUE,
                size="sm",
                color="success",
                outline=True,
                className="ms-1",
            ),
        ],
        className="d-flex align-items-center mb-1",
    )
    defaults = [name for name in STORED_METHODS if name in EXPLAINERS]
    return html.Div(
        [
            class_row,
            dbc.Checklist(
                id=ids.EXPLAIN_METHODS,
                options=method_options(),
                value=defaults,
                inline=True,
                switch=False,
                persistence=True,
                className="ls-methods",
            ),
            html.Div(
                [
                    html.Span(id=ids.EXPLAIN_LAYER, className="ls-hint me-2"),
                    dbc.Checkbox(
                        id=ids.EXPLAIN_USE_SELECTED_LAYER,
                        label="at the layer selected in the architecture",
                        value=False,
                        className="ls-hint d-inline-block",
                    ),
                ],
                className="d-flex flex-wrap align-items-center",
            ),
        ],
        className="ls-explain-controls mt-2",
    )


def images() -> html.Div:
    """Every registered method's figure (shown when chosen), the legends, occlusion's table and
    the slow job's progress row."""
    return html.Div(
        [
            html.Div(
                [
                    dbc.Progress(
                        id=ids.EXPLAIN_PROGRESS,
                        value=0,
                        label="",
                        className="flex-grow-1 ls-progress",
                    ),
                    dbc.Button(
                        "cancel",
                        id=ids.EXPLAIN_CANCEL,
                        size="sm",
                        color="danger",
                        outline=True,
                        className="ms-2",
                    ),
                ],
                id=ids.EXPLAIN_PROGRESS_ROW,
                # Not bootstrap's d-flex: its !important would beat the inline display: none.
                className="ls-progress-row mb-1",
                style={"display": "none"},
            ),
            # Drawn by assets/explain.js (one figure per registered method), never by Dash: set
            # through Dash, its images, notes and styles cost ~15 ms of every hover.
            html.Div(id=ids.EXPLAIN_FIGURES, className="ls-explanations"),
            html.Div(
                [
                    _legend(Display.HEAT, "low", "high relevance"),
                    _legend(Display.SIGNED, "against", "for the class", "white: no evidence"),
                ],
                id=ids.EXPLAIN_LEGEND,
                className="ls-legends",
            ),
            # Filled by assets/explain.js from the slow job's answer.
            html.Div(id=ids.EXPLAIN_OCCLUSION, className="ls-occlusion"),
            dcc.Store(id=ids.EXPLAIN_REQUEST_QUICK),
            dcc.Store(id=ids.EXPLAIN_REQUEST_SLOW),
            dcc.Store(id=ids.EXPLAIN_SLOW),
            dcc.Store(id=ids.EXPLAIN_ANSWERS),
            dcc.Store(id=ids.EXPLAIN_ANSWERS_SINK),
        ]
    )


@callback(
    Output(ids.EXPLAIN_CLASS, "options"),
    Output(ids.EXPLAIN_CLASS, "value"),
    Input(ids.RUN_KEY, "data"),
)
def class_options(run_id: str | None) -> tuple[list[dict[str, Any]], None]:
    """The model's classes, searchable by name or index ("207: golden retriever")."""
    if not run_id:
        return [], None
    try:
        names = current().catalog.open(run_id).model_class_names
    except UserError:
        return [], None
    return [{"label": f"{i}: {name}", "value": i} for i, name in enumerate(names)], None


# ---- the two jobs ---------------------------------------------------------------------------


def checked_request(request: Any) -> dict[str, Any]:
    """A request from the page as the answer starts ({run, row, upload, session, cls, name,
    layer}: a sample row, or an uploaded image of a session), after the checks a hand-made
    payload needs; a ``UserError`` for anything else."""
    if not isinstance(request, dict):
        raise UserError("pin a sample or pick a class first")
    run_id, row, cls = request.get("run"), request.get("row"), request.get("cls")
    upload, session = request.get("upload"), request.get("session")
    methods, layer = request.get("methods"), request.get("layer")
    if upload is not None:
        upload, session, row = check_upload_id(upload), check_session(session), None
    elif type(row) is not int:
        raise UserError("the request names no sample; pin a sample first")
    if not isinstance(run_id, str) or type(cls) is not int:
        raise UserError("the request names no run and class; pin a sample first")
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise UserError("the request names no explanation methods")
    if layer is not None and not isinstance(layer, str):
        raise UserError("the request's layer must be a layer id")
    return {
        "run": run_id,
        "row": row,
        "upload": upload,
        "session": session,
        "cls": cls,
        "name": str(request.get("name") or cls),
        "layer": layer,
    }


def answer_request(
    request: Any, token: str | None, slow: bool, progress: Progress | None = None
) -> dict[str, Any]:
    """Compute (or find cached) the request's methods; the answer carries their URLs, any
    extras the page draws (occlusion's table), or the error to show under the images."""
    try:
        answer = checked_request(request)
    except UserError as exc:
        return {"error": str(exc)}
    methods = [m for m in request["methods"] if m in EXPLAINERS and EXPLAINERS[m].slow == slow]
    if not methods:
        raise PreventUpdate
    answer["methods"] = methods
    try:
        context = by_token(token)
        run = context.catalog.open(answer["run"])
        if answer["layer"] is not None:
            run.layer(answer["layer"])
        sample: Sample = answer["row"]
        if answer["upload"] is not None:
            sample = context.uploads.sample(answer["session"], answer["upload"])
        results = context.service.class_explanations(
            run, sample, answer["cls"], methods, answer["layer"], progress or no_progress
        )
    except UserError as exc:
        return {**answer, "error": str(exc)}
    answer["urls"] = {m: explanation_url(run, answer, m) for m in methods}
    if "occlusion" in results:
        answer["occlusion"] = occlusion_table(results["occlusion"])
    return answer


def explanation_url(run: RunData, answer: dict[str, Any], method: str) -> str:
    layer = answer["layer"] if EXPLAINERS[method].uses_target_layer else None
    if answer["upload"] is None:
        return class_explanation_url(run, answer["cls"], method, answer["row"], layer)
    rest = f"explain/{answer['cls']}/{method}.png" + (f"?layer={quote(layer)}" if layer else "")
    return upload_url(run, answer["session"], answer["upload"], rest)


def occlusion_table(maps: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Occlusion's probabilities for the page: the class probability of the intact image and
    the patches whose hiding lowers it most, as {"probability", "grid": [rows, cols],
    "patches": [[row, col, probability], ...]}; None when the method gave no extras."""
    if "occluded_probability" not in maps or "probability" not in maps:
        return None
    grid = np.asarray(maps["occluded_probability"], dtype=np.float64)
    order = np.argsort(grid, axis=None, kind="stable")[:OCCLUSION_ROWS]
    patches = [
        [int(r), int(c), round(float(grid[r, c]), 4)]
        for r, c in zip(*np.unravel_index(order, grid.shape), strict=True)
    ]
    return {
        "probability": round(float(maps["probability"]), 4),
        "grid": list(grid.shape),
        "patches": patches,
        "curve": [round(float(p), 4) for p in np.sort(grid, axis=None)],
    }


def timed_out(what: str) -> Callable[..., dict[str, Any]]:
    def answer(seconds: float, request: Any, _token: Any) -> dict[str, Any]:
        try:
            started = checked_request(request)
        except UserError as exc:
            return {"error": str(exc)}
        return {
            **started,
            "error": f"Computing {what} took longer than {seconds:g} s; pick the class again to retry.",
        }

    return answer


@callback(
    Output(ids.INSPECTOR_CLASS, "data"),
    Input(ids.EXPLAIN_REQUEST_QUICK, "data"),
    State(ids.APP_TOKEN, "data"),
    running=[(Output(ids.INSPECTOR_EXPLAIN_STATUS, "children"), "computing explanations…", "")],
    prevent_initial_call=True,
)
def explain_quick(request: Any, token: str | None) -> dict[str, Any]:
    """The request's quick methods (one backward pass or so each), computed together, in the
    request itself: a background job would add a poll round trip (at least its interval,
    200 ms) to an answer that takes milliseconds on smallcnn and under a second on VGG16, and
    under load the polls queued behind each other (issue 14 measured p95 35 s with 20 users)."""
    return answer_request(request, token, slow=False)


@callback(
    Output(ids.EXPLAIN_SLOW, "data"),
    Input(ids.EXPLAIN_REQUEST_SLOW, "data"),
    State(ids.APP_TOKEN, "data"),
    background=True,
    interval=300,
    progress=[Output(ids.EXPLAIN_PROGRESS, "value"), Output(ids.EXPLAIN_PROGRESS, "label")],
    progress_default=[0, ""],
    cancel=[Input(ids.EXPLAIN_CANCEL, "n_clicks")],
    prevent_initial_call=True,
)
@slow_job
@on_timeout(timed_out("the slow explanations"))
def explain_slow(
    set_progress: Callable[[Any], None], request: Any, token: str | None
) -> dict[str, Any]:
    """The request's slow methods, one after another, with a progress bar; the cancel button
    (or a newer request) stops them between passes."""
    methods = [m for m in (request or {}).get("methods") or [] if m in EXPLAINERS]
    step = {"index": 0}

    def progress(done: int, total: int) -> None:
        name = methods[min(step["index"], len(methods) - 1)] if methods else ""
        share = (step["index"] + done / max(total, 1)) / max(len(methods), 1)
        title = EXPLAINERS[name].title if name else ""
        set_progress((round(100 * share), f"{title} {done}/{total}"))
        if done >= total:
            step["index"] += 1

    return answer_request(request, token, slow=True, progress=progress)


clientside_callback(
    "explainRequest",
    Input(ids.EXPLAIN_CLASS, "value"),
    Input(ids.INSPECTOR_CLASS_REQUEST, "data"),
    Input(ids.EXPLAIN_METHODS, "value"),
    Input(ids.EXPLAIN_USE_SELECTED_LAYER, "value"),
    Input(ids.SELECTION, "data"),
    Input(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.UPLOADS, "data"),
    State(ids.INSPECTOR_TABLE, "data"),
    State(ids.INSPECTOR_SHOWN, "data"),
    State(ids.UPLOAD_SESSION, "data"),
    State(ids.EXPLAIN_CANCEL, "n_clicks"),
    outputs={
        "quick": Output(ids.EXPLAIN_REQUEST_QUICK, "data"),
        "slow": Output(ids.EXPLAIN_REQUEST_SLOW, "data"),
        "layerNote": Output(ids.EXPLAIN_LAYER, "children"),
    },
)

# The jobs' answers reach the inspector through set_props, not as a callback output: dash holds
# back every callback with an input that a running callback will write, so with the answers as
# renderInspector's inputs, hovering froze for as long as a slow method ran.
clientside_callback(
    "deliverAnswers",
    Output(ids.EXPLAIN_ANSWERS_SINK, "data"),
    Input(ids.INSPECTOR_CLASS, "data"),
    Input(ids.EXPLAIN_SLOW, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "pickClass",
    Output(ids.EXPLAIN_CLASS, "value", allow_duplicate=True),
    Input(ids.EXPLAIN_PREDICTED, "n_clicks"),
    Input(ids.EXPLAIN_TRUE, "n_clicks"),
    State(ids.INSPECTOR_TABLE, "data"),
    State(ids.INSPECTOR_SHOWN, "data"),
    prevent_initial_call=True,
)
