"""Module-level callback declarations that every app instance gets.

``dash.callback`` puts callbacks in a global list that the FIRST app to serve a request takes
(and empties), so a second app in the same process, e.g. one per test data dir, would have none.
Panels therefore declare their callbacks with ``callback`` / ``clientside_callback`` from here,
which only record them; ``register_all(app)`` attaches every recorded callback to an app.
The decorated functions are returned unchanged, so tests call them as plain functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dash
from dash import ClientsideFunction

JS_NAMESPACE = "layerscope"  # window.dash_clientside.layerscope in assets/layerscope.js

_SERVER: list[tuple[tuple[Any, ...], dict[str, Any], Callable[..., Any]]] = []
_CLIENT: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


def callback(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like ``dash.callback``; the function is attached to each app by ``register_all``."""

    def record(function: Callable[..., Any]) -> Callable[..., Any]:
        _SERVER.append((args, kwargs, function))
        return function

    return record


def clientside_callback(function_name: str, *args: Any, **kwargs: Any) -> None:
    """A clientside callback running ``layerscope.<function_name>`` from assets/layerscope.js."""
    _CLIENT.append((function_name, args, kwargs))


def register_all(app: dash.Dash) -> None:
    for args, kwargs, function in _SERVER:
        app.callback(*args, **kwargs)(function)
    for function_name, args, kwargs in _CLIENT:
        app.clientside_callback(ClientsideFunction(JS_NAMESPACE, function_name), *args, **kwargs)
