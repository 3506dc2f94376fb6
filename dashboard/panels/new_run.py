"""The new-run page (``/new``): pick data and a model, set the training and precompute, start a
job; watch the jobs, a training's curves live, its stages' progress; open the finished run.

The form becomes a ``main.py`` command (``dashboard/new_run.py``) that the job queue runs
(``pipelines/job_queue.py``): the page only submits, lists, cancels and reads what the job
writes into its run (the manifest's stages, the ``training_curves`` record), so a job outlives a
reload or a closed browser, and the page picks it up again from the data dir. Uploads go to the
server's upload routes (``dashboard/upload_routes.py``) from ``assets/new_run.js``, which streams
the file and shows its progress; the page keeps only the spec the server answered.
"""

from __future__ import annotations

import time
from typing import Any

import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from components.theme import message_figure
from components.training_curves import curves_figure
from dashboard import ids
from dashboard.context import current
from dashboard.new_run import (
    DEVICES,
    PRESETS,
    TORCHVISION_CHOICES,
    plan_new_run,
)
from dashboard.registry import callback, clientside_callback, publish
from pipelines import job_queue
from pipelines.allowed_folders import list_allowed_folders
from pipelines.datasets import BUILTIN_DATASETS
from pipelines.errors import UserError
from pipelines.job_queue import JobRecord
from pipelines.records import Manifest
from pipelines.run_config import dataset_name
from pipelines.store import RunStore, runs_dir
from pipelines.training import TrainingCurves, default_settings

NEW_PATH = "/new"  # the page's URL; the explorer is at "/"
publish("newPath", NEW_PATH)
POLL_MS = 1000
JOBS_SHOWN = 12
LOG_LINES = 6
STATE_COLORS = {
    "queued": "secondary",
    "running": "info",
    "done": "success",
    "failed": "danger",
    "cancelled": "warning",
}
CURVES_HEIGHT = 460
NEW_PAGE_CLASS = "ls-new-page dataset-builtin model-preset"


def field(label: str, control: Any, hint: str | None = None) -> dbc.Col:
    return dbc.Col(
        [
            dbc.Label(label, className="ls-label mb-0"),
            control,
            html.Small(hint, className="ls-hint") if hint else None,
        ],
        md=6,
        lg=4,
        className="mb-2",
    )


def number_input(component_id: str, value: Any, step: Any = "any", minimum: Any = None) -> Any:
    return dbc.Input(id=component_id, type="number", value=value, step=step, min=minimum, size="sm")


def upload_box(
    component_id: str, accept: str, route: str, status_id: str, hint: str, source: str
) -> html.Div:
    """The form's part for one upload: a button that opens the browser's file chooser (
    ``assets/new_run.js`` posts the chosen file to ``route`` at once: Dash has no file input, and
    ``dcc.Upload`` would carry the whole file as base64 through a callback), the upload's status
    line, and what the file must be."""
    return source_box(
        [
            html.Button(
                f"Choose a {accept.split(',')[0]} file…",
                id=component_id,
                className="btn btn-outline-secondary btn-sm",
                **upload_attributes(route, accept),
            ),
            html.Div(id=status_id, className="ls-hint mt-1"),
            html.Small(hint, className="ls-hint"),
        ],
        source,
    )


def upload_attributes(route: str, accept: str) -> dict[str, Any]:
    """The ``data-`` attributes ``assets/new_run.js`` reads off an upload button."""
    return {"data-upload": route, "data-accept": accept}


def source_box(children: Any, source: str) -> html.Div:
    """A part of the form shown only for one choice of a source (``showSources``)."""
    return html.Div(children, className=f"ls-source ls-source-{source} mt-1")


def data_section() -> html.Div:
    return html.Div(
        [
            html.H6("1 · Data", className="ls-section"),
            dbc.RadioItems(
                id=ids.NEW_DATASET_SOURCE,
                options=dataset_sources(folders_allowed=False),
                value="builtin",
                inline=True,
            ),
            source_box(
                dbc.Select(
                    id=ids.NEW_DATASET_BUILTIN,
                    options=list(BUILTIN_DATASETS),
                    value="digits",
                    size="sm",
                ),
                "dataset-builtin",
            ),
            source_box(
                dbc.Select(id=ids.NEW_DATASET_FOLDER, options=[], size="sm"),
                "dataset-folder",
            ),
            upload_box(
                ids.NEW_DATASET_FILE,
                ".zip",
                "/upload/dataset",
                ids.NEW_DATASET_STATUS,
                "a .zip of class folders (or train/ and test/ with class folders); split 80/20 "
                "unless it has its own",
                "dataset-upload",
            ),
            dcc.Store(id=ids.NEW_DATASET_UPLOAD),
        ],
        className="mb-3",
    )


