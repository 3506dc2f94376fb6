"""Atomic writes and locks (pipelines/io.py): concurrent writers never leave a torn file."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from pipelines.io import (
    LockBusy,
    atomic_path,
    atomic_write_bytes,
    exclusive_lock,
    is_locked,
    remove_temp_files,
    temp_path_for,
)

# Big enough that one write takes many syscalls, so an interleaving would show.
PAYLOAD_BYTES = 4 * 1024 * 1024


def _write_repeatedly(path: Path, fill: int, rounds: int, start) -> None:  # noqa: ANN001
    payload = bytes([fill]) * PAYLOAD_BYTES
    start.wait(10)
    for _ in range(rounds):
        atomic_write_bytes(path, payload, durable=False)


def test_two_processes_writing_one_file_never_leave_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "shared" / "model.pt"
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    writers = [
        ctx.Process(target=_write_repeatedly, args=(target, fill, 40, start)) for fill in (1, 2)
    ]
    for writer in writers:
        writer.start()
    start.set()
    seen = set()
    try:
        # Read while both write: every read is one writer's whole file.
        while any(writer.is_alive() for writer in writers):
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue  # neither has finished its first write yet
            assert len(data) == PAYLOAD_BYTES
            assert data.count(data[0]) == PAYLOAD_BYTES, "a mix of two writes"
            seen.add(data[0])
    finally:
        for writer in writers:
            writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    final = target.read_bytes()
    assert len(final) == PAYLOAD_BYTES and final.count(final[0]) == PAYLOAD_BYTES
    assert seen <= {1, 2}
    assert list(target.parent.iterdir()) == [target], "temp files left behind"


def test_temp_names_are_unique_per_write_and_keep_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    first, second = temp_path_for(path), temp_path_for(path)
    assert first != second and first.suffix == ".npy" and first.name.startswith(".a.npy.tmp-")


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_remove_temp_files_clears_leftovers_only(tmp_path: Path) -> None:
    keep = tmp_path / "sub" / "a.npy"
    keep.parent.mkdir()
    keep.write_bytes(b"x")
    leftover = temp_path_for(keep)
    leftover.write_bytes(b"half")
    remove_temp_files(tmp_path)
    assert keep.exists() and not leftover.exists()


def _hold(lock_file: Path, ready, release) -> None:  # noqa: ANN001
    with exclusive_lock(lock_file):
        ready.set()
        release.wait(10)


def test_exclusive_lock_across_processes(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock_file, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert is_locked(lock_file)
        with pytest.raises(LockBusy):
            with exclusive_lock(lock_file, wait=False):
                pass
        waited: list[float] = []
        release_at = time.time() + 0.3
        ctx.Process(target=_release_later, args=(release, 0.3)).start()
        with exclusive_lock(lock_file, on_wait=lambda: waited.append(time.time())):
            assert waited and time.time() >= release_at - 0.05  # it waited for the holder
    finally:
        release.set()
        holder.join(10)
    assert not is_locked(lock_file)


def _release_later(release, seconds: float) -> None:  # noqa: ANN001
    time.sleep(seconds)
    release.set()
