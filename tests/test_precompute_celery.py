"""Precompute across machines (pipelines/precompute_celery.py): a real redis-server, two real
Celery workers started with the README's command (two node names on one machine), and
``main.py precompute --workers celery`` as the coordinator; no mocks.

The run is the session's reference run (conftest.small_run) made again, with its trained model
copied so the test measures the units, not training. Its workers give a unit back 10 s after
they die (LAYERSCOPE_REDELIVER_AFTER_S), not an hour, so the killed worker's unit comes back
within the test.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import cli
from pipelines.job_queue import REDIS_ENV
from pipelines.precompute_celery import (
    PRECOMPUTE_QUEUE,
    REDELIVER_AFTER_ENV,
    UNIT_TASK,
    WORKER_APP,
    CeleryUnits,
    celery_app,
)
from pipelines.store import RunStore, runs_dir
from tests import browser_helpers as bh
from tests.conftest import small_run_arguments
from tests.run_checks import assert_same_artifacts

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "across"
REDELIVER_AFTER_S = 10
# Celery's INFO lines about a unit's task: received, succeeded (with the unit's report) and
# discarded (revoked before it began).
TASK = rf"{re.escape(UNIT_TASK)}\[(?P<id>[0-9a-f-]+)\]"
RECEIVED = re.compile(rf"Task {TASK} received")
SUCCEEDED = re.compile(rf"Task {TASK} succeeded in [0-9.e-]+s: (?P<report>\{{.*\}})")
DISCARDED = re.compile(rf"Discarding revoked task: {TASK}")


@dataclass
class Units:
    """What a worker's log says about its units, by task id."""

    received: list[str]  # in order
    reports: dict[str, dict[str, Any]]  # units.UnitReport as JSON, of each unit it ran
    discarded: set[str]

    def in_hand(self) -> list[str]:
        ended = {*self.reports, *self.discarded}
        return [task for task in self.received if task not in ended]

    def orphaned(self) -> set[str]:
        """Units dropped because no precompute was running their run any more."""
        return {task for task, report in self.reports.items() if report["outcome"] == "orphaned"}


@dataclass
class Worker:
    """A precompute worker process (in a session of its own) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def units(self) -> Units:
        text = self.log.read_text(errors="replace")
        return Units(
            received=[match["id"] for match in RECEIVED.finditer(text)],
            reports={m["id"]: ast.literal_eval(m["report"]) for m in SUCCEEDED.finditer(text)},
            discarded={match["id"] for match in DISCARDED.finditer(text)},
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool process, as when its machine dies."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def precompute_workers(redis_url: str, names: list[str], log_dir: Path) -> Iterator[list[Worker]]:
    """``celery -A pipelines.precompute_worker worker --concurrency 1`` once per name, until the
    block ends."""
    env = {**os.environ, REDIS_ENV: redis_url, REDELIVER_AFTER_ENV: str(REDELIVER_AFTER_S)}
    workers = []
    try:
        for name in names:
            command = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker"]
            command += ["--concurrency", "1", "-n", f"{name}@%h", "--loglevel", "INFO"]
            command += ["--without-gossip", "--without-mingle"]
            log = log_dir / f"worker-{name}.log"
            with open(log, "w") as handle:
                process = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its pool process is killed with it (Worker.kill)
                )
            workers.append(Worker(name, process, log))
        control = celery_app(redis_url).control
        for worker in workers:
            bh.wait_until(
                lambda worker=worker: control.ping([f"{worker.name}@{socket.gethostname()}"]),
                120,
                f"the precompute worker {worker.name}",
                worker.process,
            )
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


def start_coordinator(data_dir: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "main.py", *small_run_arguments(data_dir, RUN_ID)]
    with open(log, "w") as handle:
        return subprocess.Popen(
            [*command, "--workers", "celery"],
            cwd=ROOT,
            env={**os.environ, REDIS_ENV: redis_url},
            stdout=handle,
            stderr=subprocess.STDOUT,
            # Ctrl-C must stop it even where this test runs with SIGINT ignored (in the
            # background of a shell), which children would inherit.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def wait_for(
    ready: Callable[[], Any], seconds: float, what: str, process: subprocess.Popen[bytes]
) -> Any:
    """Poll ``ready()`` until it returns something true; fail if ``process`` ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        assert process.poll() is None, f"{process.args[:4]} ended before {what}"
        time.sleep(0.05)
    raise AssertionError(f"not after {seconds:.0f} s: {what}")


