"""Robust endpoints: malformed and hostile requests answer a 4xx with one plain line (never an
HTML page or a traceback), row numbers are ASCII digits, unknown paths in the server's own areas
are 404s, every answer carries the security headers, and ``serve --auth`` asks for a login.

Against an app built on the session's real small run, through Flask's test client; the CLI
through ``main.py`` itself."""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_serve import login_note, resolve_auth
from dashboard import callback_inputs, ids, security
from dashboard.app import create_app
from dashboard.auth import BasicAuth, is_loopback
from dashboard.context import CONFIG_KEY, current
from dashboard.new_run import whole
from dashboard.panels import activations, gallery
from dashboard.state import EMPTY_SELECTION, setup_for
from pipelines.errors import UserError
from tests.browser_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
UPDATE = "/_dash-update-component"
SECURITY_HEADERS = (
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Content-Security-Policy",
)
# Values a hand-made request may put anywhere: digits that are not ASCII, the wrong types, a
# number past any row, a negative one.
HOSTILE = ["١٢", "１２", {"row": 1}, [1, "a"], 2**70, -1, 1.5, True, ""]


@pytest.fixture(scope="module")
def run_dir(
    small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A private copy of the small run: relabelling and saved selections write beside it."""
    data_dir, run_id = small_run
    copy_dir = tmp_path_factory.mktemp("security-data")
    shutil.copytree(data_dir / "runs", copy_dir / "runs")
    return copy_dir, run_id


@pytest.fixture(scope="module")
def app(run_dir: tuple[Path, str]) -> Any:
    return create_app(run_dir[0])


@pytest.fixture
def client(app: Any) -> Any:
    return app.server.test_client()


def assert_one_plain_line(response: Any, status: int) -> str:
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "text/plain", text
    assert len(text.strip().splitlines()) == 1, text
    assert "Traceback" not in text and "<html" not in text.lower(), text
    return text


# ---- building callback requests the way the page does -----------------------------------------


def callback_of(app: Any, function: Callable[..., Any]) -> str:
    """The callback_map key (Dash's ``output``) of the server callback ``function``."""
    for key, entry in app.callback_map.items():
        if getattr(entry.get("callback"), "__wrapped__", None) is function:
            return key
    raise AssertionError(f"{function.__name__} is not a callback of this app")


def sent_dependency(spec: dict[str, str], values: dict[tuple[str, str], Any]) -> Any:
    """What the page sends for a declared input/state: pattern-matching ones as an empty list
    (no such component on the page yet), others with the value from ``values`` (or null)."""
    if spec["id"].startswith("{"):
        return []
    value = values.get((spec["id"], spec["property"]))
    return {"id": spec["id"], "property": spec["property"], "value": value}


def callback_body(app: Any, output: str, values: dict[tuple[str, str], Any]) -> dict[str, Any]:
    entry = app.callback_map[output]
    declared = entry["output"]
    outputs = [o.to_dict() for o in declared] if isinstance(declared, list) else declared.to_dict()
    inputs = [sent_dependency(spec, values) for spec in entry["inputs"]]
    first = entry["inputs"][0]
    return {
        "output": output,
        "outputs": outputs,
        "inputs": inputs,
        "changedPropIds": [f"{first['id']}.{first['property']}"],
        "state": [sent_dependency(spec, values) for spec in entry["state"]],
    }


def answer(client: Any, body: dict[str, Any], seconds: float = 20.0) -> Any:
    """The response to ``body``; a background callback is polled, as the page does, until its
    job has answered."""
    response = client.post(UPDATE, json=body)
    started = response.get_json(silent=True) if response.status_code == 200 else None
    if not isinstance(started, dict) or "cacheKey" not in started:
        return response
    query = f"?cacheKey={started['cacheKey']}&job={started['job']}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = client.post(UPDATE + query, json=body)
        polled = response.get_json(silent=True) if response.status_code == 200 else None
        if not isinstance(polled, dict) or "response" in polled:
            return response
        time.sleep(0.05)
    raise AssertionError(f"the background callback {body['output']} did not answer")


@pytest.fixture(scope="module")
def page_values(app: Any, run_dir: tuple[Path, str]) -> dict[tuple[str, str], Any]:
    """Plausible values for the page's inputs: what it sends with sample row 3 pinned."""
    run_id = run_dir[1]
    with app.server.app_context():
        setup = setup_for(current().catalog, {"run": run_id, "row": "3", "sel": "true=3"})
        token = current().token
    selection = setup.selection
    view = {k: selection[k] for k in ("run", "layer", "subset", "method", "perplexity", "color")}
    return {
        (ids.SELECTION, "data"): selection,
        (ids.VIEW_KEY, "data"): view,
        (ids.LAYER_KEY, "data"): {"run": run_id, "layer": selection["layer"]},
        (ids.SAMPLE_KEY, "data"): {
            "run": run_id,
            "layer": selection["layer"],
            "pinned": 3,
            "upload": None,
        },
        (ids.SEL_KEY, "data"): {"run": run_id, "sel": "true=3"},
        (ids.RUN_KEY, "data"): run_id,
        (ids.RUN_VERSION, "data"): {"run": run_id, "stamp": 1.0, "complete": True},
        **{
            (store, "data"): {"run": run_id, "stamp": 1.0, "contents": "x", "complete": True}
            for store in ids.RUN_ASPECT_VERSIONS.values()
        },
        (ids.APP_TOKEN, "data"): token,
        (ids.URL, "search"): f"?run={run_id}&row=3",
        (ids.URL, "pathname"): "/",
        (ids.CONTROLS_SUBSET, "value"): str(selection["subset"]),
        (ids.CONTROLS_METHOD, "value"): "tsne",
        (ids.CONTROLS_PERPLEXITY, "value"): selection["perplexity"],
        (ids.CONTROLS_COLOR, "value"): "label",
        (ids.ACTIVATIONS_SORT, "value"): "score",
        (ids.ACTIVATIONS_GRAPH, "clickData"): {"points": [{"customdata": [2, 0.5]}]},
        (ids.CONFUSION_SPLIT, "value"): "held-out",
        (ids.CONFUSION_NORMALISE, "value"): "counts",
        (ids.CONFUSION_ORDER, "value"): "class",
        (ids.GALLERY_SORT, "value"): "row",
        (ids.FILTER_TRUE, "value"): 3,
        (ids.FILTER_PRED, "value"): 3,
        (ids.QUALITY_THRESHOLD, "value"): 0.98,
        (ids.RELABEL_CLASS, "value"): 3,
        (ids.EXPLAIN_REQUEST_QUICK, "data"): {
            "run": run_id,
            "row": 3,
            "cls": 2,
            "name": "2",
            "methods": ["gradcam"],
            "layer": None,
        },
        **{(spec_id, "n_clicks"): 1 for spec_id in (ids.RELABEL_PINNED, ids.NEW_START)},
        (ids.POLL, "n_intervals"): 1,
    }


# ---- malformed callback requests --------------------------------------------------------------


def replace(field: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, field: value}

    return change


def without(field: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {k: v for k, v in body.items() if k != field}


def edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edited(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        change(body)
        return body

    return edited


def set_sample_key(field: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(body: dict[str, Any]) -> None:
        body["inputs"][0]["value"] = {**body["inputs"][0]["value"], field: value}

    return edit(change)


MALFORMED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "a list, not an object": lambda body: [body],
    "no output": without("output"),
    "output not a string": replace("output", ["app-sample-key.data"]),
    "output names no callback": replace("output", "nope.children"),
    "output of a clientside callback": replace("output", f"{ids.URL_SINK}.data"),
    "no outputs": without("outputs"),
    "outputs one short": edit(lambda body: body["outputs"].pop()),
    "outputs naming another component": edit(
        lambda body: body["outputs"][0].update(id="about-body")
    ),
    "no inputs": without("inputs"),
    "inputs not a list": replace("inputs", {"id": "app-sample-key"}),
    "an input too many": edit(lambda body: body["inputs"].append(body["inputs"][0])),
    "an input missing": edit(lambda body: body["inputs"].pop()),
    "an input that is a string": edit(lambda body: body["inputs"].__setitem__(0, "x")),
    "an input of another component": edit(lambda body: body["inputs"][0].update(id="nope")),
    "an input's property not a string": edit(lambda body: body["inputs"][0].update(property=1)),
    "state missing": without("state"),
    "state not a list": replace("state", "upload-session"),
    "changedPropIds not a list": replace("changedPropIds", "app-sample-key.data"),
    "changedPropIds holding a list": replace("changedPropIds", [["app-sample-key.data"]]),
    "a row in Arabic-Indic digits": set_sample_key("pinned", "١٢"),
    "a row given as a dict": set_sample_key("pinned", {"row": 3}),
    "a negative row": set_sample_key("pinned", -1),
    "a row given as true": set_sample_key("pinned", True),
    "a layer given as a list": set_sample_key("layer", ["features.7"]),
    "the sample key as a string": edit(lambda body: body["inputs"][0].update(value="3")),
}


@pytest.fixture(scope="module")
def grid_body(app: Any, page_values: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """A well-formed request for the activation grid of the pinned sample."""
    return callback_body(app, callback_of(app, activations.render_grid), page_values)


def test_the_well_formed_grid_request_is_answered(client, grid_body):
    response = client.post(UPDATE, json=grid_body)
    assert response.status_code == 200, response.get_data(as_text=True)
    figure = response.get_json()["response"][ids.ACTIVATIONS_GRAPH]["figure"]
    assert "/activations/" in figure["layout"]["images"][0]["source"]


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_callback_request_answers_400_in_one_plain_line(client, grid_body, what):
    body = MALFORMED[what](copy.deepcopy(grid_body))
    text = assert_one_plain_line(client.post(UPDATE, json=body), 400)
    assert text.startswith("bad callback request: ")


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"not json", "application/json"), (b"{}", "text/plain"), (b"", "application/json")],
)
def test_a_body_that_is_not_json_answers_400(client, data, content_type):
    assert_one_plain_line(client.post(UPDATE, data=data, content_type=content_type), 400)


def test_a_callback_body_past_the_limit_answers_413(client, grid_body, monkeypatch):
    monkeypatch.setattr(security, "MAX_CALLBACK_BYTES", 1000)
    body = {**grid_body, "padding": "x" * 2000}
    assert_one_plain_line(client.post(UPDATE, json=body), 413)


def test_every_callback_answers_hostile_values_without_a_500(app, client, page_values):
    """Each server callback gets each hostile value in place of each input and state (and of
    each field of an object-valued one): a 400 or an answer (an in-page message), never a 500."""
    failures = []
    # A copy: Dash adds the callbacks declared with dash.callback at the first request.
    for output, entry in list(app.callback_map.items()):
        if entry.get("callback") is None:
            continue  # clientside: never reaches the server
        body = callback_body(app, output, page_values)
        for part in ("inputs", "state"):
            for position, sent in enumerate(body[part]):
                if not isinstance(sent, dict):
                    continue
                for value in hostile_variants(sent["value"]):
                    request = copy.deepcopy(body)
                    request[part][position]["value"] = value
                    response = answer(client, request)
                    text = response.get_data(as_text=True)
                    if response.status_code >= 500 or (
                        response.status_code >= 400 and len(text.strip().splitlines()) != 1
                    ):
                        name = entry["callback"].__wrapped__.__name__
                        failures.append(f"{name} {sent['id']}={value!r}: {text[:120]}")
    assert failures == []


def hostile_variants(value: Any) -> Iterator[Any]:
    yield from HOSTILE
    if isinstance(value, dict):
        for field in value:
            for bad in HOSTILE:
                yield {**value, field: bad}


def test_an_exception_in_a_callback_is_one_plain_line_and_a_logged_traceback(
    app, client, grid_body, monkeypatch, caplog
):
    def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug with private details")

    service = app.server.config[CONFIG_KEY].service
    monkeypatch.setattr(service, "layer_activation", broken)
    with caplog.at_level(logging.ERROR, logger="dashboard.security"):
        text = assert_one_plain_line(client.post(UPDATE, json=grid_body), 500)
    assert "private details" not in text
    (record,) = caplog.records
    assert record.exc_info is not None and "private details" in str(record.exc_info[1])


def test_every_selection_field_has_its_check():
    assert callback_inputs.SELECTION_FIELDS.keys() == EMPTY_SELECTION.keys()


@pytest.mark.parametrize(
    ("check", "value", "ok"),
    [
        (callback_inputs.index, 3, True),
        (callback_inputs.index, 0, True),
        (callback_inputs.index, -1, False),
        (callback_inputs.index, True, False),
        (callback_inputs.index, "3", False),
        (callback_inputs.index, 2**60, False),
        (callback_inputs.digits, "300", True),
        (callback_inputs.digits, "٣٠٠", False),
        (callback_inputs.decimal, "7.5", True),
        (callback_inputs.decimal, "1e+03", True),
        (callback_inputs.decimal, "nan", False),
        (callback_inputs.number, float("inf"), False),
        (callback_inputs.one_of("score", 1), True, False),
        (callback_inputs.one_of("score", 1), 1, True),
        (callback_inputs.record({"run": callback_inputs.text}), {"run": 3}, False),
        (callback_inputs.record({"run": callback_inputs.text}), {"other": 3}, True),
        (callback_inputs.list_of(callback_inputs.text), ["a", 1], False),
    ],
)
def test_input_checks(check, value, ok):
    assert (check(value) is None) is ok


# ---- rows, classes and paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/runs/{run}/thumb/١٢.png",  # Arabic-Indic 12
        "/runs/{run}/thumb/１２.png",  # full-width 12
        "/runs/{run}/thumb/1٢.png",
        "/runs/{run}/explain/gradcam/٣.png",
        "/runs/{run}/explain-class/٣/gradcam/3.png",
        "/runs/{run}/activations/features.7/٣.png",
        "/runs/{run}/thumb/9999999999999999999999.png",
    ],
)
def test_a_row_or_class_in_other_digits_is_not_one(client, run_dir, path):
    assert_one_plain_line(client.get(path.format(run=run_dir[1])), 404)


