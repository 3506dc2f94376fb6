"""A run's record of the dataset it was computed from, and how to tell the data changed since.

A run's rows are the dataset's samples in a seeded order that depends on every sample, so adding,
removing or editing one image of a folder invalidates the run: a resume would mix two datasets,
and the dashboard's on-demand work (which re-reads images) would show the wrong picture.

File datasets are fingerprinted by their file list with each file's size and modification time
(``os.stat``; no image is decoded, so a check of 13k files takes ~0.1 s). In-memory datasets
(digits, MNIST, CIFAR-10) by their sample uids and labels. The digest goes into the manifest; the
per-file table is stored beside it, so a change can be described ("3 images added").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.datasets import Dataset, source_files
from pipelines.errors import UserError

# source (path relative to the dataset root) -> [size in bytes, modification time in ns]
FileTable = dict[str, list[int]]


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a dataset's content: ``kind`` "files" or "samples", the number of
    entries and a sha256 over them; ``files`` is the per-file table (file datasets only)."""

    kind: str
    entries: int
    digest: str
    files: FileTable | None = None

    def to_json(self) -> dict[str, object]:
        """The manifest's ``dataset.fingerprint`` (the file table is stored apart)."""
        return {"kind": self.kind, "entries": self.entries, "sha256": self.digest}


def file_table(root: Path, sources: list[str]) -> FileTable:
    """Size and mtime of each of ``sources`` under ``root``; a missing file gets [-1, -1]."""
    table: FileTable = {}
    for source in sources:
        try:
            stat = os.stat(root / source)
            table[source] = [int(stat.st_size), int(stat.st_mtime_ns)]
        except OSError:
            table[source] = [-1, -1]
    return table


def digest_of(entries: object) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(dataset: Dataset) -> Fingerprint:
    """The fingerprint of ``dataset`` as it is on disk now."""
    sources = dataset.list_files()
    if sources is None or dataset.root is None:
        entries = [[record.uid, record.label] for record in dataset.samples]
        return Fingerprint("samples", len(entries), digest_of(entries))
    return files_fingerprint(dataset.root, sources)


def files_fingerprint(root: Path, sources: list[str]) -> Fingerprint:
    table = file_table(root, sorted(sources))
    return Fingerprint("files", len(table), digest_of(table), table)


def change_on_disk(
    spec: str,
    cache_dir: Path,
    recorded: Mapping[str, object] | None,
    recorded_files: FileTable | None,
) -> str | None:
    """For the dashboard: what changed in a file dataset since its run recorded it, or None.
    Lists and stats the files (~0.1 s for 13k), decodes nothing."""
    if not recorded or recorded.get("kind") != "files":
        return None
    try:
        listing = source_files(spec, cache_dir)
    except UserError as exc:
        return str(exc)
    if listing is None:
        return None
    return change_since(recorded, recorded_files, files_fingerprint(*listing))


def describe_change(recorded: FileTable, current: FileTable) -> str:
    """e.g. "8 images added, 1 removed, 2 modified (e.g. cats/new.png)"."""
    added = sorted(set(current) - set(recorded))
    removed = sorted(set(recorded) - set(current))
    modified = sorted(s for s in set(recorded) & set(current) if recorded[s] != current[s])
    parts = []
    if added:
        parts.append(f"{len(added)} image{'s' if len(added) != 1 else ''} added")
    if removed:
        parts.append(f"{len(removed)} removed")
    if modified:
        parts.append(f"{len(modified)} modified")
    example = (added or removed or modified or [""])[0]
    return f"{', '.join(parts) or 'the file list changed'}" + (
        f" (e.g. {example})" if example else ""
    )


def change_since(
    recorded: Mapping[str, object] | None, recorded_files: FileTable | None, current: Fingerprint
) -> str | None:
    """None if ``current`` matches the recorded fingerprint (or the run predates fingerprints),
    else a sentence saying what changed."""
    if not recorded:
        return None
    if recorded.get("sha256") == current.digest:
        return None
    if current.files is not None and recorded_files is not None:
        return describe_change(recorded_files, current.files)
    return f"it had {recorded.get('entries')} samples, now {current.entries}, or they changed"


def changed_source_error(run_id: str, dataset_spec: str, change: str) -> UserError:
    return UserError(
        f"the dataset of run '{run_id}' changed since it was computed ({dataset_spec}: {change}); "
        "pass a new --run-id to compute a fresh run on the data as it is now, or restore the "
        "files to resume this one"
    )


def sample_is_unchanged(root: Path | None, source: str, recorded_files: FileTable | None) -> bool:
    """For on-demand work on one sample: True if its file still has the recorded size and
    mtime (always True for in-memory datasets and for runs without a file table)."""
    if root is None or recorded_files is None or source not in recorded_files:
        return True
    return file_table(root, [source])[source] == recorded_files[source]
