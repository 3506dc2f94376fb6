"""Workbench, right half: the one shared selection, its gallery, relabelling and downloads.

The selection is a short spec (``pipelines.selection``: ``true=3;pred=5``, ``rows=1-9``,
``issues`` …) kept in the page's selection store as ``sel``, mirrored into the URL as ``?sel=``,
and resolved to sample rows here, on the server, by the same code ``main.py export
--selection`` uses. The rows go to the browser once per change (``SELECTION_ROWS``): the map
dims everything else (assets/embedding.js), the gallery pages through them (assets/gallery.js,
thumbnails by URL, lazy-loaded), and downloads export them.

Corrections are written beside the run (``pipelines.annotations.CorrectionLog``, append-only);
the run's artifacts never change.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, Patch, State, ctx, dcc, html, no_update

from components.packing import pack_ints
from dashboard import ids
from dashboard.context import current
from dashboard.data import RunCatalog, RunData
from dashboard.registry import callback, clientside_callback, publish
from pipelines.errors import UserError
from pipelines.metrics import HELD_OUT, TRAIN
from pipelines.quality import DEFAULT_DUPLICATE_THRESHOLD

PAGE_SIZE = 200
SORT_OPTIONS = [
    {"label": "sample order", "value": "row"},
    {"label": "loss, highest first", "value": "loss"},
    {"label": "label-issue score, highest first", "value": "label_issue_score"},
    {"label": "duplicate score, highest first", "value": "duplicate_score"},
    {"label": "outlier score, highest first", "value": "outlier_score"},
]
SORT_COLUMNS = {o["value"] for o in SORT_OPTIONS} - {"row"}
ANY = "any"
publish("gallery", {"pageSize": PAGE_SIZE})


def _labelled(label: str, control: Any, width: str = "") -> html.Div:
    return html.Div(
        [dbc.Label(label, className="ls-label mb-0"), control], className=f"ls-filter {width}"
    )


def filters() -> html.Div:
    return html.Div(
        [
            _labelled(
                "true class",
                dcc.Dropdown(
                    id=ids.FILTER_TRUE, options=[], placeholder="any", className="ls-dropdown"
                ),
            ),
            _labelled(
                "predicted",
                dcc.Dropdown(
                    id=ids.FILTER_PRED, options=[], placeholder="any", className="ls-dropdown"
                ),
            ),
            _labelled(
                "prediction",
                dbc.Select(
                    id=ids.FILTER_CORRECT,
                    options=[
                        {"label": "any", "value": ANY},
                        {"label": "correct", "value": "correct"},
                        {"label": "wrong", "value": "wrong"},
                    ],
                    value=ANY,
                    size="sm",
                ),
            ),
            _labelled(
                "split",
                dbc.Select(
                    id=ids.FILTER_SPLIT,
                    options=[
                        {"label": "any", "value": ANY},
                        {"label": "held-out", "value": HELD_OUT},
                        {"label": "train", "value": TRAIN},
                    ],
                    value=ANY,
                    size="sm",
                ),
            ),
            _labelled(
                "loss ≥",
                dbc.Input(
                    id=ids.FILTER_LOSS,
                    type="number",
                    min=0,
                    step=0.1,
                    size="sm",
                    debounce=True,
                    placeholder="any",
                ),
            ),
        ],
        className="d-flex flex-wrap gap-2 mb-2 align-items-end",
    )


def relabel_bar() -> html.Div:
    return html.Div(
        [
            html.Span("Relabel:", className="ls-label me-1"),
            dcc.Dropdown(
                id=ids.RELABEL_CLASS,
                options=[],
                placeholder="new label…",
                className="ls-dropdown ls-relabel-class",
            ),
            dbc.Button(
                "pinned sample", id=ids.RELABEL_PINNED, size="sm", color="primary", outline=True
            ),
            dbc.Button(
                "whole selection",
                id=ids.RELABEL_SELECTION,
                size="sm",
                color="primary",
                outline=True,
            ),
            dbc.Button(
                "accept suggestions",
                id=ids.RELABEL_ACCEPT,
                size="sm",
                color="warning",
                outline=True,
                title="set each flagged sample of the selection to cleanlab's suggested label",
            ),
            dbc.Button(
                "clear (pinned)", id=ids.RELABEL_CLEAR, size="sm", color="secondary", outline=True
            ),
            dbc.Button("undo", id=ids.RELABEL_UNDO, size="sm", color="secondary", outline=True),
            html.Span(id=ids.RELABEL_STATUS, className="ls-status ms-2"),
        ],
        className="d-flex flex-wrap gap-2 align-items-center mb-2",
    )


def downloads() -> html.Div:
    def button(label: str, component_id: str) -> dbc.Button:
        return dbc.Button(label, id=component_id, size="sm", color="light", outline=True)

    return html.Div(
        [
            html.Span("Download:", className="ls-label me-1"),
            button("selection CSV", ids.EXPORT_SELECTION_CSV),
            button("selection Parquet", ids.EXPORT_SELECTION_PARQUET),
            button("corrected labels", ids.EXPORT_CORRECTIONS),
            button("per-class metrics", ids.EXPORT_METRICS),
            button("confusion matrix", ids.EXPORT_CONFUSION),
            dcc.Download(id=ids.EXPORT_DOWNLOAD),
        ],
        className="d-flex flex-wrap gap-2 align-items-center",
    )


def layout() -> dbc.Card:
    header = html.Div(
        [
            html.Span("Selection", className="ls-card-title me-2"),
            html.Span(id=ids.SELECTION_TEXT, className="ls-selection-text me-auto"),
            dbc.Button("clear", id=ids.SELECTION_CLEAR, size="sm", color="secondary", outline=True),
        ],
        className="d-flex align-items-center gap-2",
    )
    saved = html.Div(
        [
            dbc.Input(
                id=ids.SELECTION_NAME,
                placeholder="name this selection",
                size="sm",
                maxLength=40,
                className="ls-selection-name",
            ),
            dbc.Button("save", id=ids.SELECTION_SAVE, size="sm", color="light", outline=True),
            dcc.Dropdown(
                id=ids.SELECTION_SAVED,
                options=[],
                placeholder="saved selections",
                className="ls-dropdown ls-saved",
            ),
            html.Span(id=ids.SELECTION_MESSAGE, className="ls-status"),
        ],
        className="d-flex flex-wrap gap-2 align-items-center mb-2",
    )
    gallery_bar = html.Div(
        [
            dbc.Select(
                id=ids.GALLERY_SORT,
                options=SORT_OPTIONS,
                value="row",
                size="sm",
                className="ls-gallery-sort",
            ),
            dbc.Button(
                "‹ prev",
                id=ids.GALLERY_PREV,
                size="sm",
                color="secondary",
                outline=True,
                disabled=True,
            ),
            html.Span(id=ids.GALLERY_PAGE_TEXT, className="ls-hint"),
            dbc.Button(
                "next ›",
                id=ids.GALLERY_NEXT,
                size="sm",
                color="secondary",
                outline=True,
                disabled=True,
            ),
        ],
        className="d-flex flex-wrap gap-2 align-items-center mb-2",
    )
    return dbc.Card(
        [
            dbc.CardHeader(header),
            dbc.CardBody(
                [
                    filters(),
                    saved,
                    gallery_bar,
                    # Filled by assets/gallery.js only: Dash never renders children into it.
                    html.Div(id=ids.GALLERY, className="ls-gallery"),
                    relabel_bar(),
                    downloads(),
                    dcc.Store(id=ids.SELECTION_ROWS),
                    dcc.Store(id=ids.GALLERY_PAGE, data=0),
                    dcc.Store(id=ids.GALLERY_HOVER),
                    dcc.Store(id=ids.GALLERY_PIN),
                    dcc.Store(id=ids.CORRECTIONS),
                ],
                className="p-2",
            ),
        ],
        id=ids.GALLERY_CARD,
        className="ls-card mb-3",
    )


# ---- the selection's rows -----------------------------------------------------------------------


def sorted_rows(frame: Any, rows: np.ndarray, sort: str) -> np.ndarray:
    """``rows`` in gallery order: by ``sort`` (a frame column) highest first, NaN last, ties by
    row; "row" keeps sample order."""
    if sort not in SORT_COLUMNS or not len(rows):
        return rows
    values = frame[sort].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
    order = np.lexsort((rows, np.isnan(values), -np.nan_to_num(values, nan=0.0)))
    return rows[order]


def threshold_of(value: Any) -> float:
    """The similarity slider's value (None before it renders: the stage's default)."""
    return float(value or DEFAULT_DUPLICATE_THRESHOLD)


def selected(run: RunData, sel: str, threshold: float) -> tuple[Any, Any, np.ndarray]:
    """(selection, the run's sample frame, its rows): the one way every callback here, like
    ``main.py export``, turns a spec into rows."""
    from pipelines.selection import parse_selection, resolve

    selection = parse_selection(sel)
    frame = run.frame(threshold)
    return selection, frame, resolve(selection, frame)


def rows_payload(run: RunData, sel: str, sort: str, threshold: float) -> dict[str, Any]:
    """The selection resolved for the page: rows in gallery order, and per row the marks the
    gallery draws (label issue, suggested and corrected label, the sort value). The per-row
    integers travel packed (``components.packing``, read by ``ls.selectionRows``): for every
    sample of a 60,000-sample run they were 810 kB of JSON and 45 ms of the server's time."""
    selection, frame, rows = selected(run, sel, threshold)
    rows = sorted_rows(frame, rows, sort)
    issue = frame["is_label_issue"].to_numpy(dtype=np.float64, na_value=0.0)[rows] > 0
    names = run.class_names

    def class_index(column: str) -> dict[str, Any]:
        values = frame[column].to_numpy(dtype=object)[rows]
        lookup = {name: i for i, name in enumerate(names)}
        return pack_ints(
            np.array([lookup.get(v, -1) if isinstance(v, str) else -1 for v in values], np.int64)
        )

    payload: dict[str, Any] = {
        "run": run.run_id,
        "sel": selection.to_text(),
        "all": not selection.to_text(),
        "rows": pack_ints(rows),
        "count": len(rows),
        "total": run.num_samples,
        "description": selection.describe(names),
        "issue": pack_ints(issue.astype(np.int64)),
        "suggested": class_index("suggested_label"),
        "corrected": class_index("corrected_label"),
        "classNames": list(names),
    }
    if sort in SORT_COLUMNS:
        values = frame[sort].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
        payload["sortName"] = sort.replace("_", " ")
        payload["sortValue"] = [None if np.isnan(v) else round(float(v), 3) for v in values]
    return payload


# The selection's rows come from a route (``selection_answer``, registered in
# dashboard/routes.py) rather than a server callback, like the map's data (``VIEW_URL`` in
# embedding.py): a click that makes a selection starts that request itself
# (``ls.prefetchSelection``, assets/gallery.js), before Dash has passed the new spec through the
# selection stores to ``resolveSelection``.
SELECTION_URL = "/selections/rows"
publish("selectionUrl", SELECTION_URL)

clientside_callback(
    "resolveSelection",
    Input(ids.SEL_KEY, "data"),
    Input(ids.RUN_SAMPLES_VERSION, "data"),
    Input(ids.CORRECTIONS, "data"),
    Input(ids.GALLERY_SORT, "value"),
    State(ids.QUALITY_THRESHOLD, "value"),
    outputs={
        "rows": Output(ids.SELECTION_ROWS, "data"),
        "text": Output(ids.SELECTION_TEXT, "children"),
    },
)


def selection_answer(
    catalog: RunCatalog, key: dict[str, Any] | None, sort: str | None, threshold: float | None
) -> dict[str, Any]:
    """``SELECTION_URL``'s answer: the selection's rows payload and the line above the gallery
    (what the user can fix, in the line, when the spec or the run is wrong)."""
    if not key or not key.get("run"):
        return {"rows": None, "text": ""}
    try:
        run = catalog.open(key["run"])
        payload = rows_payload(run, key.get("sel") or "", sort or "row", threshold_of(threshold))
    except UserError as exc:
        return {
            "rows": {"run": key["run"], "error": str(exc), "rows": [], "count": 0, "all": True},
            "text": html.Span(str(exc), className="text-warning"),
        }
    text = f"{payload['description']} — {payload['count']:,} of {payload['total']:,} samples"
    return {"rows": payload, "text": text}


def resolve_selection(
    key: dict[str, Any] | None,
    _version: Any,
    _corrections: Any,
    sort: str | None,
    threshold: float | None,
) -> tuple:
    """``selection_answer`` with the inputs ``resolveSelection`` has, as (rows, text)."""
    answer = selection_answer(current().catalog, key, sort, threshold)
    return answer["rows"], answer["text"]


# ---- editing the selection -----------------------------------------------------------------------


def class_options(run: RunData) -> list[dict[str, Any]]:
    return [{"label": f"{i}: {name}", "value": i} for i, name in enumerate(run.class_names)]


@callback(
    Output(ids.RELABEL_CLASS, "options"),
    Output(ids.SELECTION_SAVED, "options"),
    Output(ids.CORRECTIONS, "data"),
    Input(ids.RUN_KEY, "data"),
)
def run_menus(run_id: str | None) -> tuple:
    """Per-run menus: classes for relabelling, the run's saved selections."""
    if not run_id:
        return [], [], None
    try:
        run = current().catalog.open(run_id)
    except UserError:
        return [], [], None
    return class_options(run), saved_options(run), corrections_state(run)


def saved_options(run: RunData) -> list[dict[str, str]]:
    return [
        {"label": name, "value": spec}
        for name, spec in sorted(run.saved_selections().all().items())
    ]


def corrections_state(run: RunData) -> dict[str, Any]:
    # The stamp makes every write a change the gallery and the selection see, even an undo
    # that leaves the count as it was.
    return {"run": run.run_id, "count": run.corrections().count(), "stamp": time.time()}


@callback(
    Output(ids.FILTER_TRUE, "options"),
    Output(ids.FILTER_PRED, "options"),
    Output(ids.FILTER_TRUE, "value"),
    Output(ids.FILTER_PRED, "value"),
    Output(ids.FILTER_CORRECT, "value"),
    Output(ids.FILTER_SPLIT, "value"),
    Output(ids.FILTER_LOSS, "value"),
    Input(ids.SEL_KEY, "data"),
    State(ids.FILTER_TRUE, "options"),
    State(ids.FILTER_TRUE, "value"),
    State(ids.FILTER_PRED, "value"),
    State(ids.FILTER_CORRECT, "value"),
    State(ids.FILTER_SPLIT, "value"),
    State(ids.FILTER_LOSS, "value"),
)
def filters_from_selection(
    key: dict[str, Any] | None, shown_options: list[dict[str, Any]] | None, *shown: Any
) -> tuple:
    """The filter controls show the filter terms of the selection, however it was made (a
    confusion cell sets "true class" and "predicted"). The class menus come in the same answer
    as their values: a menu given a value before its options drops the value, and that change
    would then drop the term from the selection."""
    from pipelines.selection import parse_selection

    key = key or {}
    try:
        selection = parse_selection(key.get("sel") or "")
        run = current().catalog.open(key.get("run"))
    except UserError:
        return (no_update,) * 7
    classes = class_options(run)
    predicted = [*classes, {"label": "other (not a dataset class)", "value": "other"}]
    menus = (no_update, no_update) if classes == (shown_options or []) else (classes, predicted)
    values = filter_values(selection)
    return (
        *menus,
        *(no_update if new == old else new for new, old in zip(values, shown, strict=True)),
    )


def filter_values(selection: Any) -> tuple:
    from pipelines.sample_table import OTHER

    correct = ANY if selection.correct is None else ("correct" if selection.correct else "wrong")
    return (
        selection.true,
        "other" if selection.pred == OTHER else selection.pred,
        correct,
        selection.split or ANY,
        selection.loss_min,
    )


@callback(
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.FILTER_TRUE, "value"),
    Input(ids.FILTER_PRED, "value"),
    Input(ids.FILTER_CORRECT, "value"),
    Input(ids.FILTER_SPLIT, "value"),
    Input(ids.FILTER_LOSS, "value"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)
def filters_to_selection(
    true: int | None,
    pred: int | str | None,
    correct: str | None,
    split: str | None,
    loss: Any,
    selection: dict[str, Any] | None,
) -> Any:
    """A filter the user changed replaces that term of the selection; other terms stay."""
    from pipelines.sample_table import OTHER
    from pipelines.selection import parse_selection

    current_text = (selection or {}).get("sel") or ""
    try:
        chosen = parse_selection(current_text)
    except UserError:
        chosen = parse_selection("")
    try:
        loss_min = None if loss in (None, "") else float(loss)
    except (TypeError, ValueError):
        loss_min = None
    if loss_min is not None and not (math.isfinite(loss_min) and loss_min >= 0):
        loss_min = None
    updated = dataclasses.replace(
        chosen,
        true=None if true is None else int(true),
        pred=None if pred is None else (OTHER if pred == "other" else int(pred)),
        correct=None if correct in (None, ANY) else correct == "correct",
        split=None if split in (None, ANY) else split,
        loss_min=loss_min,
    )
    text = updated.to_text()
    if text == current_text:
        return no_update
    patch = Patch()
    patch["sel"] = text
    return patch


@callback(
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.QUALITY_THRESHOLD, "value"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)
def threshold_to_selection(threshold: float | None, selection: dict[str, Any] | None) -> Any:
    """Moving the similarity slider while near-duplicates are selected re-selects at the new
    threshold."""
    from pipelines.selection import parse_selection

    current_text = (selection or {}).get("sel") or ""
    try:
        chosen = parse_selection(current_text)
    except UserError:
        return no_update
    if chosen.dup_min is None or threshold is None:
        return no_update
    text = dataclasses.replace(chosen, dup_min=float(threshold)).to_text()
    if text == current_text:
        return no_update
    patch = Patch()
    patch["sel"] = text
    return patch


@callback(
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.SELECTION_SAVED, "value"),
    prevent_initial_call=True,
)
def load_saved(spec: str | None) -> Any:
    if spec is None:
        return no_update
    patch = Patch()
    patch["sel"] = spec
    return patch


