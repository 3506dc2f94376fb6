"""Workbench, left half: where the model fails (confusion matrix, per-class metrics) and what
the quality stage found in the data (label issues, near-duplicates, outliers).

Everything here *makes* selections; ``panels/gallery.py`` shows them. A confusion cell carries
its selection spec in ``customdata`` (``components/confusion.py``) and the browser copies it into
the page's selection (``confusionToSelection`` in assets/workbench.js) and asks for its rows at
once, so a click highlights the map after one server round trip, started with the click.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
import numpy as np
from dash import ALL, Input, Output, State, dcc, html

from components.confusion import (
    DEFAULT_MAX_CLASSES,
    confusion_figure,
    confusion_view,
)
from components.figure_download import figure_download
from components.theme import message_figure
from dashboard import ids
from dashboard.context import current
from dashboard.data import RunData
from dashboard.registry import callback, clientside_callback, publish
from pipelines.errors import UserError
from pipelines.metrics import HELD_OUT, TRAIN, confusion_matrix, per_class_metrics
from pipelines.quality import DEFAULT_DUPLICATE_THRESHOLD

SPLIT_OPTIONS = [
    {"label": "held-out", "value": HELD_OUT},
    {"label": "train", "value": TRAIN},
    {"label": "all", "value": "all"},
]
OUTLIERS_SHOWN = 50  # "least typical" selects this many
publish(
    "workbench", {"outliers": OUTLIERS_SHOWN, "duplicateThreshold": DEFAULT_DUPLICATE_THRESHOLD}
)


def _radio(component_id: str, options: list[tuple[str, str]], value: str) -> dbc.RadioItems:
    return dbc.RadioItems(
        id=component_id,
        options=[{"label": label, "value": v} for label, v in options],
        value=value,
        inline=True,
        className="ls-inline-radio",
    )


def confusion_tab() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    _radio(
                        ids.CONFUSION_SPLIT,
                        [(o["label"], o["value"]) for o in SPLIT_OPTIONS],
                        HELD_OUT,
                    ),
                    _radio(
                        ids.CONFUSION_NORMALISE, [("counts", "counts"), ("row %", "rows")], "counts"
                    ),
                    _radio(
                        ids.CONFUSION_ORDER,
                        [("class order", "class"), ("most confused first", "errors")],
                        "class",
                    ),
                    figure_download(ids.CONFUSION_GRAPH, "layerscope-confusion"),
                ],
                className="d-flex flex-wrap gap-3 mb-1 align-items-center",
            ),
            html.Div(
                "click a cell to select those samples · click a Σ cell to select a class",
                className="ls-hint mb-1",
            ),
            html.Div(id=ids.CONFUSION_MESSAGE),
            dcc.Graph(
                id=ids.CONFUSION_GRAPH,
                figure=message_figure("Loading…", 320),
                config={"displaylogo": False},
                className="ls-confusion-graph",
            ),
        ]
    )


def metrics_tab() -> html.Div:
    return html.Div(
        [
            html.Div(id=ids.METRICS_SUMMARY, className="mb-2"),
            html.Div(id=ids.METRICS_TABLE, className="ls-metrics-scroll"),
        ]
    )


def quality_tab() -> html.Div:
    return html.Div(
        [
            html.Div(id=ids.QUALITY_INFO, className="mb-2"),
            html.Div(
                [
                    dbc.Button(
                        "label issues",
                        id=ids.QUALITY_SHOW_ISSUES,
                        size="sm",
                        color="warning",
                        outline=True,
                    ),
                    dbc.Button(
                        "near-duplicates",
                        id=ids.QUALITY_SHOW_DUPLICATES,
                        size="sm",
                        color="info",
                        outline=True,
                    ),
                    dbc.Button(
                        f"{OUTLIERS_SHOWN} least typical",
                        id=ids.QUALITY_SHOW_OUTLIERS,
                        size="sm",
                        color="info",
                        outline=True,
                    ),
                    dbc.Button(
                        "corrected",
                        id=ids.QUALITY_SHOW_CORRECTED,
                        size="sm",
                        color="success",
                        outline=True,
                    ),
                ],
                className="d-flex flex-wrap gap-2 mb-2",
            ),
            dbc.Label("near-duplicate similarity (cosine) ≥", className="ls-label"),
            dcc.Slider(
                id=ids.QUALITY_THRESHOLD,
                # Distinct digits reach 0.9985 in smallcnn's last hidden layer, noisy copies stay
                # above 0.9997 (pipelines/quality.py): the interesting range is the top one.
                min=0.95,
                max=1.0,
                step=0.0005,
                value=DEFAULT_DUPLICATE_THRESHOLD,
                marks={v: f"{v:g}" for v in (0.95, 0.97, 0.99, 1.0)},
                tooltip={"placement": "bottom", "always_visible": False},
                updatemode="mouseup",
            ),
        ]
    )


def layout() -> dbc.Card:
    return dbc.Card(
        [
            dbc.CardHeader(
                html.Div(
                    [
                        html.Span("Where the model fails", className="ls-card-title me-3"),
                        html.Span(
                            "every selection highlights the map and fills the gallery",
                            className="ls-hint",
                        ),
                    ],
                    className="d-flex align-items-baseline flex-wrap",
                )
            ),
            dbc.CardBody(
                dbc.Tabs(
                    [
                        dbc.Tab(confusion_tab(), label="Confusion", tab_id="confusion"),
                        dbc.Tab(metrics_tab(), label="Per-class metrics", tab_id="metrics"),
                        dbc.Tab(quality_tab(), label="Data quality", tab_id="quality"),
                    ],
                    id=ids.WORKBENCH_TABS,
                    active_tab="confusion",
                ),
                className="p-2",
            ),
        ],
        id=ids.WORKBENCH_CARD,
        className="ls-card mb-3",
    )


# ---- confusion and metrics --------------------------------------------------------------------


def split_rows(run: RunData, split: str) -> np.ndarray:
    """(N,) bool: the rows of ``split`` ("train", "held-out" or "all")."""
    samples = run.samples()
    model_split = np.asarray(samples.get("model_split") or [HELD_OUT] * run.num_samples)
    if split == "all":
        return np.ones(len(model_split), dtype=bool)
    return model_split == split


def run_confusion(run: RunData, split: str) -> np.ndarray:
    """(C, C+1) counts over the split's rows (``pipelines.metrics.confusion_matrix``)."""
    predictions = run.predictions()
    if predictions is None:
        raise UserError("predictions are not computed yet (the forward stage is still running)")
    mapping = run.dataset_to_model
    if not mapping or all(m < 0 for m in mapping):
        raise UserError(
            "the dataset's classes do not map to the model's outputs, so there is no confusion "
            "matrix (the model predicts classes the dataset does not have)"
        )
    rows = split_rows(run, split)
    labels = np.asarray(run.samples()["label"], dtype=np.int64)[rows]
    predicted = np.asarray(predictions["predicted"], dtype=np.int64)[rows]
    return confusion_matrix(labels, predicted, mapping)