def test_the_same_row_in_ascii_digits_is_one(client, run_dir):
    assert client.get(f"/runs/{run_dir[1]}/thumb/12.png").status_code == 200


@pytest.mark.parametrize(
    ("text", "number"),
    [("12", 12), ("0", 0), ("١٢", None), ("１２", None), ("1_2", None), (" 12", None), ("", None)],
)
def test_ascii_int(text, number):
    assert security.ascii_int(text) == number


def test_a_link_row_in_other_digits_pins_nothing(app, run_dir):
    with app.server.app_context():
        catalog = current().catalog
        assert setup_for(catalog, {"run": run_dir[1], "row": "١٢"}).selection["pinned"] is None
        assert setup_for(catalog, {"run": run_dir[1], "row": "12"}).selection["pinned"] == 12


def test_a_relabel_to_a_class_the_run_lacks_writes_nothing(app, run_dir):
    with app.server.app_context():
        run = current().catalog.open(run_dir[1])
    before = run.corrections().current()
    for label in (10, 2**40):
        with pytest.raises(UserError, match="not a class of run"):
            gallery.relabel(run, ids.RELABEL_PINNED, label, {"pinned": 3}, [])
    assert run.corrections().current() == before


@pytest.mark.parametrize("value", ["١٢", "１２", True, 10**400, "12abc", None])
def test_a_new_run_form_number_is_ascii(value):
    with pytest.raises(UserError, match="epochs must be a whole number"):
        whole(value, "epochs", 1, 100)
    assert whole("12", "epochs", 1, 100) == 12


