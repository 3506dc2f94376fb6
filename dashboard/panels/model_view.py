"""Model view: the clickable architecture diagram, layer stepping and the selected layer's line.

Click a box to select its layer (a collapsed block expands and selects its output layer);
prev/next buttons and the arrow keys (assets/model_view.js presses the buttons) step through
layers in execution order. Selection and hover highlighting are clientside (``selectLayer``,
``archHover``), and so is the ring of the selected layer (``markLayer``); the server draws the
diagram, which does not change with the selection.

"SVG" and "PDF" in the header download the diagram in the publication style (light, shapes as
labels, a legend), blocks collapsed or not, from ``dashboard/routes.py``; without a browser to
render them the buttons are disabled and the header says why.
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, State, ctx, dcc, html

from components.architecture import (
    architecture_figure,
    collapse_group,
    collapsible_groups,
    layer_summary,
)
from components.theme import message_figure
from dashboard import ids
from dashboard.context import current
from dashboard.figure_export import export_problem
from dashboard.registry import callback, clientside_callback, publish
from dashboard.routes import WARM_EXPORT_URL, architecture_export_url, architecture_filename
from pipelines.errors import UserError


def export_controls() -> html.Div:
    """The architecture's downloads: blocks collapsed or not, then SVG / PDF links (filled in
    by ``export_links`` once a run is open)."""
    publish("warmExportUrl", WARM_EXPORT_URL)
    link = {"href": "", "external_link": True, "size": "sm", "color": "secondary"}
    return html.Div(
        [
            html.Span("export", className="ls-hint me-2"),
            html.Div(
                dbc.Checkbox(id=ids.MODEL_EXPORT_COLLAPSED, label="collapsed blocks", value=True),
                title="in the downloaded figure, each nested block (a ResNet bottleneck) is "
                "one box",
            ),
            dbc.ButtonGroup(
                [
                    dbc.Button(
                        "SVG",
                        id=ids.MODEL_EXPORT_SVG,
                        title="download the architecture for a paper (light, SVG)",
                        disabled=True,
                        **link,
                    ),
                    dbc.Button(
                        "PDF",
                        id=ids.MODEL_EXPORT_PDF,
                        title="download the architecture for a paper (light, PDF)",
                        disabled=True,
                        **link,
                    ),
                ],
                size="sm",
            ),
        ],
        id=ids.MODEL_EXPORT,
        className="ls-export d-flex align-items-center",
    )


def layout() -> dbc.Card:
    header = html.Div(
        [
            html.Span("Model", className="ls-card-title me-3"),
            dbc.ButtonGroup(
                [
                    dbc.Button(
                        "◀",
                        id=ids.MODEL_PREV,
                        size="sm",
                        color="secondary",
                        title="previous layer (←)",
                    ),
                    dbc.Button(
                        "▶", id=ids.MODEL_NEXT, size="sm", color="secondary", title="next layer (→)"
                    ),
                ],
                className="me-2",
            ),
            dbc.Select(id=ids.MODEL_LAYER, options=[], size="sm", className="ls-layer-select me-2"),
            html.Span(id=ids.MODEL_INFO, className="ls-layer-info me-auto"),
            dbc.Button(
                "expand blocks",
                id=ids.MODEL_EXPAND_ALL,
                size="sm",
                color="link",
                className="ls-link",
            ),
            dbc.Button(
                "collapse blocks",
                id=ids.MODEL_COLLAPSE_ALL,
                size="sm",
                color="link",
                className="ls-link",
            ),
            export_controls(),
            html.Span(id=ids.MODEL_EXPORT_NOTE, className="ls-export-note"),
        ],
        className="d-flex align-items-center flex-wrap gap-1",
    )
    return dbc.Card(
        [
            dbc.CardHeader(header),
            dbc.CardBody(
                dcc.Graph(
                    id=ids.MODEL_GRAPH,
                    figure=message_figure("Loading the model…", None),
                    clear_on_unhover=True,
                    config={"displayModeBar": False, "doubleClick": "reset"},
                    className="ls-arch-graph",
                ),
                className="p-1",
            ),
            dcc.Store(id=ids.MODEL_EXPANDED, data=[]),
        ],
        id=ids.MODEL_CARD,
        className="ls-card mb-3",
    )


# Selecting a layer is clientside: rapid arrow-key presses each see the previous step's result
# (a server callback would read a stale selection and lose steps), and the embedding request
# starts one round trip earlier.
clientside_callback(
    "selectLayer",
    Input(ids.MODEL_GRAPH, "clickData"),
    Input(ids.MODEL_PREV, "n_clicks"),
    Input(ids.MODEL_NEXT, "n_clicks"),
    Input(ids.MODEL_LAYER, "value"),
    State(ids.SELECTION, "data"),
    State(ids.MODEL_EXPANDED, "data"),
    State(ids.MODEL_LAYER, "options"),
    State(ids.RUN_MAPS_VERSION, "data"),
    State(ids.EMBEDDING_3D, "value"),
    outputs={
        "selection": Output(ids.SELECTION, "data", allow_duplicate=True),
        "dropdown": Output(ids.MODEL_LAYER, "value", allow_duplicate=True),
        "expanded": Output(ids.MODEL_EXPANDED, "data", allow_duplicate=True),
    },
    prevent_initial_call=True,
)


@callback(
    Output(ids.MODEL_EXPANDED, "data", allow_duplicate=True),
    Input(ids.MODEL_EXPAND_ALL, "n_clicks"),
    Input(ids.MODEL_COLLAPSE_ALL, "n_clicks"),
    State(ids.LAYER_KEY, "data"),
    prevent_initial_call=True,
)
def toggle_blocks(
    _expand: int | None, _collapse: int | None, key: dict[str, Any] | None
) -> list[str]:
    """Expand every collapsible block, or collapse them all again."""
    if ctx.triggered_id == ids.MODEL_COLLAPSE_ALL or not key or not key.get("run"):
        return []
    try:
        run = current().catalog.open(key["run"])
    except UserError:
        return []
    return collapsible_groups(run.layers)


@callback(
    Output(ids.MODEL_GRAPH, "figure"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.MODEL_EXPANDED, "data"),
    Input(ids.RUN_LAYERS_VERSION, "data"),
)
def render(run_id: str | None, expanded: list[str] | None, _version: Any) -> dict[str, Any]:
    """The diagram of the run's model. It does not depend on the selected layer: the browser
    rings that (``markLayer``), so a layer click redraws nothing here."""
    if not run_id:
        return message_figure("No run selected.", None)
    try:
        run = current().catalog.open(run_id)
    except UserError as exc:
        return message_figure(str(exc), None)
    if not run.layers:
        return message_figure(
            "The model's layers are not described yet (precompute running).", None
        )
    return architecture_figure(run.layers, expanded or [])


@callback(
    Output(ids.MODEL_INFO, "children"),
    Input(ids.LAYER_KEY, "data"),
    Input(ids.MODEL_EXPANDED, "data"),
)
def describe(key: dict[str, Any] | None, expanded: list[str] | None) -> str:
    """The selected layer's one-line description."""
    if not key or not key.get("run") or not key.get("layer"):
        return ""
    try:
        run = current().catalog.open(key["run"])
        layer = run.layer(key["layer"])
    except UserError as exc:
        return str(exc)
    info = layer_summary(layer)
    group = collapse_group(layer)
    if group and group not in (expanded or []) and group in collapsible_groups(run.layers):
        info += f" · inside collapsed block {group} (click it to expand)"
    return info


