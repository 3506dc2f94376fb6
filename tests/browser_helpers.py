"""Serving the dashboard on 127.0.0.1 and driving it with Playwright + Debian's Chromium.

Browser tests skip when /usr/bin/chromium is missing, unless LAYERSCOPE_REQUIRE_BROWSER=1 (CI),
where a missing browser is a failure; the same holds for redis-server (the Celery path) with
LAYERSCOPE_REQUIRE_REDIS=1. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "test-output"
LARGE = {"width": 2560, "height": 1440}
SMALL = {"width": 1366, "height": 768}


def require_browser(playwright: bool = True) -> None:
    """Skip (or fail, in CI) when the browser or Playwright is not available. Without
    ``playwright``, only Chromium itself is needed (kaleido's figure export drives it)."""
    required = os.environ.get("LAYERSCOPE_REQUIRE_BROWSER") == "1"
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif playwright:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed"
    if problem:
        if required:
            pytest.fail(
                f"browser tests are mandatory here (LAYERSCOPE_REQUIRE_BROWSER=1) but {problem}"
            )
        pytest.skip(f"browser tests need Chromium: {problem}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Any, seconds: float, what: str, process: subprocess.Popen) -> None:
    """Poll ``ready()`` until it is true; fail with ``what`` if ``process`` dies or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    pytest.fail(f"{what} was not ready after {seconds:.0f} s")


@contextlib.contextmanager
def stopped_at_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A real redis-server on a free port of 127.0.0.1, persisting nothing; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        problem = "redis-server is missing (apt-get install redis-server)"
        if os.environ.get("LAYERSCOPE_REQUIRE_REDIS") == "1":
            pytest.fail(
                f"the Celery test is mandatory here (LAYERSCOPE_REQUIRE_REDIS=1) but {problem}"
            )
        pytest.skip(f"the Celery test needs Redis: {problem}")
    import redis

    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    with stopped_at_exit(process):
        wait_until(lambda: redis.Redis.from_url(url).ping(), 30, "redis-server", process)
        yield url


@contextlib.contextmanager
def celery_worker(redis_url: str, data_dir: Path) -> Iterator[Path]:
    """``celery -A dashboard.worker worker`` (the README's command) for ``data_dir``, until the
    block ends; yields its log file, test-output/celery-worker.log."""
    from celery import Celery

    OUTPUT_DIR.mkdir(exist_ok=True)
    env = {**os.environ, "REDIS_URL": redis_url, "LAYERSCOPE_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "celery", "-A", "dashboard.worker", "worker"]
    command += ["--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    log_path = OUTPUT_DIR / "celery-worker.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    control = Celery(broker=redis_url).control
    with stopped_at_exit(process):
        wait_until(lambda: control.ping(timeout=1.0), 120, "the Celery worker", process)
        yield log_path


@contextlib.contextmanager
def serve(flask_app: Any) -> Iterator[str]:
    """Serve ``flask_app`` on a free port of 127.0.0.1 in a thread; yields the base URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in test output
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, name="layerscope-test-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """A page plus everything that went wrong on it: console errors, page errors, failed
    requests and HTTP errors (4xx/5xx) of the dashboard's own requests."""

    def __init__(self, browser: Any, viewport: dict[str, int]):
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on("response", self._response)

    def _request_failed(self, request: Any) -> None:
        # ERR_ABORTED is the browser dropping a request itself: a reload or navigation by the
        # test while a callback was in flight, not a failure of the page.
        if "ERR_ABORTED" not in str(request.failure):
            self.errors.append(f"request failed: {request.url} {request.failure}")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")

    def close(self) -> None:
        self.context.close()

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        OUTPUT_DIR.mkdir(exist_ok=True)
        path = OUTPUT_DIR / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


# ---- reading the page -------------------------------------------------------------------------

GRAPH_JS = """(id) => {
  const outer = document.getElementById(id);
  return outer && (outer.classList.contains('js-plotly-plot') ? outer : outer.querySelector('.js-plotly-plot'));
}"""


def wait_for_graph(
    page: Any,
    graph_id: str,
    predicate: str = "gd => gd.data && gd.data.length > 0",
    timeout: float = 20_000,
) -> None:
    """Wait until the plotly graph ``graph_id`` exists and ``predicate(gd)`` holds."""
    page.wait_for_function(
        f"""() => {{ const gd = ({GRAPH_JS})({graph_id!r}); return !!gd && ({predicate})(gd); }}""",
        timeout=timeout,
    )


def graph_eval(page: Any, graph_id: str, expression: str) -> Any:
    """Evaluate ``expression`` (a JS function of gd) on the plotly graph ``graph_id``."""
    return page.evaluate(
        f"""() => {{ const gd = ({GRAPH_JS})({graph_id!r}); return ({expression})(gd); }}"""
    )


def scroll_to(page: Any, element_id: str) -> None:
    """Bring an element into the viewport (mouse coordinates are viewport coordinates)."""
    page.locator(f"#{element_id}").scroll_into_view_if_needed()


def point_position(
    page: Any, graph_id: str, predicate: str = "(trace, i) => true"
) -> dict[str, Any]:
    """Viewport coordinates and customdata of the first point (over traces with customdata) that
    satisfies ``predicate(trace, index)``, computed from plotly's own axes, never guessed."""
    scroll_to(page, graph_id)
    return graph_eval(
        page,
        graph_id,
        f"""gd => {{
          const layout = gd._fullLayout, size = layout._size, box = gd.getBoundingClientRect();
          for (let t = 0; t < gd.data.length; t++) {{
            const trace = gd.data[t];
            if (!trace.customdata || !trace.x || !trace.x.length) continue;
            if (trace.visible === false || trace.visible === 'legendonly') continue;
            for (let i = 0; i < trace.x.length; i++) {{
              if (!({predicate})(trace, i)) continue;
              const x = box.left + layout.xaxis._offset + layout.xaxis.l2p(trace.x[i]);
              const y = box.top + layout.yaxis._offset + layout.yaxis.l2p(trace.y[i]);
              return {{x, y, customdata: trace.customdata[i], trace: t, index: i}};
            }}
          }}
          return null;
        }}""",
    )


def isolated_point(page: Any, graph_id: str, min_distance: float = 12.0) -> dict[str, Any]:
    """A point with no other point within ``min_distance`` pixels (so hovering it is
    unambiguous), preferring points near the centre of the plot."""
    scroll_to(page, graph_id)
    return graph_eval(
        page,
        graph_id,
        f"""gd => {{
          const layout = gd._fullLayout, size = layout._size, box = gd.getBoundingClientRect();
          const points = [];
          gd.data.forEach((trace, t) => {{
            if (!trace.customdata || !trace.x) return;
            for (let i = 0; i < trace.x.length; i++) {{
              points.push({{x: box.left + layout.xaxis._offset + layout.xaxis.l2p(trace.x[i]),
                           y: box.top + layout.yaxis._offset + layout.yaxis.l2p(trace.y[i]),
                           customdata: trace.customdata[i], trace: t, index: i}});
            }}
          }});
          const cx = box.left + size.l + size.w / 2, cy = box.top + size.t + size.h / 2;
          points.sort((a, b) => Math.hypot(a.x - cx, a.y - cy) - Math.hypot(b.x - cx, b.y - cy));
          for (const p of points) {{
            if (points.every(q => q === p || Math.hypot(q.x - p.x, q.y - p.y) >= {min_distance})) return p;
          }}
          return points[0] || null;
        }}""",
    )


# ---- in-page instrumentation ---------------------------------------------------------------

HOVER_PROBE = """() => {
  // Times, in the page's clock: the last mousemove over the embedding, when the inspector image
  // got its new URL, when that image finished loading, the first frame painted after the new
  // URL (the main thread is free again: every output of the hover is drawn), and when every
  // image of the inspector (sample and explanations) is loaded: the inspector fully updated.
  const probe = window.hoverProbe = {move: null, src: null, loaded: null, url: null, painted: null, allLoaded: null};
  const graph = document.getElementById('embedding-graph');
  graph.addEventListener('mousemove', () => { probe.move = performance.now(); }, true);
  const img = document.getElementById('inspector-image');
  const card = document.getElementById('inspector-card');
  const settled = () => Array.from(card.querySelectorAll('img'))
    .filter(i => i.getAttribute('src'))
    .every(i => i.complete && i.naturalWidth > 0);
  const check = () => {
    if (probe.loaded !== null && probe.allLoaded === null && settled()) { probe.allLoaded = performance.now(); }
  };
  new MutationObserver(() => {
    probe.src = performance.now();
    probe.url = img.getAttribute('src');
    probe.loaded = null;
    probe.painted = null;
    probe.allLoaded = null;
    requestAnimationFrame(() => { probe.painted = performance.now(); });
  }).observe(img, {attributes: true, attributeFilter: ['src']});
  // load does not bubble; a capturing listener on the card sees every image's.
  card.addEventListener('load', (event) => {
    if (event.target === img) { probe.loaded = performance.now(); }
    check();
  }, true);
}"""


def image_loaded(page: Any, selector: str) -> bool:
    return page.evaluate(
        "(sel) => { const i = document.querySelector(sel); return !!i && i.complete && i.naturalWidth > 0; }",
        selector,
    )


def hover_point(
    page: Any, graph_id: str, predicate: str = "(trace, i) => true", attempts: int = 3
) -> dict[str, Any]:
    """Move the mouse onto a point and wait until plotly reports hovering exactly that point.

    The position is measured again on each attempt: on a busy machine images loading elsewhere
    can still shift the layout between measuring a point and reaching it."""
    for attempt in range(attempts):
        point = point_position(page, graph_id, predicate)
        page.mouse.move(point["x"], point["y"])
        try:
            page.wait_for_function(
                f"""([id, trace, index]) => {{
                  const hover = ({GRAPH_JS})(id)._hoverdata;
                  return hover && hover.some(p => p.curveNumber === trace && p.pointNumber === index);
                }}""",
                arg=[graph_id, point["trace"], point["index"]],
                timeout=5000,
            )
            return point
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; measure again
            if attempt == attempts - 1:
                raise
            page.mouse.move(5, 5)
    raise AssertionError("unreachable")


def pick_option(page: Any, dropdown_id: str, label: str, tries: int = 4) -> None:
    """Type ``label`` into a searchable dropdown and take it, until the dropdown shows it: on a
    loaded machine the run's class list can arrive after the first pick, and it resets the
    dropdown (``explain.class_options``), which left tests waiting on the wrong class."""
    dropdown = page.locator(f"#{dropdown_id}")
    for _ in range(tries):
        dropdown.click()
        page.keyboard.type(label)
        page.keyboard.press("Enter")
        try:
            page.wait_for_function(
                "([id, text]) => document.getElementById(id)?.innerText.includes(text)",
                arg=[dropdown_id, label],
                timeout=5_000,
            )
        except Exception:  # noqa: BLE001 - not shown yet: the list reset it; pick again
            continue
        page.wait_for_timeout(1_000)  # a reset in flight would show within this
        if label in dropdown.inner_text():
            return
    raise AssertionError(f"the dropdown #{dropdown_id} never kept {label!r}")
