"""What the server does for every request before and after the app sees it: an optional login,
a check of Dash's callback requests, plain one-line errors, and the security headers.

``install(app, auth=..., page_scripts=...)`` plugs it all into a ``dash.Dash`` app; it must run
before the app's own routes are added, since it also makes ``<int:...>`` in a route accept
ASCII digits only (Python's ``int("١٢")`` is 12: a row number written in Arabic-Indic digits
would otherwise be a row).

* **Login** (``BasicAuth``, off unless ``serve --auth``): HTTP Basic on every path, assets and
  ``/_dash-*`` included; a 401 with ``WWW-Authenticate: Basic realm="LayerScope"`` otherwise.
  The CLI decides the password (``cli_serve.resolve_auth``) before the app is built, so every
  worker process of a server shares it.
* **Callback requests**: Dash reads ``/_dash-update-component``'s JSON body trusting its shape,
  and anything malformed ends in a ``KeyError`` deep inside it (an HTML 500). The body is
  checked first against ``app.callback_map`` for what Dash's dispatch reads (``output``,
  ``outputs``, ``inputs``, ``state``, ``changedPropIds``), then each value against what its
  callback can take (``dashboard/callback_inputs.py``); what is wrong answers 400 with one line.
* **Paths**: Dash answers any path no route claims with the page; in an area of the server's
  own routes (``/runs/...``, ``/assets/...``, ``/_dash-...``) such a path answers 404 instead.
* **Errors**: every HTTP error (404, 405, 413, ...) answers its one-line description as plain
  text instead of Werkzeug's HTML page; an exception escaping a view or a callback is logged
  with its traceback and answers a plain 500 line.
* **Headers** on every response: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: same-origin`` and a Content-Security-Policy (``content_security_policy``
  says what each part is for).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dash
import flask
from dash.exceptions import DependencyException, InvalidResourceError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter
from werkzeug.wrappers import Response as BaseResponse

from dashboard.auth import LOGIN_REALM, BasicAuth

LOG = logging.getLogger(__name__)

# The largest legitimate callback body is an image dropped onto the page: 10 MB as base64
# (dashboard/uploads.MAX_BYTES) is 13.4 MB. 64 MB leaves room for the rest of the request
# without letting one request make the server hold gigabytes of JSON.
MAX_CALLBACK_BYTES = 64 << 20
# Enough for any row, class or channel; more digits are not a number any run has.
MAX_INDEX_DIGITS = 12
ASCII_INDEX = rf"[0-9]{{1,{MAX_INDEX_DIGITS}}}"
ASCII_DIGITS = re.compile(ASCII_INDEX)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def ascii_int(text: str | None) -> int | None:
    """``text`` as a whole number if it is ASCII digits only (at most ``MAX_INDEX_DIGITS``),
    else None: ``int`` would also read "١٢" or " 12_0 " as numbers."""
    if text is None or not ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)


class AsciiIntegerConverter(IntegerConverter):
    """Werkzeug's ``<int:...>``, but ASCII digits only: its default ``\\d+`` matches every
    Unicode digit and ``int`` then reads them."""

    regex = ASCII_INDEX


def plain(text: str, status: int) -> flask.Response:
    """One line of plain text: what every error of this server looks like."""
    return flask.Response(one_line(text) + "\n", status=status, mimetype="text/plain")


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- callback requests ----------------------------------------------------------------------

_MULTI_WILDCARDS = (["ALL"], ["ALLSMALLER"])
_SHOWN_CHARS = 80


def _shown(value: Any) -> str:
    """A client's value quoted in an error line: JSON (no newlines), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _declared_id(declared: str) -> str | dict[str, Any]:
    """A callback_map id: a string, or a pattern as Dash stringifies it ('{"index":["ALL"],..}')."""
    if declared.startswith("{"):
        pattern: dict[str, Any] = json.loads(declared)
        return pattern
    return declared


def _id_matches(sent: Any, declared: str | dict[str, Any]) -> bool:
    if isinstance(declared, str):
        return sent == declared
    if not isinstance(sent, dict) or sent.keys() != declared.keys():
        return False
    for key, expected in declared.items():
        value = sent[key]
        if isinstance(expected, list):  # a wildcard: any plain value
            if not isinstance(value, str | int | float | bool):
                return False
        elif value != expected:
            return False
    return True


# What is wrong with an input's value (component id, property, value), or None.
ValueCheck = Callable[[Any, str, Any], str | None]


def no_value_check(_component_id: Any, _prop: str, _value: Any) -> None:
    return None


