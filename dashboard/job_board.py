"""Background jobs seen from every server worker: what a poll needs of a job, in a disk cache
the worker processes share.

``ThreadJobManager`` (dashboard/jobs.py) runs a job on a thread of the worker process that
received the click, but gunicorn hands the page's polls to whichever worker is free. With
several workers the owner therefore publishes here what the polls read: the job's state and
deadline, its answer, its progress and its ``set_props``; and a poll that lands on another
worker asks for a cancel here, which the owner reads at the job's next progress report. A job
whose owner died is answered at its deadline like one that ran out of time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import diskcache

from dashboard.caches import SQLITE_SETTINGS, cache_dir

QUEUED, RUNNING, DONE, CANCELLED = "queued", "running", "done", "cancelled"
KEEP_S = 600.0  # a record no poll came back for (a closed tab) expires this long after its end


class JobBoard:
    """Job records by id and per-callback-key progress and ``set_props``, in
    ``<data-dir>/cache/jobs`` (diskcache is safe across processes, forked ones included)."""

    def __init__(self, data_dir: Path):
        self.directory = cache_dir(data_dir, "jobs")
        self.cache = diskcache.Cache(str(self.directory), **SQLITE_SETTINGS)

    def opened(self, job: str, key: str, timeout_s: float, timeout_output: Any) -> None:
        record = {
            "key": key,
            "state": QUEUED,
            "deadline": time.time() + timeout_s,
            "result": None,
            "timeout_output": timeout_output,
        }
        self.cache.set(f"job/{job}", record, expire=timeout_s + KEEP_S)

    def record(self, job: str) -> dict[str, Any] | None:
        record = self.cache.get(f"job/{job}")
        return record if isinstance(record, dict) else None

    def _update(self, job: str, **fields: Any) -> dict[str, Any] | None:
        with self.cache.transact():
            record = self.record(job)
            if record is None:
                return None
            record.update(fields)
            self.cache.set(f"job/{job}", record, expire=KEEP_S)
            return record

    def finished(self, job: str, result: Any) -> None:
        """The owner's answer; ignored for a job that was cancelled or answered already."""
        with self.cache.transact():
            record = self.record(job)
            if record is not None and record["state"] in (QUEUED, RUNNING):
                self._update(job, state=DONE, result=result)

    def running(self, job: str) -> None:
        self._update(job, state=RUNNING)

    def cancel(self, job: str) -> None:
        self._update(job, state=CANCELLED)

    def cancelled(self, job: str) -> bool:
        record = self.record(job)
        return record is not None and record["state"] == CANCELLED

    def still_running(self, job: str) -> bool:
        """Queued or running, and within its deadline (past it, ``take_result`` answers)."""
        record = self.record(job)
        return (
            record is not None
            and record["state"] in (QUEUED, RUNNING)
            and time.time() < record["deadline"]
        )

    def take_result(self, job: str, key: str, undefined: Any) -> Any:
        """The job's answer, handed out once: its result, or its timeout result once past the
        deadline (the owner's late answer is then dropped); ``undefined`` while it runs."""
        with self.cache.transact():
            record = self.record(job)
            if record is None or record["key"] != key:
                return undefined
            if record["state"] == DONE:
                answer = record["result"]
            elif record["state"] in (QUEUED, RUNNING) and time.time() >= record["deadline"]:
                answer = record["timeout_output"]
            else:
                return undefined
            self.cache.delete(f"job/{job}")
            self.cache.delete(f"progress/{key}")
            return answer

    def put_progress(self, key: str, value: list[Any]) -> None:
        self.cache.set(f"progress/{key}", value, expire=KEEP_S)

    def take_progress(self, key: str) -> list[Any] | None:
        value = self.cache.pop(f"progress/{key}", default=None)
        return value if isinstance(value, list) else None

    def merge_props(self, key: str, component_id: str, props: dict[str, Any]) -> None:
        with self.cache.transact():
            pending = self.cache.get(f"props/{key}") or {}
            pending[component_id] = {**pending.get(component_id, {}), **props}
            self.cache.set(f"props/{key}", pending, expire=KEEP_S)

    def take_props(self, key: str) -> dict[str, Any]:
        value = self.cache.pop(f"props/{key}", default=None)
        return value if isinstance(value, dict) else {}
