"""Durable jobs: heavy work started from the page (training, precompute), one at a time.

A job is a ``main.py`` command line (``["precompute", "--dataset", "digits", ...]``), a title and
the run id it writes. It runs as its own process, ``python main.py <argv> --data-dir DIR``, so
the shell's code path is reused byte for byte, and its CPU work, signal handling and crashes
never touch the server. Everything about a job lives in ``<data-dir>/jobs/<job-id>/``:
``job.json`` (a ``JobRecord``, written atomically), ``log.txt`` (the process's stdout+stderr)
and, while a cancel is pending, a ``cancel`` marker file.

Who runs jobs:

- ``JobRunner`` (a daemon thread of the server) runs queued jobs oldest first, one at a time
  per data dir: it holds an exclusive ``flock`` on ``jobs/runner.lock``, so of several server
  processes on one machine (gunicorn workers) only one runs jobs. The child process gets
  ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the server (even on ``kill -9``).
- With ``REDIS_URL`` set, ``submit`` also sends a Celery task (``layerscope.run_job``) to the
  ``layerscope-jobs`` queue and the server runs no runner; a worker started with
  ``--concurrency 1`` (dashboard/job_worker.py) calls the same ``run_job``.

Cancel may arrive in any process: it writes the marker (which the supervising loop polls) and
sends SIGINT to the recorded pid; the supervisor sends SIGKILL after ``CANCEL_GRACE_S``.
A precompute stopped by SIGINT or SIGKILL stays resumable: resubmitting it continues the run.

Restart behaviour (``recover``): a job recorded ``running`` whose process is gone (pid and
process start time, so a reused pid is not mistaken for it) is queued again with a note, and
the precompute resumes where it stopped; a job started ``MAX_ATTEMPTS`` times is failed instead.
A server that stops cleanly (``JobRunner.stop``) interrupts its job with SIGINT and queues it
again, so it resumes on the next start rather than being lost or shown as cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import psutil

from pipelines.errors import UserError
from pipelines.io import LockBusy, atomic_write_bytes, exclusive_lock, is_locked
from pipelines.lifetime import die_with_parent

LOG = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
STATES: tuple[JobState, ...] = ("queued", "running", "done", "failed", "cancelled")
FINISHED: frozenset[JobState] = frozenset({"done", "failed", "cancelled"})

COMMANDS = ("precompute", "train")  # what a job may run; never an arbitrary command
JOBS_DIR = "jobs"
JOB_FILE = "job.json"
LOG_FILE = "log.txt"
CANCEL_FILE = "cancel"
RUNNER_LOCK = "runner.lock"
STATE_LOCK = "state.lock"
# A job is started at most this many times: a job that takes the server down with it (out of
# memory) must not restart it for ever.
MAX_ATTEMPTS = 3
# From SIGINT to SIGKILL. A precompute stops within about two seconds of a Ctrl-C
# (tests/test_interrupt.py); the margin is for a loaded machine.
CANCEL_GRACE_S = 10.0
POLL_S = 0.25  # how often a supervisor looks for a cancel marker, and an idle runner for work
ATTEMPT_HEADER = "--- layerscope job, attempt"
EXIT_INTERRUPTED = 130  # main.py's status after Ctrl-C
REDIS_ENV = "REDIS_URL"
CELERY_TASK = "layerscope.run_job"
CELERY_QUEUE = "layerscope-jobs"  # apart from the dashboard's background callbacks' queue
MAIN = Path(__file__).resolve().parent.parent / "main.py"

# 20261201T132336123456Z-1a2b3c4d: UTC time to the microsecond (ids sort by submission), then
# random hex so two submissions in one microsecond, or on two machines, never collide.
JOB_ID_PATTERN = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")


@dataclass(frozen=True)
class JobRecord:
    """One job, as ``job.json`` stores it. Times are seconds since the epoch.

    ``pid``, ``pid_started`` (the process's start time) and ``host`` identify the process of
    the current attempt; ``attempts`` counts starts; ``note`` says what happened to the job
    besides its state (requeued after a restart, ...); ``error`` is one line for a failure.
    """

    id: str
    title: str
    argv: tuple[str, ...]
    run_id: str | None
    state: JobState = "queued"
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_started: float | None = None
    host: str | None = None
    exit_code: int | None = None
    error: str | None = None
    attempts: int = 0
    note: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "argv": list(self.argv),
            "run_id": self.run_id,
            "state": self.state,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "host": self.host,
            "exit_code": self.exit_code,
            "error": self.error,
            "attempts": self.attempts,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        """Raises ValueError (or KeyError/TypeError) on a record this code cannot read."""
        state = str(data["state"])
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        argv = data["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv is not a list of strings")
        return cls(
            id=str(data["id"]),
            title=str(data["title"]),
            argv=tuple(argv),
            run_id=_optional(data.get("run_id"), str),
            state=state,
            created=float(data["created"]),
            started=_optional(data.get("started"), float),
            ended=_optional(data.get("ended"), float),
            pid=_optional(data.get("pid"), int),
            pid_started=_optional(data.get("pid_started"), float),
            host=_optional(data.get("host"), str),
            exit_code=_optional(data.get("exit_code"), int),
            error=_optional(data.get("error"), str),
            attempts=int(data.get("attempts") or 0),
            note=_optional(data.get("note"), str),
        )


def _optional(value: Any, kind: Callable[[Any], Any]) -> Any:
    return None if value is None else kind(value)


# ---- where jobs live -------------------------------------------------------------------------


def jobs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / JOBS_DIR


def job_dir(data_dir: Path, job_id: str) -> Path:
    """The job's folder. ``job_id`` comes from clients, so only the id pattern is accepted,
    never anything that could name another path."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise UserError(
            f"{job_id!r} is not a job id; `python main.py runs` lists the jobs and their ids"
        )
    return jobs_dir(data_dir) / job_id


