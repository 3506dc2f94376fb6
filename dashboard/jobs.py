"""Background callbacks as jobs on a few threads of the server process: nothing is forked, every
job has a deadline, and nothing outlives the server.

Dash's ``DiskcacheManager`` starts each job in a *forked* copy of the server. The server is
multi-threaded and fork copies only the calling thread, so a lock that another thread held at
that instant stays locked in the child for ever. Under concurrent use those were SQLite's (a
request thread was inside diskcache): the child blocked in its first ``sqlite3.connect`` on the
allocator mutex (gdb: ``pthread_mutex_lock`` in ``sqlite3Malloc``), or spun in SQLite's busy
handler on a database lock. The page said "computing…" for ever, stopping the server waited on
the child, and the child's copy of the listening socket kept the port after the server had gone.

``ThreadJobManager`` runs jobs on a small pool of daemon threads instead, apart from the request
threads so hovering never waits behind a job. The background work here is short (a class's
explanations: milliseconds on smallcnn, under a second on VGG16, with torch releasing the GIL),
uses the models and caches the model service already holds for the request threads, and starts
no process. A job still unfinished at its deadline is answered with its callback's timeout
result (``on_timeout``) and its thread is replaced: a Python thread cannot be killed, so it ends
when its work does and what it returns then is dropped. Jobs and results live in memory, since
polls reach the process that started the job (``python main.py serve`` is one process; the
scale-out path is Celery, see dashboard/worker.py). The manager speaks dash's background-callback
protocol through the same internals as dash's own managers (dash is pinned in requirements.txt).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import math
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.background_callback._proxy_set_props import ProxySetProps
from dash.background_callback.managers import BaseBackgroundCallbackManager
from dash.exceptions import PreventUpdate

from dashboard.job_board import CANCELLED, DONE, QUEUED, RUNNING, JobBoard
from pipelines import report
from pipelines.errors import Cancelled, UserError

LOG = logging.getLogger(__name__)

WORKERS = 4  # jobs running at once; later ones wait for a thread (their deadline still runs)
TIMEOUT_S = 30.0  # from the click to the answer: generous for a VGG16 explanation (< 1 s)
TIMEOUT_ENV = "LAYERSCOPE_JOB_TIMEOUT_S"
# Slow jobs (occlusion, Integrated Gradients: up to a minute on VGG16 on 2 cores) run on threads
# of their own, so a burst of them never makes a quick job wait for a thread.
SLOW_WORKERS = 2
SLOW_TIMEOUT_S = 600.0
SLOW_TIMEOUT_ENV = "LAYERSCOPE_SLOW_JOB_TIMEOUT_S"
FAST, SLOW = "fast", "slow"
_SLOW_JOB = "_layerscope_slow_job"
UNCOLLECTED_S = 600.0  # a result no page came back for (the tab was closed) is dropped then
_TIMEOUT_RESULT = "_layerscope_timeout_result"

F = TypeVar("F", bound=Callable[..., Any])


def on_timeout(result: Callable[..., Any]) -> Callable[[F], F]:
    """Declare what a background callback answers when its job runs past the deadline:
    ``result(seconds, *callback_args)``. Built from the callback's own arguments, it can say
    which request failed, so the page shows it where it shows the callback's other errors.
    Without one the poll answers dash's background-callback error (an HTTP 500)."""

    def mark(function: F) -> F:
        setattr(function, _TIMEOUT_RESULT, result)
        return function

    return mark


def slow_job(function: F) -> F:
    """Declare a background callback slow (many model passes): its jobs run on the slow lane's
    threads with the slow deadline, and its progress callback raises ``Cancelled`` once the job
    is cancelled or timed out, so the work stops between passes instead of running on."""
    setattr(function, _SLOW_JOB, True)
    return function


