"""The user's own images: dropped (or chosen) under the map, each run through the run's model
and listed with its prediction; clicking one shows it in the inspector (image, top-10, every
method) and the activation grid, and it is marked in every layer's map (``UPLOAD_POINTS``,
placed by ``pipelines/placement.py`` with the embedding the map was made with).

Uploads are kept per browser session (``dashboard/uploads.py``), never in a run; the session is
a random token the page keeps in the tab's session storage.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import ALL, Input, Output, State, ctx, dcc, html

from dashboard import ids
from dashboard.context import current
from dashboard.data import RunData
from dashboard.panels.embedding import view_key_text
from dashboard.registry import callback, clientside_callback
from dashboard.routes import upload_url
from dashboard.uploads import MAX_BYTES, MAX_PER_SESSION, Upload, check_session
from pipelines.errors import UserError

TOP_K = 10


def layout() -> dbc.Card:
    header = html.Div(
        [
            html.Span("Your images", className="ls-card-title me-3"),
            html.Span(
                "placed in every layer's map as stars · click one to inspect it",
                className="ls-hint",
            ),
        ],
        className="d-flex align-items-baseline flex-wrap",
    )
    body = html.Div(
        [
            dcc.Upload(
                id=ids.UPLOAD_DROP,
                children=html.Div(
                    ["Drop your own images here, or ", html.A("choose files", className="ls-link")]
                ),
                multiple=True,
                accept="image/*",
                max_size=MAX_BYTES,
                className="ls-drop",
            ),
            html.Div(id=ids.UPLOAD_LIST, className="ls-uploads"),
            html.Div(id=ids.UPLOAD_MESSAGE, className="ls-hint"),
            html.Div(id=ids.UPLOAD_PLACEMENT_NOTE, className="ls-hint text-warning"),
            dcc.Store(id=ids.UPLOAD_SESSION, storage_type="session"),
            dcc.Store(id=ids.UPLOADS),
            dcc.Store(id=ids.UPLOAD_POINTS),
            dcc.Store(id=ids.UPLOAD_VIEW),
        ],
        className="ls-upload-area",
    )
    return dbc.Card(
        [dbc.CardHeader(header), dbc.CardBody(body, className="p-2")],
        id=ids.UPLOAD_CARD,
        className="ls-card mb-3",
    )


def predicted_row(run: RunData, session: str, upload: Upload) -> dict[str, Any]:
    """What the inspector shows of one upload: its name, image URL and top-10 (from the pass
    that also places it in the maps)."""
    context = current()
    probabilities = context.service.probabilities(run, context.uploads.sample(session, upload.id))
    k = min(TOP_K, probabilities.shape[0])
    top = np.argsort(-probabilities, kind="stable")[:k]
    return {
        "id": upload.id,
        "name": upload.name,
        "thumb": upload_url(run, session, upload.id, "thumb.png"),
        "top_idx": [int(i) for i in top],
        "top_prob": [round(float(probabilities[i]), 6) for i in top],
        "pred": int(top[0]),
    }


def upload_button(row: dict[str, Any], class_names: list[str]) -> html.Button:
    predicted = class_names[row["pred"]] if row["pred"] < len(class_names) else row["pred"]
    return html.Button(
        [
            html.Img(src=row["thumb"], alt=row["name"], className="ls-upload-thumb"),
            html.Span(f"{row['name']} → {predicted}", className="ls-upload-name"),
        ],
        id={"type": ids.UPLOAD_PICK_TYPE, "id": row["id"]},
        className="ls-upload",
        title=f"{row['name']}: predicted {predicted} ({100 * row['top_prob'][0]:.1f}%)\nclick: inspect it",
        n_clicks=0,
    )


@callback(
    Output(ids.UPLOADS, "data"),
    Output(ids.UPLOAD_LIST, "children"),
    Output(ids.UPLOAD_MESSAGE, "children"),
    Input(ids.UPLOAD_DROP, "contents"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.UPLOAD_SESSION, "data"),
    State(ids.UPLOAD_DROP, "filename"),
)
def receive_uploads(
    contents: list[str] | str | None, run_id: str | None, session: str | None, names: Any
) -> tuple:
    """Keep the dropped files (each checked on its own: one bad file does not lose the others)
    and list every upload of this session with the run's prediction for it."""
    try:
        session = check_session(session)
    except UserError:
        return None, [], ""
    context = current()
    problems = []
    if ctx.triggered_id == ids.UPLOAD_DROP and contents:
        files = contents if isinstance(contents, list) else [contents]
        file_names = names if isinstance(names, list) else [names] * len(files)
        for content, name in zip(files, file_names, strict=False):
            try:
                context.uploads.add(session, str(name or "image"), str(content))
            except UserError as exc:
                problems.append(f"{name}: {exc}")
    uploads = context.uploads.list(session)
    if not uploads or not run_id:
        return [], [], " · ".join(problems)
    try:
        run = context.catalog.open(run_id)
        rows = [predicted_row(run, session, upload) for upload in uploads]
    except UserError as exc:
        return [], [], str(exc)
    note = f"{len(rows)} of at most {MAX_PER_SESSION} images · click one to inspect it"
    buttons = [upload_button(row, run.model_class_names) for row in rows]
    return rows, buttons, " · ".join([*problems, note])


# The view reaches the server only while there are uploads: a layer switch otherwise makes no
# request of its own here.
clientside_callback(
    "uploadsView",
    Output(ids.UPLOAD_VIEW, "data"),
    Input(ids.VIEW_KEY, "data"),
    Input(ids.UPLOADS, "data"),
)


@callback(
    Output(ids.UPLOAD_POINTS, "data"),
    Input(ids.UPLOAD_VIEW, "data"),
    State(ids.UPLOADS, "data"),
    State(ids.UPLOAD_SESSION, "data"),
    prevent_initial_call=True,
)
def place_uploads(view: dict[str, Any] | None, uploads: Any, session: str | None) -> Any:
    """Where each upload falls in the map on screen, placed with that map's own embedding."""
    if not view or not view.get("run") or not uploads:
        return None
    try:
        session = check_session(session)
        context = current()
        run = context.catalog.open(view["run"])
        samples = [context.uploads.sample(session, str(row["id"])) for row in uploads]
        coords = context.service.placements(run, samples, view)
    except UserError as exc:
        return {"view": view, "key": view_key_text(view), "error": str(exc), "points": []}
    points = [
        {"id": row["id"], "name": row["name"], "x": float(x), "y": float(y)}
        for row, (x, y) in zip(uploads, coords, strict=True)
    ]
    return {"view": view, "key": view_key_text(view), "points": points}


clientside_callback(
    "ensureUploadSession",
    Output(ids.UPLOAD_SESSION, "data"),
    Input(ids.APP_TOKEN, "data"),
    State(ids.UPLOAD_SESSION, "data"),
)

clientside_callback(
    "pickUpload",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input({"type": ids.UPLOAD_PICK_TYPE, "id": ALL}, "n_clicks"),
    prevent_initial_call=True,
)

clientside_callback(
    "drawUploads",
    Output(ids.UPLOAD_PLACEMENT_NOTE, "children"),
    Input(ids.UPLOAD_POINTS, "data"),
)