def dataset_sources(folders_allowed: bool) -> list[dict[str, Any]]:
    return [
        {"label": "built-in", "value": "builtin"},
        {"label": "server folder", "value": "folder", "disabled": not folders_allowed},
        {"label": "upload a zip", "value": "upload"},
    ]


def model_section() -> html.Div:
    return html.Div(
        [
            html.H6("2 · Model", className="ls-section"),
            dbc.RadioItems(
                id=ids.NEW_MODEL_SOURCE,
                options=[
                    {"label": "preset", "value": "preset"},
                    {"label": "torchvision", "value": "torchvision"},
                    {"label": "upload TorchScript", "value": "upload"},
                ],
                value="preset",
                inline=True,
            ),
            source_box(
                dbc.Select(
                    id=ids.NEW_MODEL_PRESET, options=list(PRESETS), value="smallcnn", size="sm"
                ),
                "model-preset",
            ),
            source_box(
                dbc.Row(
                    [
                        field(
                            "architecture",
                            dbc.Select(
                                id=ids.NEW_MODEL_TORCHVISION,
                                options=list(TORCHVISION_CHOICES),
                                value="resnet18",
                                size="sm",
                            ),
                        ),
                        field(
                            "weights",
                            dbc.Select(
                                id=ids.NEW_MODEL_WEIGHTS,
                                options=["imagenet", "none"],
                                value="imagenet",
                                size="sm",
                            ),
                        ),
                        field(
                            "train",
                            dbc.Select(
                                id=ids.NEW_MODEL_FINE_TUNE,
                                options=[
                                    {"label": "new classifier only", "value": "classifier"},
                                    {"label": "all layers", "value": "all"},
                                    {"label": "no (ImageNet classes)", "value": "none"},
                                ],
                                value="classifier",
                                size="sm",
                            ),
                        ),
                    ]
                ),
                "model-torchvision",
            ),
            upload_box(
                ids.NEW_MODEL_FILE,
                ".pt,.pth,.ts",
                "/upload/model",
                ids.NEW_MODEL_STATUS,
                "a TorchScript file (torch.jit.script or trace, then save); used as it is",
                "model-upload",
            ),
            dcc.Store(id=ids.NEW_MODEL_UPLOAD),
        ],
        className="mb-3",
    )


def training_section() -> html.Div:
    defaults = default_settings("digits", "smallcnn")
    return html.Div(
        [
            html.H6("3 · Training", className="ls-section"),
            dbc.Row(
                [
                    field("epochs", number_input(ids.NEW_EPOCHS, defaults.epochs, 1, 1)),
                    field(
                        "batch size", number_input(ids.NEW_BATCH_SIZE, defaults.batch_size, 1, 1)
                    ),
                    field(
                        "optimizer",
                        dbc.Select(
                            id=ids.NEW_OPTIMIZER,
                            options=[
                                {"label": "Adam", "value": "adam"},
                                {"label": "SGD + momentum", "value": "sgd"},
                            ],
                            value=defaults.optimizer,
                            size="sm",
                        ),
                    ),
                    field("learning rate", number_input(ids.NEW_LR, defaults.lr, "any", 0)),
                    field(
                        "weight decay", number_input(ids.NEW_WEIGHT_DECAY, defaults.weight_decay)
                    ),
                    field("seed", number_input(ids.NEW_SEED, 0, 1, 0)),
                    field(
                        "early stopping",
                        number_input(ids.NEW_EARLY_STOPPING, None, 1, 1),
                        "patience in epochs on held-out loss; empty: off",
                    ),
                    field(
                        "augmentation",
                        dbc.Switch(
                            id=ids.NEW_AUGMENT,
                            value=defaults.augment,
                            label="random shifts (+ flips for photos)",
                        ),
                    ),
                ]
            ),
        ],
        id=ids.NEW_TRAINING,
        className="mb-3",
    )