def _dependency_problem(
    sent: Any, declared: Mapping[str, str], where: str, value_problem: ValueCheck
) -> str | None:
    """What is wrong with one entry of ``inputs``/``state``/``outputs`` for ``declared``
    ({"id", "property"} as in ``callback_map``), or None. ``value_problem`` checks the
    entry's value (outputs have none)."""
    pattern = _declared_id(declared["id"])
    multi = isinstance(pattern, dict) and any(v in _MULTI_WILDCARDS for v in pattern.values())
    if multi:
        if not isinstance(sent, list):
            return f"{where} must be a list (its id has an ALL wildcard)"
        entries = sent
    else:
        entries = [sent]
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("property"), str):
            return f"{where} must be an object with 'id' and 'property'"
        # An output of allow_duplicate=True comes as "data@<hash>".
        prop = entry["property"].split("@")[0]
        if prop != declared["property"] or not _id_matches(entry.get("id"), pattern):
            return (
                f"{where} is {_shown(entry.get('id'))}.{_shown(entry['property'])}, not "
                f"{declared['id']}.{declared['property']}"
            )
        problem = value_problem(entry.get("id"), prop, entry.get("value"))
        if problem:
            return f"{_shown(entry.get('id'))}.{prop} {problem}"
    return None


def _list_problem(
    sent: Any,
    declared: Sequence[Mapping[str, str]],
    name: str,
    value_problem: ValueCheck = no_value_check,
) -> str | None:
    if not isinstance(sent, list):
        return f"'{name}' must be a list"
    if len(sent) != len(declared):
        return f"'{name}' has {len(sent)} entries; this callback takes {len(declared)}"
    for index, (entry, spec) in enumerate(zip(sent, declared, strict=True)):
        problem = _dependency_problem(entry, spec, f"{name}[{index}]", value_problem)
        if problem:
            return problem
    return None


def _outputs_problem(sent: Any, callback: Mapping[str, Any]) -> str | None:
    if callback.get("no_output"):
        return None  # Dash ignores what is sent
    declared = callback["output"]
    if isinstance(declared, list | tuple):
        return _list_problem(sent, [o.to_dict() for o in declared], "outputs")
    return _dependency_problem(sent, declared.to_dict(), "outputs", no_value_check)


