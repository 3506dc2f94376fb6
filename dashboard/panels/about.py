"""About: what the selected run is, the state of its precompute, and its training curves
(for a run that trained its model).

While a run is incomplete the page polls its manifest; a change of what the run can show bumps
the run version, and through it the version of each aspect that changed (``runAspects``),
which re-renders the panels that depend on it, so embeddings appear as the precompute writes
them. The note at the top says what is ready and what is not.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html, no_update

from components.training_curves import curves_figure
from dashboard import ids
from dashboard.context import current
from dashboard.data import RunData, format_time
from dashboard.registry import callback, clientside_callback, publish
from pipelines.errors import UserError
from pipelines.metrics import HELD_OUT, TRAIN
from pipelines.precompute import usable
from pipelines.records import SplitAccuracy
from pipelines.training import TrainingCurves

# How often the page polls an incomplete run's manifest (``poll``); quicker while the page waits
# for the run's first maps, which a poll shows at most this late.
POLL_MS = 2000
FIRST_MAPS_POLL_MS = 500
STATE_COLORS = {"done": "success", "running": "info", "pending": "secondary"}
UNMAPPED = "unknown: the dataset's labels do not map to the model's classes"


def layout() -> dbc.Card:
    return dbc.Card(
        [
            dbc.CardHeader("About this run"),
            dbc.CardBody(html.Div(id=ids.ABOUT_BODY), className="ls-about"),
        ],
        id=ids.ABOUT_CARD,
        className="ls-card mb-3",
    )


def _row(label: str, value: Any) -> html.Tr:
    return html.Tr([html.Th(label, className="ls-about-key"), html.Td(value)])


def accuracy_text(run: RunData) -> str:
    """Held-out top-1 accuracy beside the training rows' (when the model was trained on some of
    these samples), e.g. "held-out 98.6% (360 samples) · train 99.6% (1,437 samples)"."""
    accuracy, splits = run.record.accuracy, run.record.accuracy_by_split
    if splits is None:
        if accuracy is None:
            return UNMAPPED
        # Written before held-out accuracy existed: over every row, training rows included.
        return (
            f"{100 * float(accuracy):.1f}% over all {run.num_samples:,} samples, including any "
            "the model was trained on; recompute the run for a held-out accuracy"
        )
    none = SplitAccuracy(accuracy=None, samples=0)
    held_out, train = splits.get(HELD_OUT) or none, splits.get(TRAIN) or none
    if held_out.accuracy is None and train.accuracy is None:
        return UNMAPPED

    def percent(split: SplitAccuracy) -> str:
        return "–" if split.accuracy is None else f"{100 * split.accuracy:.1f}%"

    held_out_n, train_n = held_out.samples, train.samples
    if train_n == 0:
        model = (
            "randomly initialised model"
            if run.record.config and run.record.config.weights == "none"
            else "pretrained model"
        )
        return f"held-out {percent(held_out)} (all {held_out_n:,} samples; {model})"
    return (
        f"held-out {percent(held_out)} ({held_out_n:,} samples) · "
        f"train {percent(train)} ({train_n:,} samples)"
    )


def about_rows(run: RunData) -> list[html.Tr]:
    """Key facts of a run (dataset, model, accuracy, size, dates), as table rows."""
    record = run.record
    dataset, model, config = record.dataset, record.model, record.config
    warning = record.class_mapping.warning if record.class_mapping else None
    dataset_name = dataset.name if dataset else config.dataset if config else "?"
    size = dataset.dataset_size if dataset and dataset.dataset_size is not None else run.num_samples
    rows = [
        _row("Run", run.run_id),
        _row(
            "Dataset",
            f"{dataset_name}: {dataset.description if dataset else ''}".strip(": "),
        ),
        _row(
            "Samples",
            f"{run.num_samples:,} of {size:,}, {len(run.class_names)} classes",
        ),
        _row(
            "Model",
            (model.description if model else "") or (config.model if config else "?"),
        ),
        _row("Parameters", f"{model.num_params if model else 0:,}"),
        _row("Layers", f"{len(run.layers)} (input included)"),
        _row("Accuracy", accuracy_text(run)),
        _row(
            "Computed",
            f"{format_time(record.created)} (updated {format_time(record.updated)}) on {model.device if model else '?'}",
        ),
    ]
    if warning:
        rows.append(_row("Labels", warning))
    return rows


def stage_badges(run: RunData) -> html.Div:
    badges = []
    for name, state, detail in run.stage_lines():
        text = f"{name}: {state}" + (f" ({detail})" if detail else "")
        badges.append(
            dbc.Badge(
                text, color=STATE_COLORS.get(state, "secondary"), className="me-1 mb-1 ls-stage"
            )
        )
    return html.Div(badges)


def training_graph(run: RunData) -> dcc.Graph | None:
    """The run's training curves (read as the precompute last wrote them: a run training now
    shows its curves so far, and the page's poll redraws them), or None for a run that did not
    train its model."""
    store = run.store
    if not store.has("training_curves"):
        return None
    try:
        curves = TrainingCurves.from_json(store.load_json("training_curves"))
    except (OSError, ValueError, TypeError):
        return None  # mid-replace on a filesystem without atomic rename: the next poll draws it
    return dcc.Graph(
        id=ids.ABOUT_TRAINING,
        figure=curves_figure(curves),
        config={"displaylogo": False},
        className="ls-training-curves mt-2",
    )


@callback(
    Output(ids.ABOUT_BODY, "children"),
    Output(ids.RUN_NOTE, "children"),
    Output(ids.STATUS, "children"),
    Output(ids.POLL, "disabled"),
    Output(ids.POLL, "interval"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_PROGRESS, "data"),
)
def render(run_id: str | None, _progress: Any) -> tuple:
    """The about table, stage badges, the "not complete" note, whether to keep polling and
    how often."""
    if not run_id:
        return html.P("No run selected.", className="ls-hint"), None, "", True, POLL_MS
    try:
        run = current().catalog.open(run_id)
    except UserError as exc:
        return (
            html.P(str(exc), className="text-warning"),
            dbc.Alert(str(exc), color="warning", className="ls-alert mb-2"),
            "",
            True,
            POLL_MS,
        )
    body: list[Any] = [
        html.Table(about_rows(run), className="ls-about-table mb-2"),
        stage_badges(run),
    ]
    graph = training_graph(run)
    if graph is not None:
        body.append(graph)
    note_text = run.not_ready_note()
    note = dbc.Alert(note_text, color="info", className="ls-alert mb-2") if note_text else None
    writing = run.being_written()
    status = dbc.Badge(
        "precompute running" if writing else ("complete" if run.complete else "incomplete"),
        color="info" if writing else ("success" if run.complete else "warning"),
    )
    return body, note, status, run.complete and not writing, poll_interval(run, writing)


def poll_interval(run: RunData, writing: bool) -> int:
    """Milliseconds between polls of the run's manifest: quick while a run being built has no
    map for every layer yet (the page waits for its first map, which lands seconds after the
    forward pass), slower once only t-SNE maps and the quality stage are coming."""
    if writing and not usable(run.store):
        return FIRST_MAPS_POLL_MS
    return POLL_MS


@callback(
    Output(ids.RUN_VERSION, "data"),
    Output(ids.RUN_PROGRESS, "data"),
    Input(ids.POLL, "n_intervals"),
    State(ids.RUN_KEY, "data"),
    State(ids.RUN_VERSION, "data"),
    State(ids.RUN_PROGRESS, "data"),
    prevent_initial_call=True,
)
def poll(
    _n: int | None,
    run_id: str | None,
    version: dict[str, Any] | None,
    progress: dict[str, Any] | None,
) -> tuple[Any, Any]:
    """While a run is incomplete: (the run version, bumped when what the run has to show
    changes (``RunData.contents_keys``): each aspect's panels follow theirs (``runAspects``);
    the run's progress, bumped on every manifest change: the About panel follows it). A
    training epoch changes only the progress: redrawing every panel once an epoch took cores
    from the training a page opened during the embedded default's build waits for."""
    if not run_id:
        return no_update, no_update
    try:
        run = current().catalog.open(run_id)
    except UserError as exc:
        # Deleted under our feet: every panel re-renders and shows this message.
        gone = {"run": run_id, "stamp": f"gone: {exc}", "complete": False}
        return gone, gone
    stamp = run.record.updated
    if progress and progress.get("run") == run_id and progress.get("stamp") == stamp:
        return no_update, no_update
    newer = {"run": run_id, "stamp": stamp}
    current_version = run.run_version()
    if (
        version
        and version.get("run") == run_id
        and version.get("contents") == current_version["contents"]
    ):
        return no_update, newer
    return current_version, newer


# The run version split into the stores the panels follow, one per aspect of the run.
publish("runAspects", list(ids.RUN_ASPECT_VERSIONS))
clientside_callback(
    "runAspects",
    Input(ids.RUN_VERSION, "data"),
    *(State(store, "data") for store in ids.RUN_ASPECT_VERSIONS.values()),
    # The page's setup writes them too (controls.setup_run).
    outputs={
        aspect: Output(store, "data", allow_duplicate=True)
        for aspect, store in ids.RUN_ASPECT_VERSIONS.items()
    },
    prevent_initial_call=True,
)