def precompute_section() -> html.Div:
    return html.Div(
        [
            html.H6("4 · Precompute", className="ls-section"),
            dbc.Row(
                [
                    field(
                        "samples",
                        number_input(ids.NEW_SAMPLES, None, 1, 2),
                        "empty: all (class-balanced order)",
                    ),
                    field(
                        "subsets",
                        dbc.Input(id=ids.NEW_SUBSETS, value="100,1000,all", size="sm"),
                    ),
                    field(
                        "perplexities",
                        dbc.Input(id=ids.NEW_PERPLEXITIES, value="10,30,90", size="sm"),
                    ),
                    field(
                        "device",
                        dbc.Select(
                            id=ids.NEW_DEVICE, options=list(DEVICES), value="auto", size="sm"
                        ),
                    ),
                    field(
                        "run name",
                        dbc.Input(
                            id=ids.NEW_RUN_NAME, placeholder="derived from the settings", size="sm"
                        ),
                    ),
                ]
            ),
        ],
        className="mb-3",
    )


def layout() -> html.Div:
    """The page's shell: hidden, and empty until /new is first opened (``mount``). Every load
    of the explore page skips the form's hundred components and its callbacks' first calls,
    which held the browser's main thread while the page waited for its first map."""
    return html.Div(
        [
            dcc.Interval(id=ids.NEW_POLL, interval=POLL_MS, disabled=True),
            dcc.Store(id=ids.NEW_JOB),
            html.Div(id=ids.NEW_PAGE_BODY),
        ],
        id=ids.NEW_PAGE,
        className=NEW_PAGE_CLASS,
        style={"display": "none"},
    )


def body() -> dbc.Container:
    """The form, the jobs list and the chosen job: what /new shows."""
    form = dbc.Card(
        [
            dbc.CardHeader(html.Span("New run", className="ls-card-title")),
            dbc.CardBody(
                [
                    data_section(),
                    model_section(),
                    training_section(),
                    precompute_section(),
                    dbc.Button("Start", id=ids.NEW_START, color="primary", className="me-2"),
                    html.Div(id=ids.NEW_MESSAGE, className="mt-2"),
                ]
            ),
        ],
        className="ls-card mb-3",
    )
    jobs = dbc.Card(
        [
            dbc.CardHeader(html.Span("Jobs", className="ls-card-title")),
            dbc.CardBody(html.Div(id=ids.NEW_JOBS), className="p-2"),
        ],
        className="ls-card mb-3",
    )
    job = dbc.Card(
        [
            dbc.CardHeader(html.Div(id=ids.NEW_JOB_TITLE, className="ls-card-title")),
            dbc.CardBody(
                [
                    html.Div(id=ids.NEW_JOB_STAGES, className="mb-2"),
                    dcc.Graph(
                        id=ids.NEW_JOB_CURVES,
                        figure=message_figure("Training curves appear here.", CURVES_HEIGHT),
                        config={"displaylogo": False},
                    ),
                    html.Pre(id=ids.NEW_JOB_LOG, className="ls-job-log"),
                    dbc.Button(
                        "Cancel", id=ids.NEW_JOB_CANCEL, color="warning", size="sm", disabled=True
                    ),
                    dbc.Button(
                        "Open run",
                        id=ids.NEW_JOB_OPEN,
                        color="success",
                        size="sm",
                        className="ms-2",
                        href="/",
                        external_link=True,
                        disabled=True,
                    ),
                ]
            ),
        ],
        className="ls-card mb-3",
    )
    return dbc.Container(
        dbc.Row(
            [
                dbc.Col(form, xxl=6, lg=6, md=12, className="ls-col"),
                dbc.Col([jobs, job], xxl=6, lg=6, md=12, className="ls-col"),
            ],
            className="g-3",
        ),
        fluid=True,
    )


# ---- the form -------------------------------------------------------------------------------


clientside_callback(
    "showNewPage",
    Input(ids.URL, "pathname"),
    outputs={
        "explore": Output(ids.EXPLORE_PAGE, "style"),
        "page": Output(ids.NEW_PAGE, "style"),
        "poll": Output(ids.NEW_POLL, "disabled"),
        "link": Output(ids.NEW_LINK, "children"),
        "href": Output(ids.NEW_LINK, "href"),
    },
)


@callback(
    Output(ids.NEW_PAGE_BODY, "children"),
    Input(ids.URL, "pathname"),
    State(ids.NEW_PAGE_BODY, "children"),
)
def mount(path: str | None, mounted: Any) -> Any:
    """The page's body, the first time /new is shown; it then stays (a form half filled in
    survives a visit to the explore page)."""
    if path != NEW_PATH or mounted:
        raise PreventUpdate
    return body()