def split_title(run: RunData, split: str) -> str:
    count = int(split_rows(run, split).sum())
    words = {HELD_OUT: "held-out samples", TRAIN: "training samples", "all": "samples (all splits)"}
    return f"{count:,} {words[split]}"


@callback(
    Output(ids.CONFUSION_GRAPH, "figure"),
    Output(ids.CONFUSION_MESSAGE, "children"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_SAMPLES_VERSION, "data"),
    Input(ids.CONFUSION_SPLIT, "value"),
    Input(ids.CONFUSION_NORMALISE, "value"),
    Input(ids.CONFUSION_ORDER, "value"),
)
def render_confusion(
    run_id: str | None, _version: Any, split: str, normalise: str, order: str
) -> tuple:
    if not run_id:
        return message_figure("No run selected.", 320), None
    try:
        run = current().catalog.open(run_id)
        matrix = run_confusion(run, split or HELD_OUT)
    except UserError as exc:
        return message_figure(str(exc), 320), None
    if not matrix.sum():
        return message_figure(f"No {split} samples in this run; pick another split.", 320), None
    view = confusion_view(matrix, run.class_names, order or "class", DEFAULT_MAX_CLASSES)
    figure = confusion_figure(
        view, normalise or "counts", split_title(run, split), None if split == "all" else split
    )
    note = None
    if view.hidden:
        note = html.Div(
            f"{len(run.class_names)} classes: showing the {len(view.row_classes) - 1} most "
            f"confused; the other {view.hidden} are summed into one row and column.",
            className="ls-hint",
        )
    return figure, note