def new_job_id(now: float | None = None) -> str:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int(now * 1_000_000) % 1_000_000  # floored: never rounds up into the next second
    return f"{stamp}{micros:06d}Z-{secrets.token_hex(4)}"


@contextlib.contextmanager
def state_lock(data_dir: Path) -> Iterator[None]:
    """Serialises every read-modify-write of a job record, across threads and processes (the
    runner finishing a job while another process cancels it). Held for milliseconds."""
    folder = jobs_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, exclusive_lock(folder / STATE_LOCK):
        yield


# flock locks belong to an open file, so two threads of one process that each open the lock
# file exclude each other too; the thread lock only saves them a second open.
_THREAD_LOCK = threading.RLock()


def write_job(data_dir: Path, record: JobRecord) -> None:
    data = json.dumps(record.to_json(), indent=1).encode()
    atomic_write_bytes(job_dir(data_dir, record.id) / JOB_FILE, data)


def read_job(data_dir: Path, job_id: str) -> JobRecord:
    """The job's record. A missing job raises ``UserError``; an unreadable record is shown as
    a failed job whose note says what to do, so one bad file never breaks the list."""
    path = job_dir(data_dir, job_id) / JOB_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(
            f"no job {job_id} in {jobs_dir(data_dir)}; `python main.py runs` lists the jobs"
        ) from None
    try:
        record = JobRecord.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        return JobRecord(
            id=job_id,
            title="(unreadable job)",
            argv=(),
            run_id=None,
            state="failed",
            error=f"its record {path} is corrupt ({exc})",
            note=f"delete {path.parent} and submit the job again",
        )
    if record.id != job_id:  # a folder copied by hand: the folder's name is the id
        record = replace(record, id=job_id)
    return record


def list_jobs(data_dir: Path) -> list[JobRecord]:
    """Every job, newest first."""
    folder = jobs_dir(data_dir)
    if not folder.is_dir():
        return []
    ids = [p.name for p in folder.iterdir() if JOB_ID_PATTERN.fullmatch(p.name) and p.is_dir()]
    records = []
    for job_id in sorted(ids, reverse=True):
        with contextlib.suppress(UserError):  # deleted between the listing and the read
            records.append(read_job(data_dir, job_id))
    return records