@pytest.mark.parametrize(
    "path",
    [
        "/runs",
        "/runs/",
        "/runs/nope",
        "/runs/{run}",
        "/runs/{run}/nope.png",
        "/runs/{run}/thumb/x.png",
        "/_dash-update-component",  # a GET: the callback path takes POSTs only
        "/_dash-nope",
        "/assets/nope.css",
        "/_dash-component-suites/nope/x.js",
        "/_dash-component-suites/dash/nope.js",
    ],
)
def test_an_unknown_path_in_a_server_area_is_404_not_the_page(client, run_dir, path):
    assert_one_plain_line(client.get(path.format(run=run_dir[1])), 404)


@pytest.mark.parametrize("path", ["/", "/new", "/?run=digits-small&row=3"])
def test_the_page_paths_still_serve_the_page(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "_dash-renderer" in response.get_data(as_text=True)


def test_a_wrong_method_is_one_plain_line(client):
    response = client.post("/_dash-layout")
    assert_one_plain_line(response, 405)
    assert "GET" in response.headers["Allow"]


# ---- headers ----------------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(client, run_dir, grid_body):
    responses = {
        "page": client.get("/"),
        "asset": client.get("/assets/layerscope.css"),
        "script": client.get("/_dash-component-suites/dash/dcc/dash_core_components.js"),
        "image": client.get(f"/runs/{run_dir[1]}/thumb/3.png"),
        "layout": client.get("/_dash-layout"),
        "dependencies": client.get("/_dash-dependencies"),
        "callback": client.post(UPDATE, json=grid_body),
        "bad callback": client.post(UPDATE, json={}),
        "missing": client.get("/runs/nope"),
    }
    for what, response in responses.items():
        assert response.status_code < 500, what
        for header in SECURITY_HEADERS:
            assert header in response.headers, f"{what} lacks {header}"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"


def inline_scripts(page: str) -> list[str]:
    """The text of every inline <script> the browser runs (not src=, not a JSON data block)."""
    scripts = re.findall(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", page, re.DOTALL)
    return [
        body
        for attrs, body in scripts
        if "src=" not in attrs and "application/json" not in attrs and body.strip()
    ]


def directives(policy: str) -> dict[str, list[str]]:
    """ "default-src 'self'; img-src 'self' data:" -> {"default-src": ["'self'"], ...}."""
    parsed = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


def test_the_policy_allows_exactly_the_page_inline_scripts_by_hash(client):
    response = client.get("/")
    policy = directives(response.headers["Content-Security-Policy"])
    script_src = policy["script-src"]
    scripts = inline_scripts(response.get_data(as_text=True))
    assert len(scripts) == 2  # Dash's renderer line and window.layerscopeShared
    for script in scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    assert "'unsafe-inline'" not in script_src
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]


# ---- the login --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_client(run_dir: tuple[Path, str]) -> Any:
    return create_app(run_dir[0], auth=BasicAuth(password="pässwörd-42")).server.test_client()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/new",
        "/assets/layerscope.css",
        "/_dash-layout",
        "/_dash-component-suites/dash/dcc/dash_core_components.js",
        "/runs/digits-small/thumb/3.png",
        "/runs/nope",
    ],
)
def test_with_auth_every_path_asks_for_the_login(guarded_client, path):
    for headers in ({}, basic("layerscope", "wrong"), basic("admin", "pässwörd-42")):
        response = guarded_client.get(path, headers=headers)
        assert_one_plain_line(response, 401)
        assert response.headers["WWW-Authenticate"] == 'Basic realm="LayerScope"'
        assert response.headers["X-Frame-Options"] == "DENY"
    allowed = guarded_client.get(path, headers=basic("layerscope", "pässwörd-42"))
    assert allowed.status_code == (404 if path == "/runs/nope" else 200)