# The selected layer's ring and caption, drawn over the diagram in the browser.
clientside_callback(
    "markLayer",
    Output(ids.MODEL_GRAPH, "className"),
    Input(ids.LAYER_KEY, "data"),
    Input(ids.MODEL_GRAPH, "figure"),
)


clientside_callback(
    "archHover",
    Output(ids.MODEL_GRAPH, "id"),
    Input(ids.MODEL_GRAPH, "hoverData"),
    prevent_initial_call=True,
)


@callback(
    Output(ids.MODEL_EXPORT_SVG, "href"),
    Output(ids.MODEL_EXPORT_PDF, "href"),
    Output(ids.MODEL_EXPORT_SVG, "download"),
    Output(ids.MODEL_EXPORT_PDF, "download"),
    Output(ids.MODEL_EXPORT_SVG, "disabled"),
    Output(ids.MODEL_EXPORT_PDF, "disabled"),
    Output(ids.MODEL_EXPORT_COLLAPSED, "disabled"),
    Output(ids.MODEL_EXPORT_NOTE, "children"),
    Input(ids.RUN_KEY, "data"),
    Input(ids.RUN_LAYERS_VERSION, "data"),
    Input(ids.MODEL_EXPORT_COLLAPSED, "value"),
)
def export_links(run_id: str | None, _version: Any, collapsed: bool | None) -> tuple:
    """The run's SVG and PDF links, disabled (with the reason beside them) when there is no
    browser to render them or no layer list yet; the blocks choice only where blocks exist."""
    off = ("", "", "", "", True, True, True)
    problem = export_problem()
    if problem:
        return (*off, problem)
    if not run_id:
        return (*off, "")
    try:
        run = current().catalog.open(run_id)
    except UserError:
        return (*off, "")  # the diagram itself says what is wrong
    if not run.layers:
        return (*off, "")
    groups = collapsible_groups(run.layers)
    collapsed = bool(collapsed) and bool(groups)  # without blocks, "collapsed" changes nothing
    return (
        architecture_export_url(run, "svg", collapsed),
        architecture_export_url(run, "pdf", collapsed),
        architecture_filename(run.run_id, "svg", collapsed),
        architecture_filename(run.run_id, "pdf", collapsed),
        False,
        False,
        not groups,
        "",
    )
