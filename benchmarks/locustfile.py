"""Simulated LayerScope users for locust, replaying what the page really sends
(benchmarks/load_capture.py recorded it in Chromium; bench_load.py runs this).

Each user opens the page once (scripts, layout, the first callbacks and pictures), then, with a
pause of 0.5-2.5 s between actions, mostly hovers points and sometimes pins one, clicks a top-10
bar, picks a class, switches layers, turns a gallery page or reloads; the page's timers poll as
in a real tab. An action sends its callbacks at once and then its pictures at once, as the
browser does; each request is reported under its kind ("map view", "image
thumbnail", ...). Every action aims at a random sample, class and layer, so users do not share
one cached answer.

Environment: LAYERSCOPE_LOAD_RECORDING (the recording's JSON), LAYERSCOPE_LOAD_ROWS,
LAYERSCOPE_LOAD_CLASSES (counts), LAYERSCOPE_LOAD_LAYERS (comma-separated layer ids),
LAYERSCOPE_LOAD_AUTH ("user:password", optional).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gevent
import gevent.pool
from locust import HttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_capture import (  # noqa: E402
    POLL,
    SCRIPTS,
    needs_channel_maps,
    request_kind,
    retarget,
)

RECORDING = json.loads(Path(os.environ["LAYERSCOPE_LOAD_RECORDING"]).read_text())
ROWS = int(os.environ["LAYERSCOPE_LOAD_ROWS"])
CLASSES = int(os.environ["LAYERSCOPE_LOAD_CLASSES"])
LAYERS = os.environ["LAYERSCOPE_LOAD_LAYERS"].split(",")
# Layers with channel maps: only for these does the page ask for a grid picture or weigh
# Grad-CAM (a dense layer's activations are drawn in the callback's figure).
MAP_LAYERS = os.environ["LAYERSCOPE_LOAD_MAP_LAYERS"].split(",")
# Background callbacks' poll intervals by output (from /_dash-dependencies), in ms.
POLL_INTERVALS: dict[str, int] = json.loads(os.environ.get("LAYERSCOPE_LOAD_INTERVALS") or "{}")
JOB_SECONDS = 120.0  # a background job not answered by then counts as failed
CONNECTIONS = 6  # Chromium's connections per host over HTTP/1.1
AUTH = (
    tuple(os.environ["LAYERSCOPE_LOAD_AUTH"].split(":", 1))
    if os.environ.get("LAYERSCOPE_LOAD_AUTH")
    else None
)


def requests_of(action: str) -> list[dict[str, Any]]:
    return [r for r in RECORDING["requests"] if r["action"] == action]


@events.test_start.add_listener
def check_recording(environment: Any, **_: Any) -> None:
    missing = [a for a in ("load", "hover", "pin", "top10", "layer") if not requests_of(a)]
    if missing:
        raise RuntimeError(f"the recording has no requests for {missing}; capture it again")


# Chromium sends a request again when the keep-alive connection it reused turns out to have been
# closed by the server before any byte of an answer came back (the server never ran it): the
# race between a connection's reuse and the server's keep-alive timeout. locust's client does
# not, and reported it as "HTTP 0" (once in ~97,000 requests in a 10-minute run). Sent again here
# the same way; each such first attempt is counted under this kind, so the races still show.
RESENT = "resent: keep-alive connection closed by the server"


def closed_before_answer(response: Any) -> bool:
    """The request failed because the connection was closed before any answer (urllib3's
    "Connection aborted": RemoteDisconnected, a reset or a broken pipe on a reused socket)."""
    error = getattr(response, "error", None)
    return response.status_code == 0 and error is not None and "Connection aborted" in str(error)


class PageUser(HttpUser):
    wait_time = between(0.5, 2.5)

    def on_start(self) -> None:
        # What this user's browser has cached: versioned pictures (?v=, cached for a day) and
        # the script bundles are fetched once, as Chromium does.
        self.cached: set[str] = set()
        if AUTH:
            self.client.auth = AUTH
        self.row = random.randrange(ROWS)
        self.replay(SCRIPTS)
        self.replay("load")
        self.poller = gevent.spawn(self.poll_like_a_tab)

    def on_stop(self) -> None:
        self.poller.kill()

    def poll_like_a_tab(self) -> None:
        """The page's timers (the run list every few seconds)."""
        polls = requests_of(POLL)
        while polls:
            gevent.sleep(5.0)
            self.send(random.choice(polls), self.row, 0, LAYERS[0])

    # ---- the mix ----------------------------------------------------------------------------

    @task(10)
    def hover(self) -> None:
        self.replay("hover", row=random.randrange(ROWS))

    @task(3)
    def pin(self) -> None:
        self.row = random.randrange(ROWS)
        self.replay("pin")

    @task(2)
    def top10_bar(self) -> None:
        self.replay("top10", cls=random.randrange(CLASSES), layer=random.choice(MAP_LAYERS))

    @task(1)
    def class_picker(self) -> None:
        self.replay("class_picker", cls=random.randrange(CLASSES), layer=random.choice(MAP_LAYERS))

    @task(2)
    def layer_switch(self) -> None:
        self.replay("layer", layer=random.choice(LAYERS))

    @task(1)
    def gallery_page(self) -> None:
        self.replay("gallery")

    @task(1)
    def reload(self) -> None:
        self.replay("load")

    # ---- replaying ---------------------------------------------------------------------------

    def replay(
        self, action: str, row: int | None = None, cls: int = 0, layer: str | None = None
    ) -> None:
        """The action's callbacks together, then its pictures and other GETs together, at most
        ``CONNECTIONS`` at a time like the browser."""
        row = self.row if row is None else row
        layer = layer or random.choice(LAYERS)
        recorded = requests_of(action)
        # A page load and a gallery page ask for many pictures by row: those stay as recorded.
        aimed = action not in ("load", "gallery", SCRIPTS, POLL)
        for batch in (
            [r for r in recorded if r["method"] == "POST"],
            [r for r in recorded if r["method"] != "POST"],
        ):
            pool = gevent.pool.Pool(CONNECTIONS)
            for recorded_request in batch:
                pool.spawn(self.send, recorded_request, row, cls, layer, aimed)
            pool.join()

    def send(
        self, recorded: dict[str, Any], row: int, cls: int, layer: str, aimed: bool = True
    ) -> None:
        path, body = recorded["path"], recorded["body"]
        if aimed:
            if needs_channel_maps(path) and layer not in MAP_LAYERS:
                return  # the page draws this layer in the figure: no picture to ask for
            path, body = retarget(path, body, row, cls, layer)
        name = request_kind(recorded["path"], recorded["body"])
        if body is None and ("v=" in path or name == "page scripts"):
            if path in self.cached:
                return
            self.cached.add(path)
        if body is None:
            self.request("GET", path, name)
            return
        started = time.perf_counter()
        handles = answer_json(self.request("POST", path, name, json=body))
        if "cacheKey" in handles and "job" in handles:
            self.wait_for_job(path, body, handles, name, started)

    def wait_for_job(
        self, path: str, body: dict[str, Any], handles: dict[str, Any], name: str, started: float
    ) -> None:
        """A background callback answered a job handle: poll as the renderer does, every
        interval, until the answer; reported as "<kind> (click to answer)", the time the user
        waits."""
        interval = POLL_INTERVALS.get(str(body.get("output")), 1000) / 1000
        query = urlencode({"cacheKey": handles["cacheKey"], "job": handles["job"]})
        poll_path = f"{path}{'&' if '?' in path else '?'}{query}"
        error: Exception | None = None
        while True:
            gevent.sleep(interval)
            response = self.request("POST", poll_path, f"{name} (poll)", json=body)
            answer = answer_json(response)
            if response.status_code not in (200, 204):
                error = RuntimeError(f"a poll answered HTTP {response.status_code}")
            elif "response" in answer or response.status_code == 204:
                break
            elif time.perf_counter() - started > JOB_SECONDS:
                error = TimeoutError(f"no answer after {JOB_SECONDS:.0f} s")
            if error is not None:
                break
        events.request.fire(
            request_type="JOB",
            name=f"{name} (click to answer)",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )

    def request(self, method: str, path: str, name: str, **kwargs: Any) -> Any:
        """One request as Chromium makes it (``RESENT``), checked (``check``); a POST is a
        callback, whose answer must be JSON."""
        for attempt in range(2):
            with self.client.request(
                method, path, name=name, catch_response=True, **kwargs
            ) as response:
                if attempt == 0 and closed_before_answer(response):
                    response.request_meta["name"] = RESENT
                    response.success()
                    continue
                self.check(response, callback=method == "POST")
        return response

    @staticmethod
    def check(response: Any, callback: bool = False) -> None:
        """Dash answers 204 for a callback that updates nothing; anything else but 200 is an
        error, and so is a callback answer that is not JSON."""
        if response.status_code not in (200, 204, 304):
            response.failure(f"HTTP {response.status_code}: {response.text[:120]!r}")
        elif callback and response.status_code == 200:
            try:
                response.json()
            except ValueError:
                response.failure("a callback answered something that is not JSON")
            else:
                response.success()
        else:
            response.success()


def answer_json(response: Any) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