def test_with_auth_a_callback_needs_the_login_too(guarded_client, grid_body):
    assert_one_plain_line(guarded_client.post(UPDATE, json=grid_body), 401)
    allowed = guarded_client.post(
        UPDATE, json=grid_body, headers=basic("layerscope", "pässwörd-42")
    )
    assert allowed.status_code == 200


def test_without_auth_nothing_asks(client):
    assert client.get("/").status_code == 200


def test_the_password_never_shows_in_a_repr():
    assert "s3cret" not in repr(BasicAuth(password="s3cret"))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_resolving_the_login():
    assert resolve_auth("127.0.0.1", None, {}) is None
    assert resolve_auth("0.0.0.0", False, {}) is None
    chosen = resolve_auth("0.0.0.0", True, {"LAYERSCOPE_PASSWORD": "from-env"})
    assert chosen == BasicAuth(password="from-env")
    assert "from-env" not in login_note(chosen, "http://h:1/")
    made = resolve_auth("127.0.0.1", True, {})
    assert made is not None and made.generated and len(made.password) >= 20
    assert made.password in login_note(made, "http://h:1/")
    assert made != resolve_auth("127.0.0.1", True, {})  # a new one at every start
    with pytest.raises(UserError, match="pass --auth"):
        resolve_auth("0.0.0.0", None, {})


