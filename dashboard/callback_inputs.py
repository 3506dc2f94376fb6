"""What the page may send a server callback, checked before the callback runs.

Dash hands a callback whatever a request's JSON holds, and a hand-made request can put a dict
where a row number belongs or Arabic-Indic digits where a subset size does. Each callback input
whose wrong type would crash a callback (or, worse, be read as something else: ``int("١٢")`` is
12) is listed here by (component id, property) with a ``Check``; ``dashboard/security.py`` runs
them on every ``/_dash-update-component`` request and answers a failed one with a 400. What only
a callback can know (a row inside its run, a layer of the run, a class of its model) it still
checks itself and says on the page.

tests/test_security.py sends every server callback hostile values for each of its inputs, so a
new callback that crashes on one fails there; the fix is a line in ``EXPECTED``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from components.activations import SORTS
from components.confusion import NORMALISE, ORDERS
from components.embedding import COLOR_BY
from dashboard import ids
from dashboard.data import METHODS
from dashboard.panels.gallery import SORT_OPTIONS as GALLERY_SORT_OPTIONS
from dashboard.panels.workbench import SPLIT_OPTIONS

# A check says what is wrong with a value, or None when nothing is.
Check = Callable[[Any], str | None]

# The largest integer a browser's JSON keeps exactly: no row, class or count is larger.
MAX_SAFE_INTEGER = 2**53 - 1
DECIMAL = re.compile(r"[0-9]{1,15}(\.[0-9]{1,15})?(e[+-][0-9]{1,3})?")


def anything(_value: Any) -> str | None:
    return None


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def index(value: Any) -> str | None:
    """A row, class or channel number: a whole number >= 0 (not a string, not true/false)."""
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        return "must be a whole number >= 0"
    return None


def number(value: Any) -> str | None:
    if type(value) not in (int, float) or not math.isfinite(value):
        return "must be a finite number"
    return None


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def digits(value: Any) -> str | None:
    """A number the page keeps as text (a dropdown value such as a subset size "1000")."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,15}", value):
        return "must be a whole number written in ASCII digits"
    return None


def decimal(value: Any) -> str | None:
    """A number the page keeps as text in ASCII digits, such as a perplexity ("7.5", "1e+03":
    how ``pipelines.store.perplexity_key`` spells them)."""
    if not isinstance(value, str) or not DECIMAL.fullmatch(value):
        return "must be a number written in ASCII digits, such as 30 or 7.5"
    return None


def optional(check: Check) -> Check:
    def check_unless_none(value: Any) -> str | None:
        return None if value is None else check(value)

    return check_unless_none


def one_of(*choices: Any) -> Check:
    def check_choice(value: Any) -> str | None:
        # bool is an int: true must not pass for 1.
        if any(type(value) is type(c) and value == c for c in choices):
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}"

    return check_choice


def either(*checks: Check) -> Check:
    def check_any(value: Any) -> str | None:
        problems = [check(value) for check in checks]
        return None if None in problems else " or ".join(p for p in problems if p)

    return check_any


def list_of(check: Check) -> Check:
    def check_items(value: Any) -> str | None:
        if not isinstance(value, list):
            return "must be a list"
        for position, item in enumerate(value):
            problem = check(item)
            if problem:
                return f"[{position}] {problem}"
        return None

    return check_items


def record(fields: Mapping[str, Check]) -> Check:
    """An object whose listed fields, when present, pass their checks. Other fields are let
    through: no callback reads them."""

    def check_fields(value: Any) -> str | None:
        if not isinstance(value, dict):
            return "must be an object"
        for name, check in fields.items():
            if name in value:
                problem = check(value[name])
                if problem:
                    return f"field '{name}' {problem}"
        return None

    return check_fields