@callback(
    Output(ids.SELECTION_SAVED, "options", allow_duplicate=True),
    Output(ids.SELECTION_MESSAGE, "children"),
    Input(ids.SELECTION_SAVE, "n_clicks"),
    State(ids.SELECTION_NAME, "value"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)
def save_selection(_n: int | None, name: str | None, selection: dict[str, Any] | None) -> tuple:
    selection = selection or {}
    try:
        run = current().catalog.open(selection.get("run"))
        run.saved_selections().save(name or "", selection.get("sel") or "")
    except UserError as exc:
        return no_update, html.Span(str(exc), className="text-warning")
    return saved_options(run), f"saved as '{name}' (main.py export --selection {name})"


clientside_callback(
    "lassoToSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.EMBEDDING_GRAPH, "selectedData"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "clearSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.SELECTION_CLEAR, "n_clicks"),
    prevent_initial_call=True,
)

clientside_callback(
    "renderGallery",
    Input(ids.SELECTION_ROWS, "data"),
    Input(ids.GALLERY_PAGE, "data"),
    Input(ids.INSPECTOR_TABLE, "data"),
    Input(ids.INSPECTOR_RUN_INFO, "data"),
    Input(ids.SELECTION, "data"),
    outputs={
        "pageText": Output(ids.GALLERY_PAGE_TEXT, "children"),
        "prevDisabled": Output(ids.GALLERY_PREV, "disabled"),
        "nextDisabled": Output(ids.GALLERY_NEXT, "disabled"),
    },
)

