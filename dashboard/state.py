"""The shared selection and how a page (or a run switch) sets it up.

The page keeps ONE selection store::

    {"run", "layer", "subset", "method", "perplexity", "color", "pinned", "upload"}

Controls, the model view and the embedding each write their own fields with ``Patch``; a
clientside splitter (``splitSelection`` in assets/page.js) derives small keys from it so
server callbacks fire only when a field they use changed (a hover never reaches the server).
``?run=...&layer=...&subset=...&method=...&perplexity=...&color=...&row=...`` in the URL sets the
initial selection; unknown values are replaced by defaults with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from components.architecture import layer_option_label
from components.embedding import COLOR_BY
from dashboard import ids
from dashboard.data import METHODS, RunCatalog, RunData, RunSummary
from dashboard.security import ascii_int
from pipelines.errors import UserError
from pipelines.store import perplexity_key

EMPTY_SELECTION: dict[str, Any] = {
    "run": None,
    "layer": None,
    "subset": None,
    "method": "tsne",
    "perplexity": None,
    "color": "label",
    "pinned": None,
    "upload": None,  # the id of the user's uploaded image shown instead of a sample
    "sel": "",  # the workbench's selection spec (pipelines/selection.py); "" = every sample
}
METHOD_OPTIONS = [{"label": "t-SNE", "value": "tsne"}, {"label": "PCA", "value": "pca"}]
COLOR_OPTIONS = [
    {"label": "true label", "value": "label"},
    {"label": "prediction", "value": "prediction"},
    {"label": "correct / wrong", "value": "correct"},
    {"label": "train / held-out", "value": "split"},
    {"label": "loss", "value": "loss"},
    {"label": "label-issue score", "value": "label_issue"},
]


@dataclass
class Setup:
    """Everything the controls show for one run, plus messages for the page."""

    selection: dict[str, Any]
    run_options: list[dict[str, Any]] = field(default_factory=list)
    subset_options: list[dict[str, Any]] = field(default_factory=list)
    perplexity_options: list[dict[str, Any]] = field(default_factory=list)
    layer_options: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (bootstrap colour, text)
    # The value of each run aspect's store (``aspect_versions``); empty without a run.
    aspects: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_query(search: str | None) -> dict[str, str]:
    """ "?run=a&layer=b" -> {"run": "a", "layer": "b"} (first value of each key)."""
    parsed = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
    return {key: values[0] for key, values in parsed.items() if values}


def format_perplexity(value: float | None) -> str | None:
    """The dropdown value of a perplexity: the store's spelling of it (its key)."""
    return None if value is None else perplexity_key(value)


def perplexity_options(
    run: RunData, subset: int | None, disabled: bool = False
) -> list[dict[str, Any]]:
    """The perplexities computed for ``subset`` (greyed out while PCA is shown)."""
    if subset is None:
        return []
    return [
        {"label": perplexity_key(p), "value": perplexity_key(p), "disabled": disabled}
        for p in run.perplexities(subset)
    ]


def subset_options(run: RunData) -> list[dict[str, Any]]:
    total = run.num_samples
    return [
        {"label": f"{n:,}" + (" (all)" if n == total else ""), "value": str(n)} for n in run.subsets
    ]


def layer_options(run: RunData) -> list[dict[str, Any]]:
    return [{"label": layer_option_label(layer), "value": layer.id} for layer in run.layers]


def choose_perplexity(run: RunData, subset: int | None, wanted: str | None) -> str | None:
    """``wanted`` if computed for ``subset``, else the one closest to 30."""
    if subset is None:
        return None
    valid = [perplexity_key(p) for p in run.perplexities(subset)]
    if wanted in valid:
        return wanted
    return format_perplexity(run.default_perplexity(subset))


def selection_from_link(text: str | None, messages: list[tuple[str, str]]) -> str:
    """The ``?sel=`` of a link as the canonical spec; a malformed one is dropped with a message."""
    from pipelines.selection import parse_selection

    if not text:
        return ""
    try:
        return parse_selection(text).to_text()
    except UserError as exc:
        messages.append(("warning", f"The selection in the link was ignored: {exc}"))
        return ""


def default_run_id(catalog: RunCatalog) -> str | None:
    """The first complete run, else the first readable one."""
    summaries = catalog.summaries()
    for summary in summaries:
        if summary.complete:
            return summary.run_id
    for summary in summaries:
        if summary.readable:
            return summary.run_id
    return None


def options_of(summaries: list[RunSummary]) -> list[dict[str, Any]]:
    return [{"label": s.label, "value": s.run_id, "disabled": not s.readable} for s in summaries]


