"""Corrections and saved selections kept beside a run: undo, many uids at once, concurrent
appends from processes and threads, a torn last line, a read-only data dir."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from pipelines.annotations import CorrectionLog, corrections_log, saved_selections
from pipelines.errors import UserError
from pipelines.store import annotations_dir
from tests.conftest import ROOT
from tests.test_readonly import as_reader


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def log(data_dir):
    return corrections_log(data_dir, "run-1")


def test_kept_beside_the_run_never_inside_it(data_dir, log):
    log.set_label(["a"], 1, "test")
    assert log.path == data_dir / "annotations" / "run-1" / "corrections.jsonl"
    assert not (data_dir / "runs").exists()
    with pytest.raises(UserError, match="not a run id"):
        annotations_dir(data_dir, "../elsewhere")


def test_set_many_then_undo(log):
    assert log.current() == {} and log.count() == 0 and log.undo() is None
    first = log.set_label(["a", "b", "c"], 2, "gallery")
    log.set_label(["b"], 0, "inspector")
    assert log.current() == {"a": 2, "b": 0, "c": 2}
    log.set_label(["a", "c"], None, "gallery")  # None removes
    assert log.current() == {"b": 0} and log.count() == 1

    undone = log.undo()
    assert undone is not None and undone.undone and undone.uids == ("a", "c")
    assert log.current() == {"a": 2, "b": 0, "c": 2}
    assert log.undo().uids == ("b",)
    assert log.current() == {"a": 2, "b": 2, "c": 2}
    assert log.undo().id == first.id
    assert log.current() == {} and log.undo() is None

    history = log.history(2)
    assert [action.uids for action in history] == [("a", "c"), ("b",)]
    assert all(action.undone for action in history)
    assert [a.source for a in log.history(10)] == ["gallery", "inspector", "gallery"]
    # a fresh reader (another server process) sees the same
    assert CorrectionLog(log.directory).current() == {}


def test_bad_corrections_are_refused(log):
    for uids, label in (([], 1), (["a"], -1), (["a"], True), (["a"], 1.5), ([""], 1)):
        with pytest.raises(UserError):
            log.set_label(uids, label, "test")
    with pytest.raises(UserError):
        log.set_label(["a"], 1, "")
    assert not log.path.exists()


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_afresh(log):
    log.set_label(["a"], 1, "test")
    log.set_label(["b"], 2, "test")
    whole = log.path.read_bytes()
    # a writer killed mid-write: half a record, no newline
    torn = json.dumps({"id": "x", "op": "set", "uids": ["c"], "label": 0, "time": 1.0}).encode()
    log.path.write_bytes(whole + torn[: len(torn) // 2])
    assert CorrectionLog(log.directory).current() == {"a": 1, "b": 2}
    log.set_label(["d"], 0, "test")
    assert CorrectionLog(log.directory).current() == {"a": 1, "b": 2, "d": 0}
    assert log.path.read_bytes().startswith(whole)  # nothing earlier rewritten


def append_many(directory: str, worker: int, count: int, barrier) -> None:
    log = CorrectionLog(Path(directory))
    barrier.wait()
    for i in range(count):
        log.set_label([f"w{worker}-{i}", f"shared-{i}"], worker, f"worker{worker}")


def test_processes_and_threads_appending_at_once_lose_nothing(log):
    log.directory.mkdir(parents=True)
    processes, threads, count = 3, 2, 60
    context = multiprocessing.get_context("spawn")  # like separate server processes
    barrier = context.Barrier(processes + threads)  # everyone starts appending at once
    workers = [
        context.Process(target=append_many, args=(str(log.directory), w, count, barrier))
        for w in range(processes)
    ] + [
        # threads of this process, each with its own CorrectionLog, like server threads
        threading.Thread(target=append_many, args=(str(log.directory), w, count, barrier))
        for w in range(processes, processes + threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert all(p.exitcode == 0 for p in workers[:processes])
    lines = log.path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line whole
    total = processes + threads
    assert len(records) == total * count
    current = CorrectionLog(log.directory).current()
    assert len(current) == total * count + count
    for w in range(total):
        assert all(current[f"w{w}-{i}"] == w for i in range(count))


def test_saved_selections(data_dir):
    saved = saved_selections(data_dir, "run-1")
    assert saved.all() == {}
    assert saved.save("confused 3/5", "pred=5; true=3") == "true=3;pred=5"
    saved.save("picks", "rows=3,1,2")
    assert saved.all() == {"confused 3/5": "true=3;pred=5", "picks": "rows=1-3"}
    saved.save("picks", "rows=7")
    assert saved_selections(data_dir, "run-1").get("picks") == "rows=7"
    assert saved.delete("picks") and not saved.delete("picks")
    with pytest.raises(UserError, match="reads as a selection"):
        saved.save("wrong", "true=1")
    with pytest.raises(UserError, match="not a selection term"):
        saved.save("mine", "colour=red")
    assert saved.all() == {"confused 3/5": "true=3;pred=5"}


READER_SCRIPT = """
import json, sys
from pipelines.annotations import corrections_log, saved_selections
from pipelines.errors import UserError
data_dir = sys.argv[1]
out = {}
for name, write in (
    ("existing", lambda: corrections_log(data_dir, "run-1").set_label(["b"], 1, "test")),
    ("new run", lambda: corrections_log(data_dir, "run-2").set_label(["b"], 1, "test")),
    ("undo", lambda: corrections_log(data_dir, "run-1").undo()),
    ("selection", lambda: saved_selections(data_dir, "run-1").save("mine", "wrong")),
):
    try:
        write()
        out[name] = "written"
    except UserError as exc:
        out[name] = str(exc)
out["read"] = corrections_log(data_dir, "run-1").current()
print(json.dumps(out))
"""


def test_a_read_only_data_dir_says_so():
    # As root, permissions stop nothing: the reader runs as `nobody` (tests/test_readonly.py).
    base = Path(tempfile.mkdtemp(prefix="layerscope-ro-annotations-"))
    try:
        base.chmod(0o755)
        data_dir = base / "data"
        corrections_log(data_dir, "run-1").set_label(["a"], 1, "test")
        for path in [data_dir, *data_dir.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        result = subprocess.run(
            as_reader([sys.executable, "-c", READER_SCRIPT, str(data_dir)]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        for name in ("existing", "new run", "undo", "selection"):
            assert "read-only" in out[name] and "--data-dir" in out[name], out
        assert out["read"] == {"a": 1}
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
