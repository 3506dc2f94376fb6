"""What users add to a run: label corrections and saved selections, kept beside the run.

Everything lives in ``<data-dir>/annotations/<run-id>/`` (``store.annotations_dir``), never in
the run folder: a run's artifacts and the dataset stay exactly as the precompute made them, and
recomputing a run under the same id keeps what its users said about the samples (keyed by uid).

``corrections.jsonl`` is an append-only log, one JSON object per line:
``{"id", "op": "set", "uids": [...], "label": int | null, "source", "time"}`` and
``{"id", "op": "undo", "target": <id of the action undone>, "time"}``. Several server threads
and several processes (gunicorn workers) append to it: each append holds the directory's
``flock`` and is one ``os.write`` of whole lines on an ``O_APPEND`` descriptor, then fsynced, so
records never interleave. A crash mid-write can leave a torn last line; readers skip any line
that is not a whole record, and the next writer starts on a fresh line, so nothing earlier is
ever lost or rewritten.

``selections.json`` maps a saved selection's name to its spec (``pipelines.selection``),
replaced atomically on each change.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.io import atomic_write_bytes, exclusive_lock
from pipelines.selection import parse_selection
from pipelines.store import annotations_dir

CORRECTIONS_NAME = "corrections.jsonl"
SELECTIONS_NAME = "selections.json"
LOCK_NAME = ".lock"
MAX_SOURCE_LENGTH = 64
MAX_SELECTION_NAME = 80


@dataclass(frozen=True)
class CorrectionAction:
    """One ``set_label`` call as the log keeps it. ``label``: the dataset class index given to
    every uid, None to remove their corrections; ``undone``: a later ``undo`` took it back."""

    id: str
    time: float
    uids: tuple[str, ...]
    label: int | None
    source: str
    undone: bool = False


def corrections_log(data_dir: Path, run_id: str) -> CorrectionLog:
    """The label corrections of run ``run_id`` in ``data_dir``."""
    return CorrectionLog(annotations_dir(data_dir, run_id))


def saved_selections(data_dir: Path, run_id: str) -> SavedSelections:
    """The named selections of run ``run_id`` in ``data_dir``."""
    return SavedSelections(annotations_dir(data_dir, run_id))


@contextlib.contextmanager
def _writable(directory: Path, what: str) -> Iterator[None]:
    """Hold the annotations lock of ``directory`` (made if missing); a folder that cannot be
    written becomes a UserError that says so."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(directory / LOCK_NAME):
            yield
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why += ": the data dir is read-only here"
        raise UserError(
            f"cannot save {what} in {directory} ({why}); use a --data-dir you can write to"
        ) from None