def values_of(options: list[dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(option["value"] for option in options)


# The shared selection (``EMPTY_SELECTION`` in dashboard/state.py) and the small keys split from
# it (``splitSelection`` in assets/page.js) share these fields.
SELECTION_FIELDS: dict[str, Check] = {
    "run": optional(text),
    "layer": optional(text),
    "subset": optional(index),
    "method": optional(one_of(*METHODS)),
    "perplexity": optional(either(decimal, one_of("none"))),
    "color": optional(one_of(*COLOR_BY)),
    "pinned": optional(index),
    "upload": optional(text),
    "sel": optional(text),
}
SELECTION_KEY = optional(record(SELECTION_FIELDS))
# What plotly sends for a click: the points, each with the customdata the figure gave it.
PLOTLY_CLICK = optional(
    record({"points": list_of(record({"customdata": optional(either(number, list_of(number)))}))})
)
UPLOADED_FILE = optional(record({"spec": optional(text), "summary": optional(text)}))
ANY_OBJECT = optional(record({}))


def run_version(contents: Check) -> Check:
    """A run version store's value: the run, the manifest's stamp, what it can show
    (``contents``), whether it is complete."""
    return optional(
        record(
            {
                "run": optional(text),
                "stamp": optional(either(text, number)),
                "contents": optional(contents),
                "complete": optional(boolean),
            }
        )
    )


EXPECTED: dict[tuple[str, str], Check] = {
    (ids.SELECTION, "data"): SELECTION_KEY,
    (ids.VIEW_KEY, "data"): SELECTION_KEY,
    (ids.LAYER_KEY, "data"): SELECTION_KEY,
    (ids.SAMPLE_KEY, "data"): SELECTION_KEY,
    (ids.SEL_KEY, "data"): SELECTION_KEY,
    (ids.RUN_KEY, "data"): optional(text),
    # RunData.contents_keys, and one aspect of it per store (ids.RUN_ASPECT_VERSIONS).
    (ids.RUN_VERSION, "data"): run_version(record(dict.fromkeys(ids.RUN_ASPECT_VERSIONS, text))),
    **{(store, "data"): run_version(text) for store in ids.RUN_ASPECT_VERSIONS.values()},
    (ids.RUN_PROGRESS, "data"): optional(
        record({"run": optional(text), "stamp": optional(either(text, number))})
    ),
    (ids.APP_TOKEN, "data"): optional(text),
    (ids.URL, "search"): optional(text),
    (ids.URL, "pathname"): optional(text),
    (ids.CONTROLS_SUBSET, "value"): optional(digits),
    (ids.CONTROLS_PERPLEXITY, "value"): optional(either(decimal, one_of("none"))),
    (ids.CONTROLS_METHOD, "value"): optional(one_of(*METHODS)),
    (ids.CONTROLS_COLOR, "value"): optional(one_of(*COLOR_BY)),
    (ids.MODEL_EXPANDED, "data"): optional(list_of(text)),
    (ids.INSPECTOR_RUN_INFO, "data"): ANY_OBJECT,
    (ids.EXPLAIN_REQUEST_QUICK, "data"): ANY_OBJECT,  # explain.checked_request reads the rest
    (ids.EXPLAIN_REQUEST_SLOW, "data"): ANY_OBJECT,
    (ids.ACTIVATIONS_SORT, "value"): optional(one_of(*SORTS)),
    (ids.ACTIVATIONS_GRAPH, "clickData"): PLOTLY_CLICK,
    (ids.UPLOAD_VIEW, "data"): optional(record(SELECTION_FIELDS)),
    (ids.CONFUSION_NORMALISE, "value"): optional(one_of(*NORMALISE)),
    (ids.CONFUSION_ORDER, "value"): optional(one_of(*ORDERS)),
    # Required: the radio always has a value, and the callbacks index a table with it.
    (ids.CONFUSION_SPLIT, "value"): one_of(*values_of(SPLIT_OPTIONS)),
    (ids.GALLERY_SORT, "value"): optional(one_of(*values_of(GALLERY_SORT_OPTIONS))),
    (ids.FILTER_TRUE, "value"): optional(index),
    (ids.FILTER_PRED, "value"): optional(either(index, one_of("other"))),
    (ids.QUALITY_THRESHOLD, "value"): optional(number),
    (ids.RELABEL_CLASS, "value"): optional(index),
    (ids.SELECTION_NAME, "value"): optional(text),
    (ids.NEW_DATASET_SOURCE, "value"): optional(text),
    (ids.NEW_DATASET_BUILTIN, "value"): optional(text),
    (ids.NEW_DATASET_UPLOAD, "data"): UPLOADED_FILE,
    (ids.NEW_MODEL_SOURCE, "value"): optional(text),
    (ids.NEW_MODEL_UPLOAD, "data"): UPLOADED_FILE,
    (ids.NEW_JOB_CURVES, "figure"): optional(record({"layout": record({})})),
}
# Whatever the component: Dash's click and tick counters are counts.
BY_PROPERTY: dict[str, Check] = {
    "n_clicks": optional(index),
    "n_intervals": optional(index),
}


def value_problem(component_id: Any, prop: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the input (``component_id``, ``prop``), or None. Ids of
    pattern-matching components are dicts: only the property's check applies to them."""
    check = EXPECTED.get((component_id, prop)) if isinstance(component_id, str) else None
    check = check or BY_PROPERTY.get(prop)
    return check(value) if check else None