def layers_mapped(store: RunStore) -> set[str]:
    """Layers whose t-SNE maps are done (their ``reduction`` record is written last)."""
    folder = store.run_dir / "reduction"
    return {path.name for path in folder.glob("*.json")} if folder.is_dir() else set()


def a_new_unit_in_hand(worker: Worker, seen: set[str]) -> str | None:
    """A unit ``worker`` is doing now that is not among ``seen``."""
    fresh = [task for task in worker.units().in_hand() if task not in seen]
    return fresh[-1] if fresh else None


def done_units(workers: list[Worker]) -> set[str]:
    """Task ids of the units the workers did (not found done already, nor dropped)."""
    return {
        task
        for worker in workers
        for task, report in worker.units().reports.items()
        if report["outcome"] == "done"
    }


@pytest.mark.slow
def test_two_workers_share_a_run_through_ctrl_c_and_a_killed_worker(small_run, tmp_path):
    reference = RunStore(runs_dir(small_run[0]) / small_run[1])
    data_dir = tmp_path / "data"
    shutil.copytree(small_run[0] / "models", data_dir / "models")
    store = RunStore(runs_dir(data_dir) / RUN_ID)
    with (
        bh.redis_server(tmp_path) as redis_url,
        precompute_workers(redis_url, ["one", "two"], tmp_path) as (one, two),
    ):
        # 1. Ctrl-C once the t-SNE units run: the units not begun are revoked, the ones in hand
        #    end, and the run is left resumable.
        first = start_coordinator(data_dir, redis_url, tmp_path / "first.log")
        wait_for(lambda: layers_mapped(store), 240, "a layer's t-SNE maps", first)
        done_before = done_units([one, two])
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 130, (tmp_path / "first.log").read_text()[-3000:]
        first_output = (tmp_path / "first.log").read_text()
        assert "interrupted; run the same command again" in first_output
        assert "Traceback" not in first_output
        queue = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: (
                queue.llen(PRECOMPUTE_QUEUE) == 0
                and not one.units().in_hand()
                and not two.units().in_hand()
            ),
            30,
            "the workers idle",
            one.process,
        )
        # Each worker's unit in hand, and at most one more each, begun before the revoke came.
        assert len(done_units([one, two]) - done_before) <= 4
        dropped = [units.discarded | units.orphaned() for units in (one.units(), two.units())]
        assert set.union(*dropped), "the units not begun should have been dropped"
        assert store.read_record().stage("embeddings").state != "done"

        # 2. The same command resumes it; once its t-SNE units run, worker one is killed in the
        #    middle of one, which worker two does instead when Redis gives it back.
        mapped_before = layers_mapped(store)
        second = start_coordinator(data_dir, redis_url, tmp_path / "second.log")
        wait_for(lambda: layers_mapped(store) - mapped_before, 240, "a t-SNE unit", second)
        seen = set(one.units().received)
        victim = wait_for(lambda: a_new_unit_in_hand(one, seen), 240, "a unit for one", second)
        one.kill()
        assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
        second_output = (tmp_path / "second.log").read_text()
        assert f"resuming run '{RUN_ID}'" in second_output and "complete" in second_output
        assert "no Celery worker listens" not in first_output + second_output

    assert done_units([one]) and done_units([two]), "both workers should have done units"
    assert victim not in one.units().reports
    assert two.units().reports[victim]["outcome"] == "done", "worker two should redo one's unit"
    assert_same_artifacts(store, reference)


def test_celery_workers_need_a_reachable_redis(tmp_path, monkeypatch, capsys):
    command = ["precompute", "--dataset", "digits", "--model", "smallcnn", "--workers", "celery"]
    command += ["--data-dir", str(tmp_path / "data")]
    monkeypatch.delenv(REDIS_ENV, raising=False)
    assert cli.main(command) == 2
    assert one_error_line(capsys.readouterr().err).startswith(
        f"error: --workers celery needs {REDIS_ENV}"
    )

    monkeypatch.setenv(REDIS_ENV, f"redis://127.0.0.1:{bh.free_port()}/0")  # nothing listens
    assert cli.main(command) == 2
    assert one_error_line(capsys.readouterr().err).startswith("error: cannot reach Redis at")
    assert not (tmp_path / "data").exists()


def test_without_workers_the_precompute_says_how_to_start_one(tmp_path, capsys):
    with bh.redis_server(tmp_path) as redis_url:
        CeleryUnits(redis_url).warn_without_workers()
    warning = capsys.readouterr().err
    assert f"no Celery worker listens to the {PRECOMPUTE_QUEUE} queue" in warning
    assert f"celery -A {WORKER_APP} worker --concurrency 1" in warning


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]
