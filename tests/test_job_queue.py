"""Durable jobs (pipelines/job_queue.py): real ``main.py`` subprocesses, real runners, real
signals, a real Redis and Celery worker; no mocks.

A job's process pays for its imports (torch) before it does anything: seconds on an idle
machine, up to half a minute on the shared 2-core VM. The precompute jobs are as small as a
precompute gets (40 digits, one subset, one perplexity, no fold models), and the jobs that only
need to start and stop fail on an unknown dataset, which costs just the imports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dash
import psutil
import pytest

import cli
import cli_serve
from pipelines import job_queue as jq
from pipelines.errors import UserError
from pipelines.store import RunStore, runs_dir
from tests import browser_helpers as bh

ROOT = Path(__file__).resolve().parent.parent
JOB_SECONDS = 600.0  # a small precompute on a loaded 2-core machine, with margin
RUN_ID = "jobs-digits"


def precompute_argv(run_id: str = RUN_ID, dataset: str = "digits") -> list[str]:
    return [
        "precompute",
        "--dataset",
        dataset,
        "--model",
        "smallcnn",
        "--samples",
        "40",
        "--subsets",
        "all",
        "--perplexities",
        "5",
        "--folds",
        "0",
        "--explain",
        "gradcam",
        "--run-id",
        run_id,
    ]


def wait_for(ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {seconds:.0f} s")


def wait_state(data_dir: Path, job_id: str, states: set[str], seconds: float) -> jq.JobRecord:
    wait_for(
        lambda: jq.read_job(data_dir, job_id).state in states,
        seconds,
        f"job {job_id} in {states} (log: {jq.log_tail(data_dir, job_id, 5)})",
    )
    return jq.read_job(data_dir, job_id)


def in_embeddings(data_dir: Path, job_id: str) -> bool:
    """The job's precompute has begun reducing layers: a Ctrl-C now leaves real partial work."""
    lines = jq.this_attempt(jq.log_tail(data_dir, job_id, 200))
    return any("embeddings" in line for line in lines[-5:])


def run_is_complete(data_dir: Path, run_id: str) -> bool:
    store = RunStore(runs_dir(data_dir) / run_id)
    states = dict(cli.iter_stage_states(store.read_record()))
    return not store.is_being_written() and set(states.values()) == {"done"}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(jq.REDIS_ENV, raising=False)  # the server's own runner, not Celery
    return tmp_path / "data"


@pytest.fixture
def runner(data_dir: Path) -> Iterator[jq.JobRunner]:
    runner = jq.JobRunner(data_dir).start()
    yield runner
    runner.stop()


# ---- records, ids, argv: no processes --------------------------------------------------------


def test_argv_must_be_a_precompute_or_train_command_without_data_dir(data_dir):
    for argv, message in [
        (["runs"], "not 'runs'"),
        (["serve", "--port", "80"], "not 'serve'"),
        (["/bin/sh", "-c", "true"], "not '/bin/sh'"),
        ([], "list of main.py arguments"),
        ("precompute --dataset digits", "list of main.py arguments"),
        (["precompute", "--data-dir", "/tmp"], "leave --data-dir out"),
        (["precompute", "--data-dir=/tmp"], "leave --data-dir out"),
    ]:
        with pytest.raises(UserError, match=message):
            jq.submit(data_dir, argv, "t", None)
    assert jq.list_jobs(data_dir) == []
    assert jq.check_argv(["train", "--dataset", "digits"]) == ("train", "--dataset", "digits")


def test_job_ids_sort_by_time_and_never_name_another_path(data_dir):
    first, second = jq.new_job_id(1_700_000_000.25), jq.new_job_id(1_700_000_000.5)
    assert first < second and jq.JOB_ID_PATTERN.fullmatch(first)
    for bad in ["../runs", "..", "a/b", first + "/..", "", first.upper()]:
        with pytest.raises(UserError, match="not a job id"):
            jq.job_dir(data_dir, bad)