@callback(
    Output(ids.NEW_DATASET_FOLDER, "options"),
    Output(ids.NEW_DATASET_FOLDER, "placeholder"),
    Output(ids.NEW_DATASET_SOURCE, "options"),
    Input(ids.URL, "pathname"),
)
def folder_choices(_path: str | None) -> tuple:
    """The dataset folders under the server's ``--allow-folder`` roots, listed when the page
    loads (the server folder choice is off when it was started without any)."""
    roots = current().allowed_folders
    folders = list_allowed_folders(roots)
    if folders:
        placeholder = "a folder of class folders under the allowed roots"
    elif roots:
        placeholder = "no dataset folders under the server's --allow-folder roots"
    else:
        placeholder = "start the server with --allow-folder ROOT to pick its folders"
    options = [{"label": folder.label, "value": str(folder.path)} for folder in folders]
    return options, placeholder, dataset_sources(folders_allowed=bool(roots))


# The page's classes say which source boxes show (assets/layerscope.css): pure UI, no server.
clientside_callback(
    "showSources",
    Output(ids.NEW_PAGE, "className"),
    Input(ids.NEW_DATASET_SOURCE, "value"),
    Input(ids.NEW_MODEL_SOURCE, "value"),
    Input(ids.NEW_MODEL_FINE_TUNE, "value"),
)


@callback(
    Output(ids.NEW_EPOCHS, "value"),
    Output(ids.NEW_BATCH_SIZE, "value"),
    Output(ids.NEW_OPTIMIZER, "value"),
    Output(ids.NEW_LR, "value"),
    Output(ids.NEW_WEIGHT_DECAY, "value"),
    Output(ids.NEW_AUGMENT, "value"),
    Input(ids.NEW_DATASET_SOURCE, "value"),
    Input(ids.NEW_DATASET_BUILTIN, "value"),
    Input(ids.NEW_MODEL_SOURCE, "value"),
    Input(ids.NEW_MODEL_PRESET, "value"),
    Input(ids.NEW_MODEL_FINE_TUNE, "value"),
)
def fill_defaults(
    dataset_source: str, builtin: str | None, model_source: str, preset: str | None, _tune: Any
) -> tuple:
    """The training fields' defaults for the chosen data and model (the user edits from there)."""
    dataset = builtin if dataset_source == "builtin" and builtin else "folder"
    if model_source == "torchvision":
        kind = "torchvision"
    else:
        kind = "smallcnn" if preset == "smallcnn" else "preset"
    settings = default_settings(dataset_name(dataset), kind)
    return (
        settings.epochs,
        settings.batch_size,
        settings.optimizer,
        settings.lr,
        settings.weight_decay,
        settings.augment,
    )


FORM_FIELDS = {
    "dataset_source": ids.NEW_DATASET_SOURCE,
    "builtin": ids.NEW_DATASET_BUILTIN,
    "folder": ids.NEW_DATASET_FOLDER,
    "dataset_upload": ids.NEW_DATASET_UPLOAD,
    "model_source": ids.NEW_MODEL_SOURCE,
    "preset": ids.NEW_MODEL_PRESET,
    "torchvision": ids.NEW_MODEL_TORCHVISION,
    "weights": ids.NEW_MODEL_WEIGHTS,
    "fine_tune": ids.NEW_MODEL_FINE_TUNE,
    "model_upload": ids.NEW_MODEL_UPLOAD,
    "epochs": ids.NEW_EPOCHS,
    "batch_size": ids.NEW_BATCH_SIZE,
    "optimizer": ids.NEW_OPTIMIZER,
    "lr": ids.NEW_LR,
    "weight_decay": ids.NEW_WEIGHT_DECAY,
    "augment": ids.NEW_AUGMENT,
    "seed": ids.NEW_SEED,
    "early_stopping": ids.NEW_EARLY_STOPPING,
    "samples": ids.NEW_SAMPLES,
    "subsets": ids.NEW_SUBSETS,
    "perplexities": ids.NEW_PERPLEXITIES,
    "device": ids.NEW_DEVICE,
    "run_name": ids.NEW_RUN_NAME,
}