clientside_callback(
    "pinFromGallery",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.GALLERY_PIN, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "galleryPage",
    Output(ids.GALLERY_PAGE, "data"),
    Input(ids.GALLERY_PREV, "n_clicks"),
    Input(ids.GALLERY_NEXT, "n_clicks"),
    Input(ids.SELECTION_ROWS, "data"),
    State(ids.GALLERY_PAGE, "data"),
    prevent_initial_call=True,
)


# ---- relabelling ------------------------------------------------------------------------------


def relabel(
    run: RunData, action: str, label: int | None, selection: dict[str, Any], rows: list[int]
) -> str:
    """Apply one relabelling action; returns the status line. Rows come from the server's own
    resolution of the selection (``rows``), the pinned row from the selection store."""
    log = run.corrections()
    uids = run.samples()["uid"]
    pinned = selection.get("pinned")
    if action == ids.RELABEL_UNDO:
        undone = log.undo()
        if undone is None:
            return "nothing to undo"
        what = "cleared" if undone.label is None else f"set to {run.class_names[undone.label]}"
        return f"undone: {len(undone.uids):,} sample(s) {what}"
    if action in (ids.RELABEL_PINNED, ids.RELABEL_CLEAR):
        if not isinstance(pinned, int):
            raise UserError("pin a sample first (click it in the map or the gallery)")
        row = run.check_row(pinned)
        if action == ids.RELABEL_CLEAR:
            log.set_label([uids[row]], None, source="page")
            return f"row {row}: correction cleared"
        if label is None:
            raise UserError("choose the new label first")
        label = run.check_class(label)  # before it is written: a hand-made request may send any
        log.set_label([uids[row]], label, source="page")
        return f"row {row} relabelled as {run.class_names[label]}"
    if not rows:
        raise UserError("the selection is empty")
    if action == ids.RELABEL_SELECTION and not selection.get("sel"):
        # Nothing selected means every sample: one click must not relabel the whole dataset.
        raise UserError(
            "select some samples first (with no selection every sample would be relabelled)"
        )
    if action == ids.RELABEL_SELECTION:
        if label is None:
            raise UserError("choose the new label first")
        label = run.check_class(label)
        log.set_label([uids[r] for r in rows], label, source="page")
        return f"{len(rows):,} samples relabelled as {run.class_names[label]}"
    # Accept cleanlab's suggestion for every flagged sample of the selection.
    quality = run.quality()
    if quality is None:
        raise UserError(
            "this run has no label-issue ranking yet; run its precompute again to add it"
        )
    flagged = [r for r in rows if quality.is_label_issue[r] and quality.suggested_label[r] >= 0]
    if not flagged:
        raise UserError("no flagged label issue in the selection")
    by_label: dict[int, list[str]] = {}
    for r in flagged:
        by_label.setdefault(int(quality.suggested_label[r]), []).append(uids[r])
    for new_label, group in by_label.items():
        log.set_label(group, new_label, source="page: accepted suggestion")
    return f"accepted {len(flagged):,} suggestions"