def job_timeout_s(variable: str = TIMEOUT_ENV, default: float = TIMEOUT_S) -> float:
    """Seconds a background job may take: ``$variable``, else ``default``."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(
            f"{variable}={raw!r} is not a number of seconds above 0; set e.g. "
            f"{variable}=60, or unset it for the default {default:g} s"
        )
    return seconds


@dataclass(frozen=True)
class _Callback:
    """A registered background callback, as ``make_job_fn`` hands it to ``call_job_fn``."""

    function: Callable[..., Any]
    progress: bool
    timeout_result: Callable[..., Any] | None
    lane: str = FAST


@dataclass(eq=False)
class _Lane:
    """A queue and the threads that serve it (its fields are guarded by the manager's lock)."""

    name: str
    workers: int
    timeout_s: float
    queue: queue.SimpleQueue[_Job | None] = field(default_factory=queue.SimpleQueue)
    threads: set[_Worker] = field(default_factory=set)
    abandoned: int = 0
    used: bool = False  # threads start with a lane's first job


class _Worker(threading.Thread):
    def __init__(self, manager: ThreadJobManager, lane: _Lane, number: int):
        super().__init__(name=f"layerscope-{lane.name}-job-{number}", daemon=True)
        self.manager = manager
        self.lane = lane
        self.abandoned = False  # its job ran past the deadline and another thread took its place

    def run(self) -> None:
        self.manager._work(self)


@dataclass(eq=False)
class _Job:
    """One job; its mutable fields are guarded by the manager's lock."""

    id: str
    key: str
    callback: _Callback
    args: Any
    context: dict[str, Any]
    deadline: float
    timeout_output: Any
    state: str = QUEUED
    result: Any = None
    finished: float = 0.0
    timed_out: bool = False
    worker: _Worker | None = field(default=None, repr=False)


class ThreadJobManager(BaseBackgroundCallbackManager):
    """Dash's background-callback manager protocol, with jobs on ``workers`` daemon threads of
    this process that time out after ``timeout_s`` seconds (default: ``job_timeout_s()``), and
    ``slow_job`` callbacks' jobs on ``slow_workers`` threads of their own that time out after
    ``slow_timeout_s`` (default: ``$LAYERSCOPE_SLOW_JOB_TIMEOUT_S``, else ``SLOW_TIMEOUT_S``)."""

    def __init__(
        self,
        workers: int = WORKERS,
        timeout_s: float | None = None,
        slow_workers: int = SLOW_WORKERS,
        slow_timeout_s: float | None = None,
    ):
        self.workers = workers
        self.timeout_s = job_timeout_s() if timeout_s is None else float(timeout_s)
        if slow_timeout_s is None:
            slow_timeout_s = job_timeout_s(SLOW_TIMEOUT_ENV, SLOW_TIMEOUT_S)
        self._lanes = {
            FAST: _Lane(FAST, workers, self.timeout_s),
            SLOW: _Lane(SLOW, slow_workers, float(slow_timeout_s)),
        }
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._started = 0
        self._progress: dict[str, list[Any]] = {}
        self._updated_props: dict[str, dict[str, Any]] = {}
        self._secret: bytes | None = None
        self._closed = False
        self._board: JobBoard | None = None
        super().__init__(cache_by=None)

    def share_across_processes(self, board: JobBoard) -> None:
        """Serve polls from several worker processes (dashboard/job_board.py): call before
        they fork. The signing secret is fixed now, so every worker trusts every handle."""
        self._board = board
        with self._lock:
            if self._secret is None:
                self._secret = os.urandom(32)

    # ---- what dash calls ------------------------------------------------------------------

    def make_job_fn(self, fn: Callable[..., Any], progress: bool, key: str | None = None) -> Any:
        lane = SLOW if getattr(fn, _SLOW_JOB, False) else FAST
        return _Callback(fn, bool(progress), getattr(fn, _TIMEOUT_RESULT, None), lane)

    def call_job_fn(self, key: str, job_fn: _Callback, args: Any, context: dict[str, Any]) -> str:
        """Queue a job; returns its id (the handle dash signs and the page polls with)."""
        lane = self._lanes[job_fn.lane]
        timeout_output = _timeout_output(job_fn, args, lane.timeout_s)
        job = _Job(
            id=uuid.uuid4().hex,
            key=key,
            callback=job_fn,
            args=args,
            context=dict(context),
            deadline=time.monotonic() + lane.timeout_s,
            timeout_output=timeout_output,
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is stopping; no new background jobs start")
            self._jobs[job.id] = job
            lane.used = True
            self._sweep()  # which also starts the threads, on the first job
        if self._board is not None:
            self._board.opened(job.id, key, lane.timeout_s, timeout_output)
        lane.queue.put(job)
        return job.id

    def job_running(self, job: str | None) -> bool:
        with self._lock:
            self._sweep()
            entry = self._jobs.get(job) if job else None
            if entry is not None:
                return entry.state in (QUEUED, RUNNING)
        # Started by another worker process.
        return job is not None and self._board is not None and self._board.still_running(job)

    def get_result(self, key: str, job: str | None) -> Any:
        """The job's answer once it has one (the callback's output, its error, or its timeout
        result), handed out once; ``UNDEFINED`` while it runs."""
        with self._lock:
            self._sweep()
            entry = self._jobs.get(job) if job else None
            if entry is not None:
                if entry.key != key or entry.state != DONE:
                    return self.UNDEFINED
                self._jobs.pop(entry.id)
                self._progress.pop(key, None)  # set_props are collected by this same poll
                if self._board is not None:
                    self._board.take_result(entry.id, key, self.UNDEFINED)
                return entry.result
        if not job or self._board is None:
            return self.UNDEFINED
        return self._board.take_result(job, key, self.UNDEFINED)  # another worker's job

    def terminate_job(self, job: str | None) -> None:
        """Forget a job the page no longer waits for (a newer click replaced it); one still
        running finishes its work and its result is dropped."""
        with self._lock:
            entry = self._jobs.get(job) if job else None
            if entry is not None:
                if entry.state in (QUEUED, RUNNING):
                    entry.state = CANCELLED
                self._forget(entry)
        if job and self._board is not None:
            self._board.cancel(job)  # its owner, maybe another worker, stops at its next report

    def get_progress(self, key: str) -> list[Any] | None:
        with self._lock:
            progress = self._progress.pop(key, None)
        if self._board is not None:
            shared = self._board.take_progress(key)
            progress = progress if progress is not None else shared
        return progress

    def get_updated_props(self, key: str) -> dict[str, Any]:
        with self._lock:
            props = self._updated_props.pop(key, {})
        if self._board is not None:
            props = {**self._board.take_props(key), **props}
        return props

    def get_or_create_signing_secret(self, generate: Callable[[], bytes]) -> bytes:
        # Every handle comes back to this process, or to a sibling worker forked after
        # ``share_across_processes`` fixed the secret: either way this one is shared.
        with self._lock:
            if self._secret is None:
                self._secret = generate()
            return self._secret

    # ---- lifecycle ------------------------------------------------------------------------

    def shutdown(self, wait_s: float = 0.0) -> None:
        """Start no more jobs: every job is dropped, idle threads end, and running ones get up
        to ``wait_s`` seconds to finish their work (they are daemon threads: whatever is still
        running then ends with the process)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if job.state in (QUEUED, RUNNING):
                    job.state = CANCELLED
            self._jobs.clear()
            threads = {lane: len(lane.threads) + lane.abandoned for lane in self._lanes.values()}
        for lane, count in threads.items():
            for _ in range(count):
                lane.queue.put(None)
        deadline = time.monotonic() + wait_s
        for thread in threading.enumerate():
            if isinstance(thread, _Worker) and thread.manager is self:
                thread.join(max(0.0, deadline - time.monotonic()))

    # ---- inside ---------------------------------------------------------------------------

    def _add_workers(self) -> None:
        """Top each lane up to its ``workers`` threads (lock held). Threads left running past
        their deadline count towards a cap of as many again: beyond it the lane stays short and
        jobs wait (and time out) rather than threads piling up behind work that never ends."""
        for lane in self._lanes.values():
            while (
                lane.used
                and not self._closed
                and len(lane.threads) < lane.workers
                and len(lane.threads) + lane.abandoned < 2 * lane.workers
            ):
                self._started += 1
                worker = _Worker(self, lane, self._started)
                lane.threads.add(worker)
                worker.start()

    def _sweep(self) -> None:
        """Answer every job past its deadline with its timeout result, and drop results no page
        collected (lock held). Runs on each poll and each new job, so no thread watches."""
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.state in (QUEUED, RUNNING) and now >= job.deadline:
                report.warn(
                    f"background job {job.id} took longer than "
                    f"{self._lanes[job.callback.lane].timeout_s:g} s "
                    f"({job.state}); answering with its timeout result"
                )
                if job.state == RUNNING and job.worker is not None:
                    worker = job.worker
                    worker.abandoned = True
                    worker.lane.threads.discard(worker)
                    worker.lane.abandoned += 1
                job.state, job.result, job.finished = DONE, job.timeout_output, now
                job.timed_out = True
                if self._board is not None:
                    self._board.finished(job.id, job.timeout_output)
            elif job.state == DONE and now - job.finished > UNCOLLECTED_S:
                self._forget(job)
        self._add_workers()

    def _forget(self, job: _Job) -> None:
        """Drop a job and what it left for a poll that will not come (lock held)."""
        self._jobs.pop(job.id, None)
        self._progress.pop(job.key, None)
        self._updated_props.pop(job.key, None)

    def _work(self, worker: _Worker) -> None:
        lane = worker.lane
        while True:
            job = lane.queue.get()
            if job is None:
                with self._lock:
                    lane.threads.discard(worker)
                return
            with self._lock:
                if job.state != QUEUED:  # cancelled, or timed out while it waited
                    continue
                job.state, job.worker = RUNNING, worker
            if self._board is not None:
                self._board.running(job.id)
            output = self._run(job)
            with self._lock:
                job.worker = None
                if job.state == RUNNING:
                    job.state, job.result, job.finished = DONE, output, time.monotonic()
                    if self._board is not None:
                        self._board.finished(job.id, output)
                elif job.timed_out:
                    report.warn(
                        f"background job {job.id} finished "
                        f"{time.monotonic() - job.deadline:.1f} s after its deadline; result dropped"
                    )
                if worker.abandoned:
                    lane.abandoned -= 1
                    if self._closed or len(lane.threads) >= lane.workers:
                        return
                    worker.abandoned = False  # the pool is short: this thread rejoins it
                    lane.threads.add(worker)

    def _run(self, job: _Job) -> Any:
        """The callback's output, or what dash expects in its place: a no-update marker for
        ``PreventUpdate``, an error record for an exception."""
        callback = job.callback

        def set_progress(value: Any) -> None:
            progress = list(value) if isinstance(value, list | tuple) else [value]
            cancelled_elsewhere = self._board is not None and self._board.cancelled(job.id)
            with self._lock:
                if cancelled_elsewhere and job.state == RUNNING:
                    job.state = CANCELLED  # by a poll that reached another worker
                if callback.lane == SLOW and job.state != RUNNING:
                    # Cancelled by the page, or answered with its timeout result: stop here.
                    raise Cancelled(f"background job {job.id} was {job.state}")
                if self._board is None:
                    self._progress[job.key] = progress
            if self._board is not None:
                self._board.put_progress(job.key, progress)

        def set_props(component_id: str, props: dict[str, Any]) -> None:
            if self._board is not None:
                self._board.merge_props(job.key, component_id, props)
                return
            with self._lock:
                pending = self._updated_props.setdefault(job.key, {})
                pending[component_id] = {**pending.get(component_id, {}), **props}

        def call() -> Any:
            # What dash's own job functions give a callback: its context, no request.
            ctx = AttributeDict(**job.context)
            ctx.ignore_register_page = False
            ctx.updated_props = ProxySetProps(set_props)
            context_value.set(ctx)
            extra = [set_progress] if callback.progress else []
            args = job.args
            if isinstance(args, dict):
                output = callback.function(*extra, **args)
            elif isinstance(args, list | tuple):
                output = callback.function(*extra, *args)
            else:
                output = callback.function(*extra, args)
            return asyncio.run(output) if inspect.iscoroutine(output) else output

        try:
            # A fresh context per job: jobs sharing a thread never see each other's.
            return contextvars.Context().run(call)
        except PreventUpdate:
            return {"_dash_no_update": "_dash_no_update"}
        except Cancelled:
            return {"_dash_no_update": "_dash_no_update"}  # nobody waits for this answer
        except Exception as exc:  # noqa: BLE001 - the page gets the error, the log the trace
            LOG.exception("background job %s failed", job.id)
            return {"background_callback_error": {"msg": str(exc), "tb": traceback.format_exc()}}


def _timeout_output(callback: _Callback, args: Any, seconds: float) -> Any:
    """What a job answers if it runs out of time (computed up front: it is a pure function of
    the arguments, and the deadline then never waits on callback code)."""
    if callback.timeout_result is None:
        message = f"the background job took longer than {seconds:g} s; try again"
        return {"background_callback_error": {"msg": message, "tb": ""}}
    if isinstance(args, dict):
        return callback.timeout_result(seconds, **args)
    if isinstance(args, list | tuple):
        return callback.timeout_result(seconds, *args)
    return callback.timeout_result(seconds, args)