def form_values(values: dict[str, Any]) -> dict[str, Any]:
    """The page's fields -> ``plan_new_run``'s form: the dataset and model of the chosen source."""
    dataset = {
        "builtin": values["builtin"],
        "folder": values["folder"],
        "upload": (values["dataset_upload"] or {}).get("spec"),
    }.get(values["dataset_source"])
    model = {
        "preset": values["preset"],
        "torchvision": values["torchvision"],
        "upload": (values["model_upload"] or {}).get("spec"),
    }.get(values["model_source"])
    return {**values, "dataset": dataset, "model": model}


@callback(
    Output(ids.NEW_MESSAGE, "children"),
    Output(ids.NEW_JOB, "data", allow_duplicate=True),
    Input(ids.NEW_START, "n_clicks"),
    *[
        State(component, "value" if "upload" not in name else "data")
        for name, component in FORM_FIELDS.items()
    ],
    prevent_initial_call=True,
)
def start(n_clicks: int | None, *values: Any) -> tuple:
    """Check the form and queue its job; the job is then shown in detail."""
    if not n_clicks:
        raise PreventUpdate
    context = current()
    form = form_values(dict(zip(FORM_FIELDS, values, strict=True)))
    try:
        unfinished = [job for job in job_queue.list_jobs(context.data_dir) if not job.finished]
        taken = frozenset(job.run_id for job in unfinished if job.run_id)
        plan = plan_new_run(form, context.data_dir, context.allowed_folders, taken)
        record = job_queue.submit(context.data_dir, plan.argv, plan.title, plan.run_id)
    except UserError as exc:
        return dbc.Alert(str(exc), color="warning", className="ls-alert mb-0"), no_update
    ahead = len(unfinished)  # queued or running before this one
    waiting = f"; {ahead} job(s) ahead of it" if ahead else ""
    return (
        dbc.Alert(
            f"queued as run '{plan.run_id}'{waiting}",
            color="success",
            className="ls-alert mb-0",
        ),
        record.id,
    )


# ---- the jobs --------------------------------------------------------------------------------


def job_row(job: JobRecord, chosen: str | None) -> dbc.ListGroupItem:
    return dbc.ListGroupItem(
        [
            dbc.Badge(job.state, color=STATE_COLORS.get(job.state, "secondary"), className="me-2"),
            html.Span(job.title),
            html.Small(f" · {job.run_id}" if job.run_id else "", className="ls-hint"),
            html.Div(job.error, className="ls-job-error") if job.error else None,
        ],
        id=ids.new_job_item(job.id),
        action=True,
        active=job.id == chosen,
        n_clicks=0,
        className="ls-job-row",
    )


@callback(
    Output(ids.NEW_JOBS, "children"),
    Input(ids.NEW_POLL, "n_intervals"),
    Input(ids.NEW_JOB, "data"),
)
def list_jobs(_tick: int | None, chosen: str | None) -> Any:
    jobs = job_queue.list_jobs(current().data_dir)[:JOBS_SHOWN]
    if not jobs:
        return html.Div("No jobs yet: start one with the form.", className="ls-hint")
    return dbc.ListGroup([job_row(job, chosen) for job in jobs], flush=True)


@callback(
    Output(ids.NEW_JOB, "data"),
    Input(ids.new_job_item(ALL), "n_clicks"),
    prevent_initial_call=True,
)
def choose_job(clicks: list[int | None]) -> str:
    if not ctx.triggered_id or not any(clicks):
        raise PreventUpdate
    return str(ctx.triggered_id["job"])


def stage_badges(record: Manifest) -> list[Any]:
    """One badge per stage: done, its progress ("embeddings 3/14"), or pending."""
    badges = []
    for name, stage in record.stages.items():
        text = name
        if stage.state == "running" and stage.total:
            text += f" {stage.done or 0}/{stage.total}"
        color = {"done": "success", "running": "info"}.get(stage.state, "secondary")
        badges.append(dbc.Badge(text, color=color, className="me-1"))
    return badges


def curves_of(store: RunStore) -> TrainingCurves | None:
    if not store.has("training_curves"):
        return None
    try:
        return TrainingCurves.from_json(store.load_json("training_curves"))
    except (UserError, ValueError, KeyError, TypeError):
        return None  # a record this version cannot read: the page goes on without curves