@callback(
    Output(ids.CORRECTIONS, "data", allow_duplicate=True),
    Output(ids.RELABEL_STATUS, "children"),
    Input(ids.RELABEL_PINNED, "n_clicks"),
    Input(ids.RELABEL_SELECTION, "n_clicks"),
    Input(ids.RELABEL_ACCEPT, "n_clicks"),
    Input(ids.RELABEL_CLEAR, "n_clicks"),
    Input(ids.RELABEL_UNDO, "n_clicks"),
    State(ids.RELABEL_CLASS, "value"),
    State(ids.SELECTION, "data"),
    State(ids.QUALITY_THRESHOLD, "value"),
    prevent_initial_call=True,
)
def relabel_clicked(*args: Any) -> tuple:
    label, selection, threshold = args[-3:]
    selection = selection or {}
    action = ctx.triggered_id
    try:
        run = current().catalog.open(selection.get("run"))
        rows: list[int] = []
        if action in (ids.RELABEL_SELECTION, ids.RELABEL_ACCEPT):
            rows = selected(run, selection.get("sel") or "", threshold_of(threshold))[2].tolist()
        status = relabel(run, str(action), label, selection, rows)
    except UserError as exc:
        return no_update, html.Span(str(exc), className="text-warning")
    state = corrections_state(run)
    return state, f"{status} · {state['count']:,} corrected"


