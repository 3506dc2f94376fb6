"""Figures as SVG and PDF files, through Plotly's own static export: kaleido driving a headless
Chromium, the machine's own (never a downloaded one), fully offline.

Which browser: ``$BROWSER_PATH`` if set (choreographer's own override, which kaleido honours
too), else Debian's ``/usr/bin/chromium``. It is passed to kaleido explicitly, so choreographer
never searches ``PATH`` or its download folder, and nothing is ever downloaded. The page kaleido
renders in loads the plotly.js bundled with plotly.py; MathJax (otherwise fetched from a CDN)
is switched off, since no LayerScope figure uses LaTeX.

Why a renderer of our own: ``kaleido.calc_fig_sync`` starts a browser per call (about 3 s on
2 cores; a warm render takes 0.2-0.3 s). Kaleido's answer, ``kaleido.start_sync_server``, keeps
one open, but its callers share one result queue (two request threads can swap answers) and,
when the browser cannot start, its thread dies while callers wait on a queue nobody serves:
the request hangs for ever (measured with a wrong ``path``). So ``Renderer`` keeps one
``kaleido.Kaleido`` (the same long-lived browser the sync server wraps) on an event loop
thread of its own, serialises calls, bounds each with a timeout, restarts the browser after a
failure and closes it after ``IDLE_CLOSE_S`` unused seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipelines.errors import UserError

LOG = logging.getLogger(__name__)

Format = Literal["svg", "pdf"]
MIMETYPES: dict[str, str] = {"svg": "image/svg+xml", "pdf": "application/pdf"}
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ENV = "BROWSER_PATH"
START_TIMEOUT_S = 60.0  # a cold start takes about 3 s; a loaded 2-core machine can take longer
RENDER_TIMEOUT_S = 30.0
IDLE_CLOSE_S = 600.0  # an idle Chromium holds ~375 MB (PSS, 9 processes): let it go after 10 min

T = TypeVar("T")


class ExportUnavailable(UserError):
    """No browser to render with (missing, or it would not start): the server answers 503."""


class ExportFailed(Exception):
    """The browser ran but the figure did not render (logged; the server answers 500)."""


def browser_path() -> Path:
    """The Chromium kaleido drives; ExportUnavailable, saying how to fix it, if there is none."""
    configured = os.environ.get(BROWSER_ENV)
    path = Path(configured) if configured else DEBIAN_CHROMIUM
    if path.is_file() and os.access(path, os.X_OK):
        return path
    where = f"{BROWSER_ENV}={configured}" if configured else str(DEBIAN_CHROMIUM)
    raise ExportUnavailable(
        f"SVG/PDF export needs Chromium and {where} is not an executable file; install it "
        f"(`apt-get install chromium`) or set {BROWSER_ENV} to a Chromium or Chrome executable"
    )


def first_line(exc: BaseException) -> str:
    """``exc`` as one short line (choreographer's errors carry a tuple of sentences)."""
    first = exc.args[0] if exc.args else ""
    text = first if isinstance(first, str) else str(exc)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def export_problem() -> str | None:
    """Why figures cannot be exported here (for the page to say before anyone clicks), or
    None. Only checks that the browser exists; starting it is left to the first export."""
    try:
        browser_path()
    except ExportUnavailable as exc:
        return str(exc)
    return None


class Renderer:
    """One headless Chromium, started on first use and kept for the next export.

    ``render`` is safe to call from any thread; calls run one at a time (kaleido renders in
    one tab), each bounded by ``render_timeout_s``. Failures are raised with their cause
    chained, never logged here: the server logs them, the CLI prints one line.
    """

    def __init__(
        self,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        render_timeout_s: float = RENDER_TIMEOUT_S,
        idle_close_s: float = IDLE_CLOSE_S,
    ):
        self.start_timeout_s = start_timeout_s
        self.render_timeout_s = render_timeout_s
        self.idle_close_s = idle_close_s
        self._lock = threading.Lock()
        self._warming = threading.Lock()  # held while a warm-up thread waits or starts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido: Any = None  # kaleido.Kaleido once started
        self._browser: Path | None = None
        self._idle_timer: threading.Timer | None = None
        self._last_used = 0.0

    @property
    def running(self) -> bool:
        """Whether a browser is open right now."""
        return self._kaleido is not None

    def render(self, figure: dict[str, Any], fmt: Format) -> bytes:
        """``figure`` (a plotly figure dict, sized by its layout) as SVG or PDF bytes."""
        if fmt not in MIMETYPES:
            raise ValueError(f"format must be one of {', '.join(MIMETYPES)}, not {fmt!r}")
        path = browser_path()
        with self._lock:
            self._cancel_idle_close()
            try:
                # A browser that died since the last export (killed, out of memory) fails at
                # once: one more try on a fresh one. A fresh one that fails, or a render that
                # ran out of time, is not tried again.
                for attempt in ("reused", "fresh") if self._kaleido is not None else ("fresh",):
                    kaleido = self._open(path)
                    try:
                        data = self._run(
                            kaleido.calc_fig(figure, opts={"format": fmt}),
                            self.render_timeout_s + 5,
                        )
                        break
                    except Exception as exc:  # noqa: BLE001 - any failure: a new browser
                        self._close()
                        if attempt == "fresh" or isinstance(exc, TimeoutError):
                            raise ExportFailed(
                                f"the {fmt.upper()} did not render ({first_line(exc)})"
                            ) from exc
            finally:
                self._last_used = time.monotonic()
                self._schedule_idle_close()
        return bytes(data)

    def warm(self) -> None:
        """Start the browser in the background unless it runs already, so that the next
        ``render`` (a click that is probably coming) skips the cold start. Returns at once;
        ExportUnavailable if there is no browser."""
        path = browser_path()
        if self._kaleido is not None or not self._warming.acquire(blocking=False):
            return

        def start() -> None:
            try:
                with self._lock:
                    self._cancel_idle_close()
                    try:
                        self._open(path)
                    except ExportUnavailable as exc:
                        LOG.warning("figure export: %s", exc)  # the click will say it again
                    finally:
                        self._last_used = time.monotonic()
                        self._schedule_idle_close()
            finally:
                self._warming.release()

        threading.Thread(target=start, name="layerscope-figure-export-warm", daemon=True).start()

    def close(self) -> None:
        """Close the browser (if open) and the event loop thread; a later render restarts
        them."""
        with self._lock:
            self._cancel_idle_close()
            self._close()

    # ---- under the lock ----------------------------------------------------------------------

    def _open(self, path: Path) -> Any:
        if self._kaleido is not None and self._browser == path:
            return self._kaleido
        self._close()
        import kaleido  # here: importing it loads plotly and choreographer (~0.3 s)

        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="layerscope-figure-export", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread

        starting: list[Any] = []

        async def start() -> Any:
            browser = kaleido.Kaleido(path=str(path), mathjax=False, timeout=self.render_timeout_s)
            starting.append(browser)
            await browser.open()
            return browser

        started = time.perf_counter()
        try:
            self._kaleido = self._run(start(), self.start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a browser that will not start is "unavailable"
            # A browser process that started but never answered is closed (killed) too.
            self._kaleido = starting[0] if starting else None
            self._close()
            raise ExportUnavailable(
                f"SVG/PDF export could not start the browser {path} ({first_line(exc)})"
            ) from exc
        self._browser = path
        LOG.info("figure export: %s started in %.1f s", path, time.perf_counter() - started)
        return self._kaleido

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from the browser within {timeout_s:.0f} s") from None

    def _close(self) -> None:
        kaleido, loop, thread = self._kaleido, self._loop, self._thread
        self._kaleido, self._browser, self._loop, self._thread = None, None, None, None
        if loop is None:
            return
        if kaleido is not None:
            try:
                asyncio.run_coroutine_threadsafe(kaleido.close(), loop).result(timeout=15)
            except Exception as exc:  # noqa: BLE001 - closing on the way out: log, never raise
                LOG.warning(
                    "figure export: the browser did not close cleanly (%s)", first_line(exc)
                )
        try:  # kaleido's own tasks (a browser watchdog) must not outlive the loop
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout=5)
        except Exception as exc:  # noqa: BLE001 - closing on the way out: log, never raise
            LOG.warning("figure export: tasks left running (%s)", first_line(exc))
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()

    def _schedule_idle_close(self) -> None:
        if self._kaleido is None or self.idle_close_s <= 0:
            return
        timer = threading.Timer(self.idle_close_s, self._close_if_idle)
        timer.daemon = True
        timer.name = "layerscope-figure-export-idle"
        self._idle_timer = timer
        timer.start()

    def _cancel_idle_close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close_if_idle(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_used >= self.idle_close_s - 0.5:
                self._idle_timer = None
                self._close()


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_RENDERER: Renderer | None = None
_RENDERER_LOCK = threading.Lock()


def renderer() -> Renderer:
    """The process's one renderer (a browser per process is plenty: exports are rare)."""
    global _RENDERER
    with _RENDERER_LOCK:
        if _RENDERER is None:
            _RENDERER = Renderer()
            atexit.register(_RENDERER.close)
        return _RENDERER


def warm() -> None:
    """Start the process's renderer in the background (see ``Renderer.warm``)."""
    renderer().warm()


def render(figure: dict[str, Any], fmt: Format) -> bytes:
    """``figure`` as ``fmt`` bytes with the process's renderer (see ``Renderer.render``)."""
    return renderer().render(figure, fmt)