@callback(
    Output(ids.NEW_JOB_TITLE, "children"),
    Output(ids.NEW_JOB_STAGES, "children"),
    Output(ids.NEW_JOB_CURVES, "figure"),
    Output(ids.NEW_JOB_LOG, "children"),
    Output(ids.NEW_JOB_CANCEL, "disabled"),
    Output(ids.NEW_JOB_OPEN, "disabled"),
    Output(ids.NEW_JOB_OPEN, "href"),
    Input(ids.NEW_POLL, "n_intervals"),
    Input(ids.NEW_JOB, "data"),
    State(ids.NEW_JOB_CURVES, "figure"),
)
def show_job(_tick: int | None, job_id: str | None, shown: dict[str, Any] | None) -> tuple:
    """The chosen job (else the newest): its state, its run's stages, the training curves
    (redrawn only when they grew), the end of its log, and what can be done with it."""
    data_dir = current().data_dir
    job = chosen_job(data_dir, job_id)
    if job is None:
        return "No job chosen", None, no_update, "", True, True, "/"
    store = RunStore(runs_dir(data_dir) / job.run_id) if job.run_id else None
    record = run_record(store)
    title = [
        dbc.Badge(job.state, color=STATE_COLORS.get(job.state, "secondary"), className="me-2"),
        job.title,
        html.Small(f" · {elapsed(job)}", className="ls-hint"),
    ]
    curves = curves_of(store) if store is not None and record is not None else None
    figure = curves_view(curves, record, job.id, (shown or {}).get("layout", {}).get("meta"))
    log = "\n".join(job_queue.log_tail(data_dir, job.id, LOG_LINES))
    usable = record is not None and run_usable(store)
    return (
        title,
        stage_badges(record) if record else html.Small(job.note or "", className="ls-hint"),
        figure,
        job.error or log,
        job.finished,
        not usable,
        f"/?run={job.run_id}" if job.run_id else "/",
    )


def run_record(store: RunStore | None) -> Manifest | None:
    """The job's run's manifest: None before the job made it, or when it cannot be read (the
    job's error line says why)."""
    if store is None or not store.exists():
        return None
    try:
        return store.read_record()
    except UserError:
        return None


def curves_view(
    curves: TrainingCurves | None, record: Manifest | None, job_id: str, shown: Any
) -> Any:
    """The curves figure, or a note while there are none; ``no_update`` when the figure shown
    (its ``layout.meta`` stamp) is already this one, so a poll does not redraw it."""
    if curves is None:
        trained_elsewhere = record is not None and record.stage("model").state == "done"
        stamp = f"{job_id}|none|{trained_elsewhere}"
        text = (
            "This run's model was not trained here: no curves."
            if trained_elsewhere
            else "Training curves appear here after the first epoch."
        )
        figure = message_figure(text, CURVES_HEIGHT)
    else:
        stamp = f"{job_id}|{len(curves.points)}|{curves.state}"
        figure = curves_figure(curves).to_plotly_json()
        figure["layout"]["height"] = CURVES_HEIGHT
    if shown == stamp:
        return no_update
    figure["layout"]["meta"] = stamp
    return figure


def run_usable(store: RunStore | None) -> bool:
    from pipelines.precompute import usable

    try:
        return store is not None and usable(store)
    except UserError:
        return False


def chosen_job(data_dir: Any, job_id: str | None) -> JobRecord | None:
    if job_id:
        try:
            return job_queue.read_job(data_dir, job_id)
        except UserError:
            pass
    jobs = job_queue.list_jobs(data_dir)
    return jobs[0] if jobs else None


def elapsed(job: JobRecord) -> str:
    if job.started is None:
        return "waiting"
    seconds = (job.ended or time.time()) - job.started
    return f"{seconds:.0f} s"


@callback(
    Output(ids.NEW_MESSAGE, "children", allow_duplicate=True),
    Input(ids.NEW_JOB_CANCEL, "n_clicks"),
    State(ids.NEW_JOB, "data"),
    prevent_initial_call=True,
)
def cancel(n_clicks: int | None, job_id: str | None) -> Any:
    if not n_clicks:
        raise PreventUpdate
    data_dir = current().data_dir
    job = chosen_job(data_dir, job_id)
    if job is None:
        raise PreventUpdate
    try:
        record = job_queue.cancel(data_dir, job.id)
    except UserError as exc:
        return dbc.Alert(str(exc), color="warning", className="ls-alert mb-0")
    return dbc.Alert(
        f"cancelling '{record.title}'; its run keeps what it computed and can be resumed",
        color="info",
        className="ls-alert mb-0",
    )
