"""Precompute across machines: a run's units (``pipelines/units.py``) as Celery tasks.

``python main.py precompute ... --workers celery`` makes its process the coordinator. It runs the
precompute as it always does (settings checks, the writer lock, the model and index stages,
the consolidation of the chunks, the quality stage, the manifest) except that each forward chunk
and each layer's PCA and t-SNE phases are sent as a task ``layerscope.precompute_unit(run_dir,
phase, key)`` to the ``layerscope-precompute`` queue; it waits for them, showing progress as they
finish. Workers (``pipelines/precompute_worker.py``), one per machine that sees the data dir at the
same path, take one unit at a time.

What stays true when something is killed:

- A worker process killed mid-unit (kill -9, out of memory): its task was not acknowledged yet
  (``task_acks_late``) and goes back to the queue at once (``task_reject_on_worker_lost``); a
  worker machine that vanishes gives its task back after ``LAYERSCOPE_REDELIVER_AFTER_S`` seconds
  (Redis's visibility timeout). Another worker does the unit again: the dead one left only temp
  files (removed when the run's units are all done), never its commit marker.
- The coordinator stopped (Ctrl-C, kill): its units not begun are revoked, and a worker does a
  unit only while a precompute holds the run's writer lock (``units.run_unit``), so units it had
  received already are dropped. Running the command again resumes: it sends the missing units.
- A unit that a slow worker finishes after another did it again is the same files, written
  atomically, so a duplicate does no harm.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import report
from pipelines.errors import UserError
from pipelines.job_queue import REDIS_ENV, acked_late_app
from pipelines.layer_jobs import LayerJob, LayerPhase, sigint_held
from pipelines.store import RunStore

if TYPE_CHECKING:  # the units module imports torch, which only the worker's pool processes need
    from pipelines.units import Phase

PRECOMPUTE_QUEUE = "layerscope-precompute"  # apart from the page's jobs and callbacks
UNIT_TASK = "layerscope.precompute_unit"
WORKER_APP = "pipelines.precompute_worker"
# Seconds after which the unit of a worker that stopped answering (its machine died) is given to
# another. Longer than the longest unit, or a slow unit is done twice (harmless, but wasted).
REDELIVER_AFTER_ENV = "LAYERSCOPE_REDELIVER_AFTER_S"
DEFAULT_REDELIVER_AFTER_S = 3600.0  # Redis's own default
POLL_S = 0.2  # how often the coordinator looks for finished units
REDIS_CONNECT_TIMEOUT_S = 5.0


def worker_command() -> str:
    """The command that starts a worker, for messages and the README."""
    return f"REDIS_URL=... celery -A {WORKER_APP} worker --concurrency 1"


def redis_url_from_env() -> str:
    """``REDIS_URL``, checked to name a Redis this process can reach."""
    url = os.environ.get(REDIS_ENV, "").strip()
    if not url:
        raise UserError(
            f"--workers celery needs {REDIS_ENV}, the Redis its workers listen to (e.g. "
            f"{REDIS_ENV}=redis://HOST:6379/0); start the workers with `{worker_command()}`, "
            "see the README's 'Precompute across machines'"
        )
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S).ping()
    except (ValueError, redis.exceptions.RedisError) as exc:
        raise UserError(
            f"cannot reach Redis at {REDIS_ENV}={url} ({exc}); start redis-server there or set "
            f"{REDIS_ENV} to one that runs"
        ) from None
    return url


def redeliver_after_s() -> float:
    text = os.environ.get(REDELIVER_AFTER_ENV)
    try:
        seconds = float(text) if text else DEFAULT_REDELIVER_AFTER_S
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UserError(f"{REDELIVER_AFTER_ENV} must be a number of seconds above 0, not {text!r}")
    return seconds


def celery_app(redis_url: str) -> Any:
    """The Celery application for precompute units, with ``layerscope.precompute_unit``
    registered; the coordinator sends with it and ``precompute_worker`` serves it."""
    app = acked_late_app("layerscope-precompute", redis_url, PRECOMPUTE_QUEUE)
    redeliver = redeliver_after_s()
    app.conf.update(
        # Unacknowledged units are looked for every tenth of the delay (at most every 10 s), so
        # a vanished worker's unit comes back within about 1.1 x the delay.
        broker_transport_options={
            "visibility_timeout": redeliver,
            "unacked_restore_interval": max(1.0, min(10.0, redeliver / 10)),
            "unacked_restore_throttle": 1,
        },
        # Results carry the worker's name, also when a unit fails.
        result_extended=True,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=UNIT_TASK)
    def precompute_unit(run_dir: str, phase: str, key: str) -> dict[str, Any]:
        # Imported here, in a pool process (on its first unit): the worker's main process never
        # loads torch, so the pool processes forked from it inherit none of torch's threads.
        from pipelines import units

        return units.run_unit(Path(run_dir), units.check_phase(phase), key).to_json()

    return app


class CeleryUnits:
    """Runs a precompute's units on Celery workers: ``Precompute(remote=CeleryUnits(url))``.

    Yields each unit as its task finishes, after checking its files are there. Leaving the
    context on an error or Ctrl-C revokes the units not finished; leaving it when they are all
    done removes the temp files of workers killed mid-write."""

    def __init__(self, redis_url: str):
        self.app = celery_app(redis_url)
        self.unfinished: set[str] = set()  # task ids sent and not yet finished
        self.stores: dict[Path, RunStore] = {}  # the runs units were sent for
        self.workers_checked = False

    def __enter__(self) -> CeleryUnits:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.revoke_unfinished()
        if exc_type is not None:
            return
        for store in self.stores.values():
            # No unit of ours is in flight. A worker that still writes would be doing a unit a
            # second time (its first worker seemed lost): losing its temp file fails that
            # duplicate, harmlessly. (A failed run is cleaned when it resumes.)
            store.remove_stale_temp_files()

    def start(self) -> None:
        """Nothing to start: the workers run on their machines."""

    def run_phase(
        self,
        job: LayerJob,
        phase: LayerPhase,
        layer_ids: Iterable[str],
        background: bool = False,
    ) -> Iterator[str]:
        """``job`` names the run; each worker makes the same job from the run's store, with
        its own machine's device and cores (``embeddings.layer_job``). ``background`` changes
        nothing: Celery workers do only this run's units, at the priority they were started
        with."""
        return self.run(RunStore(Path(job.run_dir)), phase, list(layer_ids))

    def run_chunks(self, store: RunStore, chunk_indices: Sequence[int]) -> Iterator[int]:
        for key in self.run(store, "forward", [str(i) for i in chunk_indices]):
            yield int(key)

    def run(self, store: RunStore, phase: Phase, keys: Sequence[str]) -> Iterator[str]:
        """Send the units ``(phase, key)`` of ``store``'s run; yield each key as it is done."""
        if not keys:
            return
        self.warn_without_workers()
        self.stores[store.run_dir] = store
        # Absolute, symlinks kept: the path every machine mounts the data dir at.
        run_dir = str(store.run_dir.absolute())
        sent = {}
        for key in keys:
            result = self.app.send_task(UNIT_TASK, args=[run_dir, phase, key])
            sent[result.id] = key
            self.unfinished.add(result.id)
        for task_id, meta in self.app.backend.get_many(set(sent), interval=POLL_S):
            self.unfinished.discard(task_id)
            check_finished(store, phase, sent[task_id], meta)
            yield sent[task_id]

    def revoke_unfinished(self) -> None:
        """Revoke the units sent and not finished (none, after a run that completed). Best
        effort: a worker that gets a revoked unit anyway finds no precompute holding
        the run's lock and drops it (``units.run_unit``)."""
        with sigint_held():  # a second Ctrl-C cannot cut the revoke short
            unfinished, self.unfinished = list(self.unfinished), set()
            if unfinished:
                try:
                    self.app.control.revoke(unfinished)
                except Exception as exc:  # noqa: BLE001 - the error that stopped us matters more
                    report.warn(f"could not revoke the units in flight ({exc})")

    def warn_without_workers(self) -> None:
        """Once: a warning if no worker listens to the queue yet (the units wait for one)."""
        if self.workers_checked:
            return
        self.workers_checked = True
        replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
        listening = [
            name
            for name, queues in replies.items()
            if any(queue.get("name") == PRECOMPUTE_QUEUE for queue in queues)
        ]
        if not listening:
            report.warn(
                f"no Celery worker listens to the {PRECOMPUTE_QUEUE} queue yet; the units wait "
                f"for one: start one on each machine with `{worker_command()}`"
            )


def check_finished(store: RunStore, phase: Phase, key: str, meta: dict[str, Any]) -> None:
    """Raise unless the unit's task succeeded and its files are there, with an error that says
    which worker failed and what to do."""
    from pipelines import units

    worker = meta.get("worker") or "a worker"
    if meta.get("status") != "SUCCESS":
        error = meta.get("result")
        if isinstance(error, UserError):
            raise UserError(f"on worker {worker}: {error}")
        raise RuntimeError(
            f"the {phase} unit {key} failed on {worker}: {type(error).__name__}: {error}\n"
            f"{meta.get('traceback') or ''}"
        )
    done = units.UnitReport.from_json(meta["result"])
    if done.outcome == "orphaned":
        raise UserError(
            f"worker {worker} sees no precompute holding run '{store.run_id}' "
            f"({store.run_dir}): the data dir must be one shared filesystem, with file locks, "
            "mounted at the same path on every machine"
        )
    if not units.unit_done(store, phase, key):
        raise UserError(
            f"worker {worker} did the {phase} unit {key}, but its files are not in "
            f"{store.run_dir} here: mount the data dir at the same path on every machine"
        )
