"""Ctrl-C: the precompute stops within about two seconds, its workers with it, even when the key
is pressed twice, and the run resumes to the same embeddings as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipelines.layer_jobs import LayerWorkers, sigint_held
from tests.test_precompute import expected_embedding_keys, open_store

ROOT = Path(__file__).resolve().parent.parent
# Long enough that two workers are mid-layer (a layer takes seconds) when the key is pressed.
SAMPLES = 600
# What "stops" means: the workers are killed at once, and the interpreter's own exit (about two
# seconds on two busy cores, with torch loaded) fits well within the second bound. Before the
# fix the workers ran their layers to the end, and two presses hung the process for good.
WORKERS_GONE_SECONDS = 2.0
EXIT_SECONDS = 8.0


def worker_processes(parent: psutil.Process, besides: list | None = None) -> list[psutil.Process]:
    """The pool's spawned workers (not multiprocessing's resource tracker), but ``besides``."""
    return [
        child
        for child in parent.children(recursive=True)
        if "multiprocessing.spawn" in " ".join(child.cmdline()) and child not in (besides or [])
    ]


def started_workers(count: int, before: list[psutil.Process]) -> list[psutil.Process]:
    """This process's ``count`` workers started since ``before`` was listed."""
    while len(workers := worker_processes(psutil.Process(), before)) < count:
        time.sleep(0.02)
    return workers


def all_gone(processes: list[psutil.Process], timeout: float) -> bool:
    """Whether every process has exited (a zombie counts: it runs nothing) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.02)


# ---- the worker pool on its own ---------------------------------------------------------------


def test_a_ctrl_c_inside_sigint_held_is_raised_when_the_block_ends():
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            signal.raise_signal(signal.SIGINT)
            finished = True
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_inside_the_workers_context_only_the_first_ctrl_c_counts():
    second_ignored = False
    with pytest.raises(KeyboardInterrupt), LayerWorkers(workers=1):
        try:
            signal.raise_signal(signal.SIGINT)
        finally:  # the way out, which a second Ctrl-C must not cut short
            signal.raise_signal(signal.SIGINT)
            second_ignored = True
    assert second_ignored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_workers_do_not_take_ctrl_c_the_precompute_decides():
    before = worker_processes(psutil.Process())
    with LayerWorkers(workers=2) as workers:
        workers.start()
        jobs = [workers.pool.submit(time.sleep, 1.5) for _ in range(2)]
        processes = started_workers(2, before)
        time.sleep(0.5)  # into their imports or their job, whichever: neither may take it
        for worker in processes:
            os.kill(worker.pid, signal.SIGINT)
        # Before the fix: KeyboardInterrupt as the job's result, or a BrokenProcessPool.
        assert [job.result(timeout=60) for job in jobs] == [None, None]


def test_leaving_on_an_error_kills_the_running_jobs_at_once():
    before = worker_processes(psutil.Process())
    with pytest.raises(RuntimeError, match="stop here"), LayerWorkers(workers=2) as workers:
        workers.start()
        for _ in range(3):  # two running, one queued: none may be waited for
            workers.pool.submit(time.sleep, 20)
        processes = started_workers(2, before)
        time.sleep(0.5)
        started = time.monotonic()
        raise RuntimeError("stop here")
    assert time.monotonic() - started < WORKERS_GONE_SECONDS
    assert all_gone(processes, timeout=0)
    workers.stop()  # idempotent


# ---- the real command, as a user at a terminal ------------------------------------------------


def precompute_command(data_dir: Path, run_id: str) -> list[str]:
    return [
        sys.executable,
        "main.py",
        "precompute",
        "--dataset",
        "digits",
        "--model",
        "smallcnn",
        "--samples",
        str(SAMPLES),
        "--data-dir",
        str(data_dir),
        "--run-id",
        run_id,
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module: the smallcnn is trained once, by the reference run."""
    return tmp_path_factory.mktemp("interrupt-data")


@pytest.fixture(scope="module")
def reference(data_dir: Path) -> str:
    """An uninterrupted run with the same settings as the interrupted ones."""
    result = subprocess.run(
        precompute_command(data_dir, "reference"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return "reference"


def wait_for_embeddings(process: subprocess.Popen, data_dir: Path, run_id: str) -> None:
    """Until the embeddings stage has finished a layer and has others in flight."""
    manifest = open_store(data_dir, run_id).run_dir / "manifest.json"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        try:
            stage = json.loads(manifest.read_text())["stages"]["embeddings"]
        except (OSError, ValueError, KeyError):
            stage = {}
        if stage.get("state") == "running":
            return
        time.sleep(0.05)
    raise AssertionError(f"the embeddings stage never ran (exit status {process.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_embeddings_stops_at_once_and_the_run_resumes(
    data_dir, reference, presses, tmp_path
):
    run_id = f"interrupted-{presses}"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        # Its own process group, as a terminal's foreground job: Ctrl-C signals all of it.
        process = subprocess.Popen(
            precompute_command(data_dir, run_id),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_for_embeddings(process, data_dir, run_id)
        parent = psutil.Process(process.pid)
        group = [parent, *parent.children(recursive=True)]
        workers = worker_processes(parent)
        assert workers, "the embeddings stage should be running in worker processes"
        pressed = time.monotonic()
        for press in range(presses):
            if press:
                time.sleep(0.3)
            os.killpg(process.pid, signal.SIGINT)
        assert all_gone(workers, WORKERS_GONE_SECONDS - (time.monotonic() - pressed)), (
            f"workers still running {WORKERS_GONE_SECONDS} s after Ctrl-C"
        )
        status = process.wait(timeout=EXIT_SECONDS - (time.monotonic() - pressed))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert status == 130
    assert all_gone(group, timeout=2), "no process of the precompute may outlive it"
    stderr_text = stderr_path.read_text()
    assert "interrupted; run the same command again to resume" in stderr_text
    assert "Traceback" not in stderr_text, stderr_text[-3000:]
    # The progress bar is closed before the message, not redrawn after it.
    assert "%|" not in stderr_text.split("interrupted;")[-1]

    resumed = subprocess.run(
        precompute_command(data_dir, run_id), cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run '{run_id}'" in resumed.stderr
    store, expected = open_store(data_dir, run_id), open_store(data_dir, reference)
    manifest = store.read_manifest()
    assert all(stage["state"] == "done" for stage in manifest["stages"].values())
    for key in expected_embedding_keys(expected.read_manifest()):
        assert np.array_equal(
            store.load_array("embedding", **key), expected.load_array("embedding", **key)
        ), key