# ---- downloads ------------------------------------------------------------------------------


@callback(
    Output(ids.EXPORT_DOWNLOAD, "data"),
    Output(ids.SELECTION_MESSAGE, "children", allow_duplicate=True),
    Input(ids.EXPORT_SELECTION_CSV, "n_clicks"),
    Input(ids.EXPORT_SELECTION_PARQUET, "n_clicks"),
    Input(ids.EXPORT_CORRECTIONS, "n_clicks"),
    Input(ids.EXPORT_METRICS, "n_clicks"),
    Input(ids.EXPORT_CONFUSION, "n_clicks"),
    State(ids.SELECTION, "data"),
    State(ids.CONFUSION_SPLIT, "value"),
    State(ids.QUALITY_THRESHOLD, "value"),
    prevent_initial_call=True,
)
def download(*args: Any) -> tuple:
    selection, split, threshold = args[-3:]
    selection = selection or {}
    try:
        run = current().catalog.open(selection.get("run"))
        name, data = export_file(
            run,
            str(ctx.triggered_id),
            selection.get("sel") or "",
            split,
            threshold_of(threshold),
        )
    except UserError as exc:
        return no_update, html.Span(str(exc), className="text-warning")
    return dcc.send_bytes(data, name), no_update


def export_file(
    run: RunData, which: str, sel: str, split: str | None, threshold: float
) -> tuple[str, bytes]:
    """(file name, bytes) of one download, rendered by the same functions as ``main.py export``."""
    from dashboard.panels.workbench import run_confusion
    from pipelines import export

    stem = run.run_id
    if which in (ids.EXPORT_SELECTION_CSV, ids.EXPORT_SELECTION_PARQUET):
        _, frame, rows = selected(run, sel, threshold)
        fmt = "csv" if which == ids.EXPORT_SELECTION_CSV else "parquet"
        return f"{stem}-selection.{fmt}", export.export_bytes(frame.iloc[rows], fmt)
    if which == ids.EXPORT_CORRECTIONS:
        return f"{stem}-corrected-labels.csv", export.corrections_csv(run.frame(threshold))
    matrix = run_confusion(run, split or HELD_OUT)
    if which == ids.EXPORT_METRICS:
        return f"{stem}-metrics-{split}.csv", export.metrics_csv(matrix, run.class_names)
    return f"{stem}-confusion-{split}.csv", export.confusion_csv(matrix, run.class_names)
