"""Module-level callback declarations that every app instance gets, and what the browser shares
with Python.

``dash.callback`` puts callbacks in a global list that the FIRST app to serve a request takes
(and empties), so a second app in the same process, e.g. one per test data dir, would have none.
Panels therefore declare their callbacks with ``callback`` / ``clientside_callback`` from here,
which only record them; ``register_all(app)`` attaches every recorded callback to an app.
The decorated functions are returned unchanged, so tests call them as plain functions.

A clientside callback with several outputs names them (``outputs={"uid": Output(...), ...}``):
the JavaScript returns an object keyed by those names and ``define`` in ``assets/00-core.js``
turns it into Dash's list, in the order published here. Values both sides need (such as the
explanation method names) are published with ``publish``. ``shared_with_browser`` gathers ids,
output names and constants into ``window.layerscopeShared`` (written into the page by
``dashboard/app.py``), so each is spelled in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dash
from dash import ALL, ClientsideFunction, Output

from dashboard import ids

JS_NAMESPACE = "layerscope"  # window.dash_clientside.layerscope, filled by assets/*.js

_SERVER: list[tuple[tuple[Any, ...], dict[str, Any], Callable[..., Any]]] = []
_CLIENT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
_OUTPUT_NAMES: dict[str, list[dict[str, str]]] = {}
_CONSTANTS: dict[str, Any] = {}


def callback(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like ``dash.callback``; the function is attached to each app by ``register_all``."""

    def record(function: Callable[..., Any]) -> Callable[..., Any]:
        _SERVER.append((args, kwargs, function))
        return function

    return record


def _output_spec(name: str, output: Output) -> dict[str, str]:
    """``{"name": name}``, plus ``"by": key`` for a wildcard output whose id has ``key: ALL``:
    the JS then gives one value per matched component, keyed by that id field."""
    spec = {"name": name}
    component_id = output.component_id
    if isinstance(component_id, dict):
        wildcards = [key for key, value in component_id.items() if value is ALL]
        if len(wildcards) != 1:
            raise ValueError(f"output {name!r}: name one ALL field of {component_id}")
        spec["by"] = wildcards[0]
    return spec


def clientside_callback(
    function_name: str,
    *args: Any,
    outputs: Mapping[str, Output] | None = None,
    **kwargs: Any,
) -> None:
    """A clientside callback running ``layerscope.<function_name>`` from assets/*.js.

    With ``outputs`` (name -> Output, in the order Dash gets them) the JS function returns an
    object keyed by those names; ``args`` are then only its Inputs and States.
    """
    if outputs is not None:
        if function_name in _OUTPUT_NAMES:
            raise ValueError(f"clientside callback {function_name!r} is declared twice")
        _OUTPUT_NAMES[function_name] = [_output_spec(n, o) for n, o in outputs.items()]
        args = (*outputs.values(), *args)
    _CLIENT.append((function_name, args, kwargs))


def publish(name: str, value: Any, *, latest: bool = False) -> None:
    """Share a JSON-ready constant with the browser as ``window.layerscope.constants[name]``.

    ``latest``: the value describes the app being built now (the registered explanation
    methods, which a plugin or a test may add to), so each app gets the value at its creation;
    other constants must never change."""
    if not latest and name in _CONSTANTS and _CONSTANTS[name] != value:
        raise ValueError(f"constant {name!r} is published twice with different values")
    _CONSTANTS[name] = value


def shared_with_browser() -> dict[str, Any]:
    """What ``assets/00-core.js`` reads from ``window.layerscopeShared``."""
    return {"ids": ids.all_ids(), "outputs": dict(_OUTPUT_NAMES), "constants": dict(_CONSTANTS)}


def register_all(app: dash.Dash) -> None:
    for args, kwargs, function in _SERVER:
        app.callback(*args, **kwargs)(function)
    for function_name, args, kwargs in _CLIENT:
        app.clientside_callback(ClientsideFunction(JS_NAMESPACE, function_name), *args, **kwargs)