def test_records_round_trip_and_list_newest_first(data_dir):
    older = jq.submit(data_dir, precompute_argv(), "older", RUN_ID)
    newer = jq.submit(data_dir, ["train", "--dataset", "digits"], "newer", None)
    assert [job.id for job in jq.list_jobs(data_dir)] == [newer.id, older.id]
    assert jq.read_job(data_dir, older.id) == older
    assert jq.JobRecord.from_json(json.loads(json.dumps(older.to_json()))) == older
    assert older.state == "queued" and older.argv == tuple(precompute_argv())


def test_a_corrupt_job_record_is_listed_as_failed(data_dir, capsys):
    good = jq.submit(data_dir, precompute_argv(), "good", RUN_ID)
    bad = jq.submit(data_dir, precompute_argv(), "bad", RUN_ID)
    (jq.job_dir(data_dir, bad.id) / jq.JOB_FILE).write_text('{"id": "x", "sta')
    jobs = {job.id: job for job in jq.list_jobs(data_dir)}
    assert jobs[good.id].state == "queued"
    assert jobs[bad.id].state == "failed"
    assert "corrupt" in (jobs[bad.id].error or "") and "delete" in (jobs[bad.id].note or "")
    assert cli.main(["runs", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "no runs in" in out and f"{bad.id}  failed" in out and f"{good.id}  queued" in out


def test_a_runner_writes_nothing_until_a_job_is_submitted(data_dir):
    """Serving a read-only data dir (or one nobody submits to) must not make a jobs/ folder."""
    runner = jq.JobRunner(data_dir).start()
    time.sleep(1.5)
    runner.stop()
    assert not data_dir.exists()


def test_cancelling_a_queued_job_is_immediate(data_dir):
    job = jq.submit(data_dir, precompute_argv(), "t", RUN_ID)
    assert jq.cancel(data_dir, job.id).state == "cancelled"
    assert jq.run_job(data_dir, job.id).state == "cancelled"  # a runner that gets to it skips it
    assert not (jq.job_dir(data_dir, job.id) / jq.LOG_FILE).exists()


def test_log_tail_shows_a_progress_bar_as_a_terminal_does(data_dir):
    job = jq.submit(data_dir, precompute_argv(), "t", RUN_ID)
    (jq.job_dir(data_dir, job.id) / jq.LOG_FILE).write_text(
        "start\nbar 1/3\rbar 2/3\rbar 3/3\n\nTraceback (most recent call last):\n"
        '  File "x.py", line 1\nRuntimeError: boom\n'
    )
    assert jq.log_tail(data_dir, job.id, 3) == [
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "RuntimeError: boom",
    ]
    assert jq.log_tail(data_dir, job.id, 10)[:2] == ["start", "bar 3/3"]
    assert jq.error_line(jq.log_tail(data_dir, job.id)) == "RuntimeError: boom"
    assert jq.error_line(["x", "error: unknown dataset 'nope'; choose", "y"]).startswith("error:")
    header = jq.ATTEMPT_HEADER
    assert jq.this_attempt(["error: old", f"{header} 1", "a", f"{header} 2", "b"]) == ["b"]


# ---- real jobs -------------------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_run_one_at_a_time_oldest_first_and_fail_with_their_error_line(data_dir, capsys):
    """Two runners on one data dir (as two gunicorn workers would have): the runner lock lets
    only one run jobs, so the two jobs never overlap. Each fails on a user error, which is its
    error; `runs` shows both."""
    runners = [jq.JobRunner(data_dir).start(), jq.JobRunner(data_dir).start()]
    try:
        first = jq.submit(
            data_dir,
            precompute_argv(run_id="no-such-dataset", dataset="nope"),
            "no such dataset",
            None,
        )
        second = jq.submit(data_dir, ["precompute", "--dataset", "digits"], "no model", None)
        a = wait_state(data_dir, first.id, {"failed"}, JOB_SECONDS)
        b = wait_state(data_dir, second.id, {"failed"}, JOB_SECONDS)
    finally:
        for runner in runners:
            runner.stop()
    assert a.error and a.error.startswith("error: unknown dataset 'nope'"), a
    assert b.error and b.error.startswith("error: the following arguments are required: --model")
    assert a.exit_code == b.exit_code == 2 and a.attempts == b.attempts == 1
    assert a.started and a.ended and b.started and b.ended
    assert a.ended <= b.started, "the second job started before the first ended"
    assert cli.main(["runs", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "jobs (newest first):" in out and out.index(second.id) < out.index(first.id)
    assert "    error: unknown dataset 'nope'" in out


@pytest.mark.slow
def test_a_cancelled_precompute_stays_resumable_and_a_resubmitted_one_completes(data_dir, runner):
    job = jq.submit(data_dir, precompute_argv(), "digits x smallcnn", RUN_ID)
    running = wait_state(data_dir, job.id, {"running"}, 60)
    wait_for(lambda: in_embeddings(data_dir, job.id), JOB_SECONDS, "the embeddings stage")
    asked = time.monotonic()
    jq.cancel(data_dir, job.id)
    cancelled = wait_state(data_dir, job.id, {"cancelled"}, jq.CANCEL_GRACE_S + 10)
    assert time.monotonic() - asked < jq.CANCEL_GRACE_S + 10
    assert not psutil.pid_exists(running.pid) or not jq.process_alive(running)
    assert cancelled.exit_code in (jq.EXIT_INTERRUPTED, -signal.SIGINT, -signal.SIGKILL)
    store = RunStore(runs_dir(data_dir) / RUN_ID)
    assert not run_is_complete(data_dir, RUN_ID) and not store.is_being_written()
    again = jq.submit(data_dir, precompute_argv(), "digits x smallcnn", RUN_ID)
    done = wait_state(data_dir, again.id, {"done", "failed"}, JOB_SECONDS)
    assert done.state == "done", jq.log_tail(data_dir, again.id)
    assert run_is_complete(data_dir, RUN_ID)
    assert any("resum" in line or "complete" in line for line in jq.log_tail(data_dir, again.id))


@pytest.mark.slow
def test_serve_runs_the_jobs_the_page_submits(data_dir, monkeypatch):
    """`main.py serve` starts the runner with the app and stops it with the server."""
    seen: list[jq.JobRecord] = []

    def submit_and_wait(app: dash.Dash, **_: object) -> None:
        argv = precompute_argv(run_id="no-such-dataset", dataset="nope")
        job = jq.submit(data_dir, argv, "no such dataset", None)
        seen.append(wait_state(data_dir, job.id, {"failed"}, JOB_SECONDS))

    monkeypatch.setattr(dash.Dash, "run", submit_and_wait)
    args = argparse.Namespace(
        data_dir=data_dir, host="127.0.0.1", port=8050, allow_folder=[], auth=None
    )
    cli_serve.serve_command(args, build_default=False)
    (failed,) = seen
    assert failed.error and failed.error.startswith("error: unknown dataset 'nope'")


RUNNER_SCRIPT = """
import sys, time
from pathlib import Path
from pipelines.job_queue import JobRunner
JobRunner(Path(sys.argv[1])).start()
time.sleep(3600)
"""


@pytest.mark.slow
def test_a_killed_server_takes_its_job_along_and_the_next_one_resumes_it(data_dir):
    env = {k: v for k, v in os.environ.items() if k != jq.REDIS_ENV}
    server = subprocess.Popen(
        [sys.executable, "-c", RUNNER_SCRIPT, str(data_dir)], cwd=ROOT, env=env
    )
    with bh.stopped_at_exit(server):
        job = jq.submit(data_dir, precompute_argv(), "digits x smallcnn", RUN_ID)
        running = wait_state(data_dir, job.id, {"running"}, 120)
        wait_for(lambda: in_embeddings(data_dir, job.id), JOB_SECONDS, "the embeddings stage")
        child = psutil.Process(running.pid)
        server.send_signal(signal.SIGKILL)
        server.wait()
        wait_for(lambda: not jq.process_alive(running), 10, "the job dying with its server")
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert jq.read_job(data_dir, job.id).state == "running"  # as the dead server left it
    restarted = jq.JobRunner(data_dir).start()
    try:
        wait_for(lambda: jq.read_job(data_dir, job.id).attempts == 2, 120, "the job started again")
        resumed = jq.read_job(data_dir, job.id)
        assert resumed.note == "resumed after the server stopped"
        wait_for(lambda: in_embeddings(data_dir, job.id), JOB_SECONDS, "the resumed embeddings")
    finally:
        restarted.stop()  # a clean stop: the job is interrupted and queued again
    stopped = jq.read_job(data_dir, job.id)
    assert stopped.state == "queued" and "server stopped" in (stopped.note or ""), stopped
    assert not jq.process_alive(resumed)
    last = jq.JobRunner(data_dir).start()
    try:
        done = wait_state(data_dir, job.id, {"done", "failed"}, JOB_SECONDS)
    finally:
        last.stop()
    assert done.state == "done" and done.attempts == 3, jq.log_tail(data_dir, job.id)
    assert run_is_complete(data_dir, RUN_ID)


def test_a_job_whose_server_died_three_times_is_failed(data_dir):
    job = jq.submit(data_dir, precompute_argv(), "t", RUN_ID)
    dead = jq.JobRecord.from_json(
        {
            **job.to_json(),
            "state": "running",
            "pid": 1,  # init: alive, but not started when the record says
            "pid_started": 1.0,
            "host": jq.this_host(),
            "attempts": jq.MAX_ATTEMPTS,
        }
    )
    jq.write_job(data_dir, dead)
    assert [r.state for r in jq.recover(data_dir)] == ["queued"]
    failed = jq.run_job(data_dir, job.id)
    assert failed.state == "failed" and "started 3 times" in (failed.error or "")


@pytest.mark.slow
def test_jobs_through_celery_and_redis(data_dir, tmp_path, monkeypatch):
    """With REDIS_URL set, submit hands jobs to a real Celery worker (the README's command, one
    at a time) and the server's runner does nothing; a cancel from this process reaches the
    worker's job through the marker and the signal."""
    with bh.redis_server(tmp_path) as redis_url:
        monkeypatch.setenv(jq.REDIS_ENV, redis_url)
        assert jq.JobRunner(data_dir).start()._thread is None
        log_path = tmp_path / "job-worker.log"
        command = [sys.executable, "-m", "celery", "-A", "dashboard.job_worker", "worker"]
        command += ["--concurrency", "1", "--loglevel", "INFO"]
        command += ["--without-gossip", "--without-mingle"]
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT
            )
        control = jq.celery_app(redis_url).control
        with bh.stopped_at_exit(worker):
            bh.wait_until(lambda: control.ping(timeout=1.0), 120, "the Celery worker", worker)
            long = jq.submit(data_dir, precompute_argv(), "to cancel", RUN_ID)
            bad = jq.submit(
                data_dir,
                precompute_argv(run_id="no-such-dataset", dataset="nope"),
                "no such dataset",
                None,
            )
            running = wait_state(data_dir, long.id, {"running"}, 120)
            assert jq.read_job(data_dir, bad.id).state == "queued"  # one at a time
            time.sleep(2.0)
            jq.cancel(data_dir, long.id)
            cancelled = wait_state(data_dir, long.id, {"cancelled"}, jq.CANCEL_GRACE_S + 15)
            failed = wait_state(data_dir, bad.id, {"failed"}, JOB_SECONDS)
        assert running.pid != os.getpid() and not jq.process_alive(running)
        assert cancelled.ended and failed.started and cancelled.ended <= failed.started
        assert failed.error and failed.error.startswith("error: unknown dataset 'nope'")