def _percent(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{100 * value:.1f}%"


def metrics_rows(run: RunData, split: str) -> list[dict[str, Any]]:
    """One dict per class: name, precision, recall, f1, support (floats may be NaN)."""
    matrix = run_confusion(run, split)
    metrics = per_class_metrics(matrix)
    return [
        {
            "cls": c,
            "name": run.class_names[c],
            "precision": float(metrics["precision"][c]),
            "recall": float(metrics["recall"][c]),
            "f1": float(metrics["f1"][c]),
            "support": int(metrics["support"][c]),
        }
        for c in range(matrix.shape[0])
    ]


def metrics_table(rows: list[dict[str, Any]]) -> html.Table:
    """Worst F1 first: the classes to look at. Each class name selects the class."""
    ordered = sorted(rows, key=lambda r: (np.nan_to_num(r["f1"], nan=-1.0), r["cls"]))
    header = html.Tr([html.Th(h) for h in ("class", "precision", "recall", "F1", "support")])
    body = [
        html.Tr(
            [
                html.Td(
                    html.Button(
                        r["name"],
                        id={"type": ids.METRICS_CLASS_TYPE, "cls": r["cls"]},
                        className="ls-link-button",
                        title="select this class",
                    )
                ),
                html.Td(_percent(r["precision"])),
                html.Td(_percent(r["recall"])),
                html.Td(_percent(r["f1"])),
                html.Td(f"{r['support']:,}"),
            ]
        )
        for r in ordered
    ]
    return html.Table([html.Thead(header), html.Tbody(body)], className="ls-metrics-table")


@callback(
    Output(ids.METRICS_SUMMARY, "children"),
    Output(ids.METRICS_TABLE, "children"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_SAMPLES_VERSION, "data"),
    Input(ids.CONFUSION_SPLIT, "value"),
)
def render_metrics(run_id: str | None, _version: Any, split: str) -> tuple:
    if not run_id:
        return None, None
    split = split or HELD_OUT
    try:
        run = current().catalog.open(run_id)
        rows = metrics_rows(run, split)
    except UserError as exc:
        return html.Div(str(exc), className="ls-hint"), None
    from dashboard.panels.about import accuracy_text

    summary = html.Div(
        [
            html.Div(["Top-1 accuracy: ", html.B(accuracy_text(run))]),
            html.Div(
                f"Per-class numbers below are over the {split_title(run, split)} (split picked "
                "in the Confusion tab); worst F1 first; click a class to select it.",
                className="ls-hint",
            ),
        ]
    )
    return summary, metrics_table(rows)


# ---- data quality -------------------------------------------------------------------------------


def quality_lines(run: RunData) -> list[Any]:
    corrected = html.Div(
        [html.B(f"{run.corrections_count():,}"), " labels corrected by you (kept beside the run)"]
    )
    quality = run.quality()
    if quality is None:
        state = run.stage("quality").state if "quality" in run.stages else None
        if state is None:
            missing = (
                "This run was computed before the data-quality stage existed. Run its "
                "precompute command again to add label issues, near-duplicates and outliers "
                "(the rest of the run is kept)."
            )
        else:
            missing = f"The data-quality stage is {state}."
        return [html.Div(missing, className="ls-hint mb-1"), corrected]
    info = quality.info
    return [
        html.Div(
            [
                html.B(f"{info.label_issues:,}"),
                " likely label issues (cleanlab, confident learning)",
            ]
        ),
        html.Div(f"Probabilities used: {info.probabilities}.", className="ls-hint"),
        html.Div(
            f"Neighbours: {info.neighbours} per sample in layer {info.layer}'s features "
            f"(cosine, {info.neighbour_index}).",
            className="ls-hint",
        ),
        corrected,
    ]


@callback(
    Output(ids.QUALITY_INFO, "children"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_SAMPLES_VERSION, "data"),
    Input(ids.CORRECTIONS, "data"),
)
def render_quality(run_id: str | None, _version: Any, _corrections: Any) -> Any:
    if not run_id:
        return None
    try:
        return quality_lines(current().catalog.open(run_id))
    except UserError as exc:
        return html.Div(str(exc), className="ls-hint")


# ---- selections made here (clientside: the spec is already in the figure or the button) --------

clientside_callback(
    "confusionToSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.CONFUSION_GRAPH, "clickData"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "classToSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input({"type": ids.METRICS_CLASS_TYPE, "cls": ALL}, "n_clicks"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)

clientside_callback(
    "qualityToSelection",
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Input(ids.QUALITY_SHOW_ISSUES, "n_clicks"),
    Input(ids.QUALITY_SHOW_DUPLICATES, "n_clicks"),
    Input(ids.QUALITY_SHOW_OUTLIERS, "n_clicks"),
    Input(ids.QUALITY_SHOW_CORRECTED, "n_clicks"),
    State(ids.QUALITY_THRESHOLD, "value"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)