def log_tail(data_dir: Path, job_id: str, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of the job's output as a terminal would show them: of a
    progress bar redrawn with carriage returns, only its last state."""
    path = job_dir(data_dir, job_id) / LOG_FILE
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))  # bars make long lines; enough for any tail
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    shown = [line for line in shown if line]
    return shown[-lines:] if lines > 0 else []


# ---- submitting and cancelling ---------------------------------------------------------------


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """The job's command line after ``main.py``, checked: a ``precompute`` or ``train`` command
    with string arguments, and no ``--data-dir`` (the queue supplies it)."""
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise UserError(
            'a job is a list of main.py arguments, e.g. ["precompute", "--dataset", "digits", '
            '"--model", "smallcnn"]'
        )
    if argv[0] not in COMMANDS:
        raise UserError(
            f"a job runs `main.py {' or '.join(COMMANDS)}`, not {argv[0]!r}; start other "
            "commands from the shell"
        )
    if any(a == "--data-dir" or a.startswith("--data-dir=") for a in argv):
        raise UserError(
            "leave --data-dir out of a job's arguments: the job queue runs it in its own data dir"
        )
    return tuple(argv)


def submit(data_dir: Path, argv: Sequence[str], title: str, run_id: str | None) -> JobRecord:
    """Queue ``main.py <argv>`` for ``data_dir``; returns the queued record. With ``REDIS_URL``
    set the job is also sent to the Celery workers."""
    record = JobRecord(
        id=new_job_id(),
        title=title.strip() or " ".join(argv),
        argv=check_argv(argv),
        run_id=run_id,
        state="queued",
        created=time.time(),
    )
    try:
        write_job(data_dir, record)
    except OSError as exc:
        raise UserError(
            f"cannot write the job under {jobs_dir(data_dir)} ({exc.strerror}); serve a "
            "writable --data-dir to start jobs from the page"
        ) from None
    redis_url = os.environ.get(REDIS_ENV)
    if redis_url:
        send_to_celery(redis_url, data_dir, record.id)
    return record


def send_to_celery(redis_url: str, data_dir: Path, job_id: str) -> None:
    """Hand the job to a Celery worker by task name: the server never imports the worker."""
    celery_app(redis_url).send_task(
        CELERY_TASK, args=[job_id, str(Path(data_dir).resolve())], queue=CELERY_QUEUE
    )


def cancel(data_dir: Path, job_id: str) -> JobRecord:
    """Cancel a job from any process. Queued: cancelled at once. Running: the ``cancel`` marker
    for its supervisor (which sends SIGKILL after the grace period) and SIGINT to its process
    now. Finished: unchanged. Returns the record as it is now."""
    with state_lock(data_dir):
        record = read_job(data_dir, job_id)
        if record.state == "queued":
            record = replace(
                record, state="cancelled", ended=time.time(), note="cancelled before it started"
            )
            write_job(data_dir, record)
            return record
        if record.state != "running":
            return record
        (job_dir(data_dir, job_id) / CANCEL_FILE).touch()
        if on_this_host(record) and not process_alive(record):
            if not is_locked(jobs_dir(data_dir) / RUNNER_LOCK):
                # Its server died and none runs now to notice the marker.
                record = finished(record, "cancelled", None, "cancelled; its process had stopped")
                write_job(data_dir, record)
                _remove_marker(data_dir, job_id)
            return record
    send_signal(record, signal.SIGINT)
    return record


# ---- processes -------------------------------------------------------------------------------


def this_host() -> str:
    return socket.gethostname()


def on_this_host(record: JobRecord) -> bool:
    return record.host == this_host()


def job_process(record: JobRecord) -> psutil.Process | None:
    """The job's process if it still runs: the recorded pid *and* start time, so a pid the
    system has since given to another process is never signalled or mistaken for the job."""
    if record.pid is None or record.pid_started is None or not on_this_host(record):
        return None
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.pid_started) > 0.5:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def process_alive(record: JobRecord) -> bool:
    return job_process(record) is not None


def send_signal(record: JobRecord, signum: int) -> None:
    process = job_process(record)
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def start_process(data_dir: Path, record: JobRecord) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(MAIN), *record.argv, "--data-dir", str(data_dir)]
    log_path = job_dir(data_dir, record.id) / LOG_FILE
    with open(log_path, "ab") as log:
        # Attempts append to one log; the header keeps a resumed attempt's lines (and error)
        # apart from those of the attempt before.
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        command_line = " ".join(record.argv)
        header = f"{ATTEMPT_HEADER} {record.attempts + 1}, {stamp}: main.py {command_line}"
        log.write(f"\n{header}\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            cwd=MAIN.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Unbuffered: the page's log tail follows the job as it runs.
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # Its own session: a Ctrl-C at the server's terminal reaches the server only, which
            # interrupts the job itself and queues it again (a direct hit would read "cancelled").
            start_new_session=True,
            # SIGKILL when the thread that started it dies (the server was killed).
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )


# ---- running one job -------------------------------------------------------------------------


def this_attempt(output: Sequence[str]) -> list[str]:
    """The lines of ``output`` (a log tail) written by the latest attempt."""
    starts = [i for i, line in enumerate(output) if line.startswith(ATTEMPT_HEADER)]
    return list(output[starts[-1] + 1 :] if starts else output)


def error_line(output: Sequence[str]) -> str | None:
    """The job's one-line error: the last ``error: ...`` line, else (a crash) the last line of
    the traceback."""
    for line in reversed(output):
        if line.startswith("error: "):
            return line
    for line in reversed(output):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return None


def finished(record: JobRecord, state: JobState, code: int | None, note: str | None) -> JobRecord:
    return replace(record, state=state, ended=time.time(), exit_code=code, note=note)


def outcome(data_dir: Path, record: JobRecord, code: int, stopping: bool) -> JobRecord:
    """The record of an attempt that ended with exit status ``code`` (negative: a signal)."""
    cancelled = (job_dir(data_dir, record.id) / CANCEL_FILE).exists()
    if code == 0:
        return finished(record, "done", code, None)
    if cancelled:
        return finished(record, "cancelled", code, "cancelled; run the job again to resume")
    if stopping:
        return replace(
            record,
            state="queued",
            exit_code=code,
            pid=None,
            pid_started=None,
            note="interrupted when the server stopped; it resumes when the server starts again",
        )
    if code in (EXIT_INTERRUPTED, -signal.SIGINT):
        return finished(record, "cancelled", code, "interrupted (SIGINT)")
    error = error_line(this_attempt(log_tail(data_dir, record.id, 200)))
    if error is None:
        error = (
            f"killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with status {code}; see {job_dir(data_dir, record.id) / LOG_FILE}"
        )
    return replace(finished(record, "failed", code, None), error=error)


def claim(data_dir: Path, job_id: str) -> tuple[JobRecord, subprocess.Popen[bytes] | None]:
    """Start the job if it is queued (or its recorded process is gone: recovered first).
    Started under the state lock, so a cancel cannot slip in between the check and the start."""
    with state_lock(data_dir):
        record = recover_job(data_dir, read_job(data_dir, job_id))
        if record.state != "queued":
            return record, None
        if record.attempts >= MAX_ATTEMPTS:
            record = finished(record, "failed", None, record.note)
            record = replace(
                record,
                error=f"the job was started {record.attempts} times and stopped with the server "
                "each time; check the log, then submit it again",
            )
            write_job(data_dir, record)
            return record, None
        _remove_marker(data_dir, job_id)
        process = start_process(data_dir, record)
        try:
            started_at = psutil.Process(process.pid).create_time()
        except psutil.Error:  # already gone: the record still names it, the wait reaps it
            started_at = time.time()
        record = replace(
            record,
            state="running",
            started=time.time(),
            ended=None,
            pid=process.pid,
            pid_started=started_at,
            host=this_host(),
            exit_code=None,
            error=None,
            attempts=record.attempts + 1,
        )
        write_job(data_dir, record)
        return record, process


def supervise(
    data_dir: Path,
    record: JobRecord,
    process: subprocess.Popen[bytes],
    should_stop: Callable[[], bool],
) -> JobRecord:
    """Wait for the job's process, passing on a cancel (marker file) or the server's stop as
    SIGINT, then SIGKILL after the grace period; record how it ended."""
    marker = job_dir(data_dir, record.id) / CANCEL_FILE
    interrupted_at: float | None = None
    stopping = False
    while True:
        try:
            code = process.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            pass
        stopping = stopping or should_stop()
        if interrupted_at is None and (stopping or marker.exists()):
            interrupted_at = time.monotonic()
            process.send_signal(signal.SIGINT)
        elif interrupted_at is not None and time.monotonic() - interrupted_at > CANCEL_GRACE_S:
            process.kill()
    with state_lock(data_dir):
        current = read_job(data_dir, record.id)
        if current.state == "running" and current.pid == record.pid:
            current = outcome(data_dir, current, code, stopping)
            write_job(data_dir, current)
        _remove_marker(data_dir, record.id)
        return current


def run_job(
    data_dir: Path, job_id: str, should_stop: Callable[[], bool] = lambda: False
) -> JobRecord:
    """Run one job to its end in this process's care (the runner thread, a Celery task);
    returns its final record. Does nothing to a job that is not queued (cancelled meanwhile,
    or already taken by another runner)."""
    data_dir = Path(data_dir)
    record, process = claim(data_dir, job_id)
    if process is None:
        return record
    return supervise(data_dir, record, process, should_stop)


def _remove_marker(data_dir: Path, job_id: str) -> None:
    (job_dir(data_dir, job_id) / CANCEL_FILE).unlink(missing_ok=True)


# ---- restart behaviour -----------------------------------------------------------------------


def recover_job(data_dir: Path, record: JobRecord) -> JobRecord:
    """A job recorded running on this machine whose process is gone: queued again (its
    precompute resumes), or cancelled if a cancel was pending. Call with the state lock held,
    from the one process allowed to run jobs. A process still alive with no one supervising
    it (its server died on a system without PDEATHSIG) is killed first."""
    if record.state != "running" or not on_this_host(record):
        return record
    process = job_process(record)
    if process is not None:
        return record  # still supervised by someone (a Celery worker on this host)
    if (job_dir(data_dir, record.id) / CANCEL_FILE).exists():
        record = finished(record, "cancelled", None, "cancelled; run the job again to resume")
        _remove_marker(data_dir, record.id)
    else:
        record = replace(
            record,
            state="queued",
            pid=None,
            pid_started=None,
            note="resumed after the server stopped",
        )
    write_job(data_dir, record)
    return record


def kill_orphan(record: JobRecord) -> None:
    """SIGKILL a job's process that outlived its server (no PDEATHSIG off Linux)."""
    process = job_process(record)
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.kill()
            process.wait(timeout=10)


def recover(data_dir: Path) -> list[JobRecord]:
    """On the runner's start: every job this machine was running when its server stopped is
    queued again (or failed, after ``MAX_ATTEMPTS`` starts: see ``claim``). Only the holder of
    the runner lock calls this, so any job process still alive here has lost its supervisor."""
    changed = []
    for record in list_jobs(data_dir):
        if record.state == "running" and on_this_host(record):
            kill_orphan(record)
            with state_lock(data_dir):
                current = read_job(data_dir, record.id)
                updated = recover_job(data_dir, current)
            if updated != current:
                changed.append(updated)
    return changed


def next_queued(data_dir: Path) -> JobRecord | None:
    queued = [r for r in list_jobs(data_dir) if r.state == "queued"]
    return queued[-1] if queued else None  # the list is newest first


# ---- the server's runner ---------------------------------------------------------------------


@dataclass
class JobRunner:
    """Runs ``data_dir``'s queued jobs, oldest first and one at a time, on a daemon thread of
    the server. Of several processes on one machine, only the holder of ``jobs/runner.lock``
    runs jobs; the others keep trying for the lock, and take over if its holder dies.
    With ``REDIS_URL`` set, ``start`` does nothing: Celery workers run the jobs."""

    data_dir: Path
    stop_wait_s: float = CANCEL_GRACE_S
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> JobRunner:
        if os.environ.get(REDIS_ENV) or self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="layerscope-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """On the server's way out: the running job gets SIGINT (it saves what it can) and is
        queued again, to resume on the next start; waits up to ``stop_wait_s`` + a moment."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_wait_s + 5.0)
            self._thread = None

    def _loop(self) -> None:
        folder = jobs_dir(self.data_dir)
        while not self._stop.is_set():
            # Nothing is written before the first job is submitted: serving a read-only data
            # dir writes nothing, and a data dir without jobs gets no jobs/ folder.
            if not folder.is_dir():
                self._stop.wait(1.0)
                continue
            try:
                with exclusive_lock(folder / RUNNER_LOCK, wait=False):
                    self._run_while_holding_lock()
            except LockBusy:
                pass  # another process runs this data dir's jobs
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    LOG.exception("the job runner for %s failed; retrying", self.data_dir)
                # else a read-only data dir: no job can be run (or submitted) here
            except Exception:
                # A disk error must not end the thread for the server's lifetime: log, retry.
                LOG.exception("the job runner for %s failed; retrying", self.data_dir)
            self._stop.wait(1.0)

    def _run_while_holding_lock(self) -> None:
        recover(self.data_dir)
        while not self._stop.is_set():
            record = next_queued(self.data_dir)
            if record is None:
                self._stop.wait(POLL_S)
                continue
            run_job(self.data_dir, record.id, self._stop.is_set)


# ---- the Celery path -------------------------------------------------------------------------


def celery_app(redis_url: str) -> Any:
    """The Celery application for jobs, with ``layerscope.run_job`` registered (a worker that dies
    mid-job leaves the task for another: ``claim`` then requeues the job if its process is
    gone)."""
    app = acked_late_app("layerscope-jobs", redis_url, CELERY_QUEUE)

    @app.task(name=CELERY_TASK)
    def run_job_task(job_id: str, data_dir: str) -> str:
        return run_job(Path(data_dir), job_id).state

    return app


def acked_late_app(name: str, redis_url: str, queue: str) -> Any:
    """A Celery application on ``redis_url`` whose tasks go to ``queue`` (the queue its workers
    listen to by default), for long tasks: one at a time per worker process, acknowledged at
    their end, so a worker process that dies mid-task gives its task back for another
    (``pipelines/precompute_celery.py`` uses it too)."""
    try:
        from celery import Celery
    except ImportError:
        raise UserError(
            f"{REDIS_ENV} is set but celery is not installed; `pip install -r requirements.txt` "
            f"or unset {REDIS_ENV} to run jobs in the server itself"
        ) from None
    app = Celery(name, broker=redis_url, backend=redis_url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
    )
    return app