def callback_request_problem(
    body: Any,
    callbacks: Mapping[str, Mapping[str, Any]],
    value_problem: ValueCheck = no_value_check,
) -> str | None:
    """What is wrong with a ``/_dash-update-component`` body for the app whose
    ``callback_map`` is ``callbacks``, or None when Dash can dispatch it.

    Mirrors what Dash's dispatch reads: ``output`` names a server callback (clientside ones have
    no ``callback``), ``outputs`` match its outputs (Dash checks them too, with an HTML 500),
    ``inputs`` and ``state`` hold one entry per declared dependency (Dash checks the count, the
    same way) and ``changedPropIds`` are strings (it looks each up in a dict). Then each input's
    and state's value must pass ``value_problem`` (``dashboard/callback_inputs.py``)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    output = body.get("output")
    if not isinstance(output, str):
        return "'output' must be a string naming the callback's outputs"
    callback = callbacks.get(output)
    if callback is None or callback.get("callback") is None:
        return f"no server callback has the output {_shown(output)}; reload the page"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(p, str) for p in changed):
        return "'changedPropIds' must be a list of strings"
    return (
        _outputs_problem(body.get("outputs"), callback)
        or _list_problem(body.get("inputs"), callback["inputs"], "inputs", value_problem)
        or _list_problem(body.get("state", []), callback["state"], "state", value_problem)
    )


# ---- the content security policy ------------------------------------------------------------


def script_hash(script: str) -> str:
    """The CSP source that allows exactly this inline <script> text."""
    digest = hashlib.sha256(script.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy(script_hashes: Sequence[str]) -> str:
    """The policy the page works under (checked in Chromium by tests/test_browser_security.py,
    which each relaxation below was found by).

    - scripts: this server's files, the inline scripts whose hashes are given (Dash's renderer
      line, the page's ``window.layerscopeShared``), and 'unsafe-eval': plotly.js's WebGL traces
      (the map's scattergl) compile their draw calls with ``Function`` (regl); without it the
      map draws but hovering it finds no point.
    - styles: 'unsafe-inline', because Dash's components, React and plotly.js insert <style>
      elements as they render; styles cannot run code.
    - images: data: for bootstrap's inline SVG icons, blob: for the picture plotly.js draws of
      a figure for its PNG download.
    - no plugins, no <base> elsewhere, forms and requests only to this server, and no page may
      frame this one (frame-ancestors, with X-Frame-Options for older browsers).
    """
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", *script_hashes, "'unsafe-eval'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


# ---- plugging it in -------------------------------------------------------------------------


def install(
    app: dash.Dash,
    *,
    auth: BasicAuth | None = None,
    page_scripts: Sequence[str] = (),
    value_problem: ValueCheck = no_value_check,
) -> None:
    """Make ``app`` ask for ``auth`` (when given), check callback requests (their values with
    ``value_problem``), answer errors as one plain line and send the security headers.
    ``page_scripts``: the inline scripts the page template adds besides Dash's own, allowed by
    their hashes.

    Call it right after creating the app, before any route of the app's own is added."""
    server = app.server
    server.url_map.converters["int"] = AsciiIntegerConverter
    prefix = app.config.routes_pathname_prefix
    if auth is not None:
        server.before_request(login_required(auth))
    server.before_request(callback_check(app, f"{prefix}_dash-update-component", value_problem))
    server.before_request(no_page_in_server_areas(server, f"{prefix}<path:path>"))
    register_error_handlers(server)
    server.after_request(security_headers(app, page_scripts))


def login_required(auth: BasicAuth) -> Callable[[], flask.Response | None]:
    def check_login() -> flask.Response | None:
        given = flask.request.authorization
        if (
            given is not None
            and given.type == "basic"
            and auth.accepts(given.username or "", given.password or "")
        ):
            return None
        response = plain(
            f"log in to see LayerScope (user {auth.user}; the password was set when the "
            "server started)",
            401,
        )
        response.headers["WWW-Authenticate"] = f'Basic realm="{LOGIN_REALM}"'
        return response

    return check_login


def callback_check(
    app: dash.Dash, path: str, value_problem: ValueCheck
) -> Callable[[], flask.Response | None]:
    def check_callback_request() -> flask.Response | None:
        request = flask.request
        if request.path != path or request.method != "POST":
            return None  # other methods: 405 from the router
        request.max_content_length = MAX_CALLBACK_BYTES
        body = request.get_json(silent=True)
        if body is None:
            return plain("bad callback request: the body must be JSON (application/json)", 400)
        problem = callback_request_problem(body, app.callback_map, value_problem)
        if problem:
            return plain(f"bad callback request: {problem}", 400)
        return None

    return check_callback_request


def first_segment(rule: str) -> str | None:
    """ "/runs/<run_id>/thumb/<int:row>.png" -> "runs"; None when the path starts variable."""
    segment = rule.lstrip("/").split("/", 1)[0]
    return segment if segment and "<" not in segment else None


def no_page_in_server_areas(
    server: flask.Flask, catch_all: str
) -> Callable[[], flask.Response | None]:
    """Dash answers every path no route claims with the page (so the page can route itself:
    ``/new``). Under a first segment that the server's own routes use (``/runs/``,
    ``/assets/``, ``/upload/``...) or that starts with an underscore (``/_dash-...``) an unknown
    path is a mistake or a probe: it answers 404, not the page."""
    areas: set[str] = set()  # from the URL map on the first request: every route is added then

    def check_area() -> flask.Response | None:
        rule = flask.request.url_rule
        if rule is None or rule.rule != catch_all:
            return None
        if not areas:
            areas.update(
                segment
                for other in server.url_map.iter_rules()
                if other.rule != catch_all and (segment := first_segment(other.rule))
            )
        first = first_segment(flask.request.path) or ""
        # Dash keeps every path of its own under an underscore (/_dash-layout, /_reload-hash):
        # none is a page.
        if first in areas or first.startswith("_"):
            return plain(f"no such path: {flask.request.path}", 404)
        return None

    return check_area


def register_error_handlers(server: flask.Flask) -> None:
    @server.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> BaseResponse:
        # The error's own response keeps its headers (Allow on a 405). Flask hands redirects
        # and code-less errors back before looking for a handler: this sees 4xx and 5xx only.
        response = error.get_response()
        text = f"{error.code} {error.name}: {error.description or ''}".rstrip(": ")
        response.set_data(one_line(text) + "\n")
        response.mimetype = "text/plain"
        return response

    @server.errorhandler(InvalidResourceError)
    @server.errorhandler(DependencyException)
    def no_such_resource(_error: Exception) -> flask.Response:
        # A /_dash-component-suites/ path that names no registered script: Dash answers it with
        # HTML (or a 500), and a message listing every registered path.
        return plain(f"no such file: {flask.request.path}", 404)

    @server.errorhandler(Exception)
    def internal_error(error: Exception) -> flask.Response:
        # Dash answers PreventUpdate (204) with a handler of its own, which Flask prefers: it is
        # registered for the more specific class.
        LOG.error("%s %s failed", flask.request.method, flask.request.path, exc_info=error)
        return plain("internal error while answering this request; see the server log", 500)


def security_headers(
    app: dash.Dash, page_scripts: Sequence[str]
) -> Callable[[flask.Response], flask.Response]:
    policy: list[str] = []  # computed on the first response: every callback is declared by then

    def add_headers(response: flask.Response) -> flask.Response:
        if not policy:
            hashes = [*app.csp_hashes(), *(script_hash(s) for s in page_scripts)]
            policy.append(content_security_policy(hashes))
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", policy[0])
        return response

    return add_headers
