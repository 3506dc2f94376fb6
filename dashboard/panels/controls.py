"""Controls: run picker, subset size, method, perplexity and colouring.

``setup_run`` is the page's entry point: on load it reads the URL (``?run=&layer=...``), on a
run switch it resets the view to that run's defaults; either way it writes the whole selection
and every control's options. ``update_view`` patches the fields the user changes, and
``refresh_runs`` keeps the run menu current while the page is open (runs started or finished
since it loaded).
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
from dash import Input, Output, Patch, State, ctx, dcc, html, no_update

from dashboard import ids
from dashboard.context import current
from dashboard.registry import callback
from dashboard.state import (
    COLOR_OPTIONS,
    METHOD_OPTIONS,
    choose_perplexity,
    parse_query,
    perplexity_options,
    run_options,
    setup_for,
    waiting_for_layers,
)
from pipelines.errors import UserError

# How often the run menu looks for new runs and changed states: a few seconds is quick enough
# for a precompute started in a shell, and a directory listing plus a stat per run is cheap.
RUN_LIST_POLL_MS = 3000


def _field(label: str, control: Any, hint: str | None = None) -> html.Div:
    children = [dbc.Label(label, className="ls-label"), control]
    if hint:
        children.append(html.Div(hint, className="ls-hint"))
    return html.Div(children, className="mb-3")


def layout() -> dbc.Card:
    return dbc.Card(
        [
            dbc.CardHeader("Controls"),
            dbc.CardBody(
                [
                    _field("Run", dbc.Select(id=ids.CONTROLS_RUN, options=[], size="sm")),
                    _field("Samples", dbc.Select(id=ids.CONTROLS_SUBSET, options=[], size="sm")),
                    _field(
                        "Method",
                        dbc.RadioItems(
                            id=ids.CONTROLS_METHOD,
                            options=METHOD_OPTIONS,
                            value="tsne",
                            inline=True,
                        ),
                    ),
                    _field(
                        "Perplexity",
                        dbc.RadioItems(id=ids.CONTROLS_PERPLEXITY, options=[], inline=True),
                        "t-SNE only: larger values keep more global structure.",
                    ),
                    _field(
                        "Colour by",
                        dbc.RadioItems(id=ids.CONTROLS_COLOR, options=COLOR_OPTIONS, value="label"),
                    ),
                    dcc.Interval(id=ids.CONTROLS_RUN_POLL, interval=RUN_LIST_POLL_MS),
                ]
            ),
        ],
        id=ids.CONTROLS_CARD,
        className="ls-card mb-3",
    )


def alert_list(messages: list[tuple[str, str]]) -> list[dbc.Alert]:
    return [
        dbc.Alert(text, color=color, dismissable=True, className="ls-alert mb-2")
        for color, text in messages
    ]


@callback(
    Output(ids.SELECTION, "data"),
    Output(ids.CONTROLS_RUN, "options"),
    Output(ids.CONTROLS_RUN, "value"),
    Output(ids.CONTROLS_SUBSET, "options"),
    Output(ids.CONTROLS_SUBSET, "value"),
    Output(ids.CONTROLS_METHOD, "value"),
    Output(ids.CONTROLS_PERPLEXITY, "options"),
    Output(ids.CONTROLS_PERPLEXITY, "value"),
    Output(ids.CONTROLS_COLOR, "value"),
    Output(ids.MODEL_LAYER, "options"),
    Output(ids.MODEL_LAYER, "value"),
    Output(ids.MODEL_EXPANDED, "data"),
    Output(ids.ALERTS, "children"),
    *(Output(store, "data") for store in ids.RUN_ASPECT_VERSIONS.values()),
    Input(ids.URL, "search"),
    Input(ids.CONTROLS_RUN, "value"),
    Input(ids.RUN_LAYERS_VERSION, "data"),
    State(ids.SELECTION, "data"),
)
def setup_run(
    search: str | None,
    chosen: str | None,
    version: dict[str, Any] | None,
    selection: dict[str, Any] | None,
) -> tuple:
    """Page load (URL), run switch, or the first layers of a run the page opened while it was
    being built (its manifest's ``version``) -> the whole selection, every control's options,
    and the run's aspect versions the panels then draw (``aspect_versions``)."""
    previous = selection or {}
    by_user = ctx.triggered_id == ids.CONTROLS_RUN
    if by_user and chosen == previous.get("run"):
        # The menu echoing the value this callback just set: nothing changed.
        return (no_update,) * 16
    query = parse_query(search)
    if ctx.triggered_id == ids.RUN_LAYERS_VERSION:
        if not waiting_for_layers(current().catalog, previous, (version or {}).get("run")):
            return (no_update,) * 16
        # The link's layer and view still apply, to the run the page shows.
        query = {**query, "run": previous["run"]}
    setup = setup_for(
        current().catalog,
        query,
        chosen_run=chosen if by_user else None,
        keep=previous if by_user else None,
    )
    chosen_view = setup.selection
    return (
        chosen_view,
        setup.run_options,
        chosen_view["run"],
        setup.subset_options,
        None if chosen_view["subset"] is None else str(chosen_view["subset"]),
        chosen_view["method"],
        setup.perplexity_options,
        chosen_view["perplexity"],
        chosen_view["color"],
        setup.layer_options,
        chosen_view["layer"],
        [],
        alert_list(setup.messages),
        *(setup.aspects.get(aspect) for aspect in ids.RUN_ASPECT_VERSIONS),
    )


@callback(
    Output(ids.CONTROLS_RUN, "options", allow_duplicate=True),
    Input(ids.CONTROLS_RUN_POLL, "n_intervals"),
    State(ids.CONTROLS_RUN, "options"),
    prevent_initial_call=True,
)
def refresh_runs(_n: int | None, shown: list[dict[str, Any]] | None) -> Any:
    """Every few seconds: the run menu's entries, only when they changed (a run appeared,
    finished or vanished), so an unchanged list costs the page no re-render. Only the options:
    the chosen run stays whatever the user picked."""
    options = run_options(current().catalog)
    return no_update if options == (shown or []) else options


@callback(
    Output(ids.SELECTION, "data", allow_duplicate=True),
    Output(ids.CONTROLS_PERPLEXITY, "options", allow_duplicate=True),
    Output(ids.CONTROLS_PERPLEXITY, "value", allow_duplicate=True),
    Input(ids.CONTROLS_SUBSET, "value"),
    Input(ids.CONTROLS_METHOD, "value"),
    Input(ids.CONTROLS_PERPLEXITY, "value"),
    Input(ids.CONTROLS_COLOR, "value"),
    State(ids.SELECTION, "data"),
    prevent_initial_call=True,
)
def update_view(
    subset: str | None,
    method: str | None,
    perplexity: str | None,
    color: str | None,
    selection: dict[str, Any] | None,
) -> tuple:
    """Patch the view fields; a new subset offers only the perplexities computed for it."""
    selection = selection or {}
    if not selection.get("run"):
        return no_update, no_update, no_update
    try:
        run = current().catalog.open(selection["run"])
    except UserError:
        return no_update, no_update, no_update
    size = int(subset) if subset else None
    chosen = choose_perplexity(run, size, perplexity)
    patch = Patch()
    changed = False
    for key, value in (
        ("subset", size),
        ("method", method),
        ("perplexity", chosen),
        ("color", color),
    ):
        if value is not None and selection.get(key) != value:
            patch[key] = value
            changed = True
    return (
        patch if changed else no_update,
        perplexity_options(run, size, disabled=method != "tsne"),
        chosen if chosen != perplexity else no_update,
    )