def run_options(catalog: RunCatalog) -> list[dict[str, Any]]:
    """The run menu's entries: on page load (``setup_for``) and on every refresh."""
    return options_of(catalog.summaries())


def aspect_versions(version: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run version (``RunData.run_version``) split into the value of each aspect's store
    (``ids.RUN_ASPECT_VERSIONS``), as the page's ``runAspects`` splits each poll's.

    The page's setup writes these itself: its panels then draw the run as it is at that moment,
    and the first poll, finding the same contents, redraws none of them (it redrew every panel
    once more on each load of a run being built, while the page waited for its first map)."""
    return {
        aspect: {**version, "contents": version["contents"][aspect]}
        for aspect in ids.RUN_ASPECT_VERSIONS
    }


def waiting_for_layers(catalog: RunCatalog, selection: dict[str, Any], run_id: str | None) -> bool:
    """True when the page opened ``run_id`` before its model and sample index existed (a run
    being built: no layer or subset could be chosen) and the run now has both, so the page's
    setup can be made again for it. ``run_id``: the run whose manifest just changed."""
    if not run_id or selection.get("run") != run_id:
        return False
    if selection.get("layer") and selection.get("subset") is not None:
        return False
    try:
        run = catalog.open(run_id)
    except UserError:
        return False
    return bool(run.layer_ids) and bool(run.subsets)


def setup_for(
    catalog: RunCatalog,
    query: dict[str, str],
    chosen_run: str | None = None,
    keep: dict[str, Any] | None = None,
) -> Setup:
    """The selection and control options for a page load (``query`` from the URL) or a run the
    user picked (``chosen_run``; ``keep`` carries method and colour over from the old view)."""
    summaries = catalog.summaries()
    run_options = options_of(summaries)
    if not summaries:
        return Setup(
            selection=dict(EMPTY_SELECTION),
            messages=[("warning", catalog.empty_message())],
        )
    messages: list[tuple[str, str]] = []
    wanted = chosen_run or query.get("run")
    run_ids = [s.run_id for s in summaries if s.readable]
    if wanted and wanted not in run_ids:
        fallback = default_run_id(catalog)
        messages.append(
            (
                "warning",
                f"Run '{wanted}' is not in {catalog.data_dir} (deleted, unreadable or never "
                f"computed); showing '{fallback}' instead. `python main.py runs` lists the runs.",
            )
        )
        wanted = fallback
    run_id = wanted or default_run_id(catalog)
    if run_id is None:
        return Setup(
            selection=dict(EMPTY_SELECTION),
            run_options=run_options,
            messages=[("danger", "No run in this data dir can be read; see the run menu for why.")],
        )
    try:
        run = catalog.open(run_id)
    except UserError as exc:
        return Setup(
            selection=dict(EMPTY_SELECTION),
            run_options=run_options,
            messages=[("danger", str(exc))],
        )
    source_note = run.source_change_note()
    if source_note:
        messages.append(("danger", source_note))
    from_url = chosen_run is None
    use = query if from_url else {}
    keep = keep or {}

    layer = use.get("layer")
    if layer is not None and layer not in run.layer_ids:
        messages.append(
            (
                "warning",
                f"Layer '{layer}' (from the link) is not in run '{run_id}'; showing "
                f"'{run.default_layer()}' instead. Pick a layer in the model view.",
            )
        )
        layer = None
    layer = layer or run.default_layer()

    subset = ascii_int(use.get("subset"))
    if subset not in run.subsets:
        subset = run.default_subset()
    method = use.get("method") or keep.get("method") or "tsne"
    if method not in METHODS:
        method = "tsne"
    color = use.get("color") or keep.get("color") or "label"
    if color not in COLOR_BY:
        color = "label"
    pinned = ascii_int(use.get("row"))
    if pinned is not None and not 0 <= pinned < run.num_samples:
        messages.append(
            ("warning", f"Sample row {pinned} (from the link) is not in run '{run_id}'.")
        )
        pinned = None
    sel = selection_from_link(use.get("sel"), messages)
    selection = {
        **EMPTY_SELECTION,
        "run": run_id,
        "layer": layer,
        "subset": subset,
        "method": method,
        "perplexity": choose_perplexity(run, subset, use.get("perplexity")),
        "color": color,
        "pinned": pinned,
        "sel": sel,
    }
    return Setup(
        selection=selection,
        run_options=run_options,
        subset_options=subset_options(run),
        perplexity_options=perplexity_options(run, subset, disabled=method != "tsne"),
        layer_options=layer_options(run),
        messages=messages,
        aspects=aspect_versions(run.run_version()),
    )