class CorrectionLog:
    """Append-only label corrections of one run (``corrections.jsonl`` in ``directory``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / CORRECTIONS_NAME
        self._lock = threading.Lock()
        # (inode, size, mtime_ns) -> parsed actions: reading is cheap while nothing was appended.
        self._cached: tuple[tuple[int, int, int], list[CorrectionAction]] | None = None

    # ---- writing ------------------------------------------------------------------------------

    def set_label(self, uids: Iterable[str], label: int | None, source: str) -> CorrectionAction:
        """Give every sample in ``uids`` the dataset class ``label`` (None: remove their
        corrections), in one record. ``source`` says where it came from ("suggestion",
        "inspector", "gallery", ...)."""
        uid_list = list(dict.fromkeys(uids))
        if not uid_list or not all(isinstance(uid, str) and uid for uid in uid_list):
            raise UserError("a correction needs at least one sample uid (non-empty strings)")
        if label is not None and (
            isinstance(label, bool) or not isinstance(label, int) or label < 0
        ):
            raise UserError(f"a corrected label is a class index >= 0 or None, not {label!r}")
        if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE_LENGTH:
            raise UserError(f"a correction's source is a short name (1..{MAX_SOURCE_LENGTH} chars)")
        action = CorrectionAction(uuid.uuid4().hex, time.time(), tuple(uid_list), label, source)
        record = {
            "id": action.id,
            "op": "set",
            "uids": list(action.uids),
            "label": action.label,
            "source": action.source,
            "time": action.time,
        }
        with _writable(self.directory, "label corrections"):
            self._append(record)
        return action

    def undo(self) -> CorrectionAction | None:
        """Take back the latest action not undone yet (by appending an undo record); returns
        it, or None when there is nothing to undo. Undos themselves are not undone."""
        with _writable(self.directory, "label corrections"):
            # Under the lock: no other writer can append between choosing and recording.
            pending = [action for action in self._read() if not action.undone]
            if not pending:
                return None
            target = pending[-1]
            self._append(
                {"id": uuid.uuid4().hex, "op": "undo", "target": target.id, "time": time.time()}
            )
        return CorrectionAction(
            target.id, target.time, target.uids, target.label, target.source, undone=True
        )

    def _append(self, record: Mapping[str, Any]) -> None:
        """One whole line in one ``os.write`` on an O_APPEND descriptor, then fsync; the caller
        holds the lock. A torn last line (a writer killed mid-write) is ended first, in the same
        write, so this record starts on a line of its own."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):  # a full disk; never leave half a record unmarked
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            # The new file's name is durable too, not only its contents (best effort: some
            # filesystems refuse to fsync a folder, and the record itself is on disk already).
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    # ---- reading ------------------------------------------------------------------------------

    def _read(self) -> list[CorrectionAction]:
        """Every ``set`` action in order, each marked undone or not; cached until the file
        changes. Lines that are not whole records (a torn last line) are skipped."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
        with open(self.path, "rb") as handle:
            data = handle.read()
        actions: dict[str, CorrectionAction] = {}
        undone: set[str] = set()
        for line in data.split(b"\n"):
            record = _parse(line)
            if record is None:
                continue
            if record["op"] == "set":
                actions[record["id"]] = CorrectionAction(
                    record["id"],
                    record["time"],
                    tuple(record["uids"]),
                    record["label"],
                    record["source"],
                )
            else:
                undone.add(record["target"])
        result = [
            CorrectionAction(a.id, a.time, a.uids, a.label, a.source, undone=a.id in undone)
            if a.id in undone
            else a
            for a in actions.values()
        ]
        with self._lock:
            self._cached = (key, result)
        return result

    def current(self) -> dict[str, int]:
        """uid -> corrected dataset class, after every action not undone, in order (a later
        action wins; a None label removes the uid)."""
        labels: dict[str, int] = {}
        for action in self._read():
            if action.undone:
                continue
            if action.label is None:
                for uid in action.uids:
                    labels.pop(uid, None)
            else:
                labels.update(dict.fromkeys(action.uids, action.label))
        return labels

    def count(self) -> int:
        """How many samples have a correction now."""
        return len(self.current())

    def history(self, limit: int = 20) -> list[CorrectionAction]:
        """The latest ``limit`` actions, newest first, undone ones included (marked)."""
        if limit <= 0:
            return []
        return list(reversed(self._read()[-limit:]))


def _parse(line: bytes) -> dict[str, Any] | None:
    """A log line as a checked record, or None for anything else (blank, torn, foreign)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    if record.get("op") == "undo":
        return record if isinstance(record.get("target"), str) else None
    if record.get("op") != "set":
        return None
    uids, label = record.get("uids"), record.get("label")
    if not isinstance(uids, list) or not all(isinstance(uid, str) for uid in uids):
        return None
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        return None
    if not isinstance(record.get("time"), (int, float)):
        return None
    record["source"] = str(record.get("source", ""))
    return record


class SavedSelections:
    """Named selection specs of one run (``selections.json`` in ``directory``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / SELECTIONS_NAME

    def all(self) -> dict[str, str]:
        """name -> spec, in the order they were first saved."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise UserError(
                f"{self.path} is not valid JSON (edited by hand?); fix or delete it"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"{self.path} should map names to selections; fix or delete it")
        return {str(name): str(spec) for name, spec in data.items()}

    def get(self, name: str) -> str | None:
        return self.all().get(name)

    def save(self, name: str, spec: str) -> str:
        """Keep ``spec`` under ``name`` (replacing one of that name); returns the canonical spec
        that was saved. A name must not itself read as a spec, so ``--selection X`` is never
        ambiguous."""
        name = name.strip()
        if not 0 < len(name) <= MAX_SELECTION_NAME:
            raise UserError(f"a selection's name has 1..{MAX_SELECTION_NAME} characters")
        try:
            parse_selection(name)
        except UserError:
            pass
        else:
            raise UserError(
                f"'{name}' reads as a selection itself; choose a name that is not a filter"
            )
        canonical = parse_selection(spec).to_text()
        with _writable(self.directory, "saved selections"):
            saved = self.all()
            saved[name] = canonical
            self._write(saved)
        return canonical

    def delete(self, name: str) -> bool:
        """Forget ``name``; False when there was no such selection."""
        with _writable(self.directory, "saved selections"):
            saved = self.all()
            if saved.pop(name, None) is None:
                return False
            self._write(saved)
        return True

    def _write(self, saved: Mapping[str, str]) -> None:
        atomic_write_bytes(self.path, json.dumps(dict(saved), indent=1).encode(), durable=True)
