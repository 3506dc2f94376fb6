"""Atomic file writes and inter-process file locks: the one place either is written.

A write goes to a temp file beside the target, unique to the process *and* the call, and is then
renamed over the target (``os.replace``, atomic on one filesystem). Two processes (or threads)
writing the same file therefore never share a temp file, and a reader sees either the old file or
one writer's whole new file, never a mix. A killed writer leaves only a ``.<name>.tmp-*`` file,
which ``remove_temp_files`` clears where the caller knows no write is in flight.

Locks are ``flock`` on a lock file: the kernel releases them when the process dies, so a
``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

# Matches every temp file ``atomic_path`` makes (and those of older versions: ``.name.tmp-PID``).
TEMP_GLOB = ".*.tmp-*"


def temp_path_for(path: Path) -> Path:
    """A hidden temp path beside ``path``; the suffix is kept so libraries that choose a format
    by extension (torch, numpy) write the same bytes as they would to ``path``."""
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return path.with_name(f".{path.name}.tmp-{unique}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh temp path next to ``path``; move it into place only if the block succeeds.

    ``durable``: fsync the file before the rename, so that after a power loss the target is the
    old or the new version (worth it for small, precious files such as a manifest).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def remove_temp_files(folder: Path) -> None:
    """Delete the temp files of writes that a killed process never finished, under ``folder``.
    Only safe while holding the lock that every writer of ``folder`` holds."""
    for temp in Path(folder).rglob(TEMP_GLOB):
        if temp.is_file():
            temp.unlink(missing_ok=True)


class LockBusy(Exception):
    """``exclusive_lock(..., wait=False)`` found the lock held by another process."""


@contextlib.contextmanager
def exclusive_lock(
    lock_file: Path, wait: bool = True, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block.

    If another process holds it: ``wait=False`` raises ``LockBusy`` at once; otherwise
    ``on_wait()`` is called (to tell the user why nothing happens) and the lock is waited for.
    Opening the file can raise ``OSError`` (e.g. a read-only folder); callers turn that into an
    error naming the fix.
    """
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(str(lock_file)) from None
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(lock_file: Path) -> bool:
    """True while another process holds ``lock_file``'s lock. Opened for reading: flock works on
    any descriptor, and this must work on a read-only data dir."""
    try:
        handle = open(lock_file)
    except OSError:
        return False  # no lock file: nothing ever locked it, or it is not ours to read
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