# ---- the CLI ----------------------------------------------------------------------------------


def main_py(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), *args]


@pytest.mark.parametrize("command", [["serve"], []])
def test_a_host_others_reach_needs_auth_or_no_auth(tmp_path, command):
    """``serve`` and bare ``main.py`` refuse before anything starts: no server, and no
    default run built in the empty data dir."""
    data_dir = tmp_path / "data"
    result = subprocess.run(
        main_py(
            *command, "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(data_dir)
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "--auth" in lines[0] and "--no-auth" in lines[0]
    assert "serving" not in result.stdout
    assert not (data_dir / "runs").exists()


def test_serve_with_auth_prints_its_password_once_and_asks_for_it(run_dir, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LAYERSCOPE_PASSWORD"}
    log = tmp_path / "stderr.txt"
    command = main_py("serve", "--auth", "--port", str(port), "--data-dir", str(run_dir[0]))
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # Its own Ctrl-C, even when the tests run where SIGINT is ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        password = wait_for_password(log, server)
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers=basic("layerscope", password))
        with urllib.request.urlopen(request, timeout=10) as page:
            assert page.status == 200 and b"_dash-renderer" in page.read()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert log.read_text().count(password) == 1


def wait_for_password(log: Path, server: subprocess.Popen[bytes]) -> str:
    """The generated password from the server's login line, once it serves."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"with password (\S+) ", log.read_text())
        if found:
            return found.group(1)
        assert server.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no login line after 120 s: {log.read_text()}")
