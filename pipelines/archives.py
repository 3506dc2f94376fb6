"""An uploaded zip of class folders, made into a ``folder:PATH`` dataset without trusting it.

What the archive may hold, and what becomes of it:

* One folder per class (``cat/1.png``), optionally under one wrapping folder (``pets/cat/1.png``,
  what zipping a folder gives), or split as ``train/<class>/...`` plus ``test/`` and/or ``val/``
  with the same class folders: that split is kept. Otherwise each class is split 80/20 by a
  seeded shuffle, and written as ``train/<class>/`` and ``test/<class>/``: the layout
  ``open_folder`` reads as a split (``datasets.SPLIT_FOLDERS``), whose test rows the precompute
  holds out. So every imported dataset is a split folder.
* Only images that decode (PIL, a few formats, at most ``MAX_IMAGE_PIXELS``) are kept; other
  files, ``__MACOSX/`` and hidden files are skipped and counted by reason.
* The whole archive is refused, before anything is extracted, if its central directory declares
  too many entries, too many bytes, an entry compressed suspiciously well (a zip bomb), a path
  that could leave the target folder (absolute, ``..``, a drive letter), a symlink or
  encryption. While extracting, the bytes actually written are capped too: declared sizes can lie.

On disk: ``<data-dir>/datasets/uploads/<name>-<sha256 of the zip, 16 hex>/``, built in a hidden
``.import-*`` folder beside it and renamed into place only when complete, so an interrupted
import leaves no folder that looks finished (leftovers are removed after a day). The same zip
imported again finds its folder by hash and reuses it. ``.import.json`` in the folder records
what the import found (hidden, so ``open_folder`` ignores it).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import stat
import time
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from pipelines.datasets import IMAGE_EXTENSIONS, SPLIT_FOLDERS, is_image_name
from pipelines.errors import UserError
from pipelines.io import TEMP_GLOB
from pipelines.store import uploaded_datasets_dir

MAX_ZIP_BYTES = 500 << 20  # the upload as sent
MAX_UNPACKED_BYTES = 2 << 30  # every entry's declared size together, and the bytes written
MAX_ENTRIES = 200_000
# Images barely compress (PNG, JPEG are compressed already): even a flat-coloured PNG stays far
# below this. 1 GB of zeros deflates about 1000:1.
MAX_RATIO = 100
# Small entries may compress well (a text file, a tiny flat image): the ratio is checked above
# this size only, where a bomb would matter.
RATIO_FLOOR_BYTES = 1 << 20
# As for images dropped onto the page (dashboard/uploads.py): refused before they are decoded.
MAX_IMAGE_PIXELS = 40_000_000
# Formats an image entry may be decoded as. Pillow otherwise picks a decoder from the content,
# whatever the name says, including EPS (which runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0
HASH_CHARS = 16
RECORD_NAME = ".import.json"
TEMP_PREFIXES = (".import-", ".upload-")
STALE_SECONDS = 24 * 3600  # a temp older than this belongs to an import that died
CHUNK = 1 << 20
_STAGING = ".staging"
# Errors that mean "this file system cannot have that name" (too long, bytes it refuses).
_BAD_NAME_ERRORS = (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ)
_LAYOUT = (
    "one folder per class (<class>/<image>), optionally inside one folder, or train/<class>/ "
    "and test/<class>/ (or val/) with the same classes"
)

Source = Path | str | IO[bytes]


class UploadTooLarge(UserError):
    """The upload is over a size limit (the HTTP route answers 413)."""


@dataclass(frozen=True)
class SplitImages:
    """Images kept in one split (``train``, ``test`` or ``val``), by class name."""

    split: str
    images: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.images.values())


@dataclass(frozen=True)
class Skipped:
    """Files left out for one reason: how many, and one of them (its path in the archive)."""

    reason: str
    count: int
    example: str


@dataclass(frozen=True)
class ImportedDataset:
    """What an import made. ``spec`` (``folder:<absolute path>``) is what precompute takes.

    ``split_from_archive``: the archive had train/ + test/ (or val/), kept as they were; False:
    the 80/20 split was made here. ``reused``: the same zip had been imported before, and its
    folder is returned as it was.
    """

    spec: str
    path: Path
    classes: tuple[str, ...]
    splits: tuple[SplitImages, ...]
    split_from_archive: bool
    skipped: tuple[Skipped, ...]
    reused: bool = False

    @property
    def images(self) -> int:
        return sum(split.total for split in self.splits)

    @property
    def skipped_count(self) -> int:
        return sum(skip.count for skip in self.skipped)

    def summary(self) -> str:
        """One line for the page: classes, images per split, what was skipped."""
        splits = " + ".join(f"{s.total:,} {s.split}" for s in self.splits)
        how = "split as in the archive" if self.split_from_archive else "split 80/20 here"
        text = f"{len(self.classes)} classes, {self.images:,} images ({splits}; {how})"
        if self.skipped:
            reasons = "; ".join(f"{s.count} {s.reason}, e.g. {s.example}" for s in self.skipped)
            text += f"; skipped {self.skipped_count} files ({reasons})"
        return text + ("; imported before, reused" if self.reused else "")

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``.import.json`` (the path is where it is read from)."""
        return {
            "classes": list(self.classes),
            "splits": {s.split: s.images for s in self.splits},
            "split_from_archive": self.split_from_archive,
            "skipped": [[s.reason, s.count, s.example] for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path, reused: bool) -> ImportedDataset:
        return cls(
            spec=f"folder:{path}",
            path=path,
            classes=tuple(data["classes"]),
            splits=tuple(SplitImages(k, dict(v)) for k, v in data["splits"].items()),
            split_from_archive=bool(data["split_from_archive"]),
            skipped=tuple(Skipped(r, int(c), e) for r, c, e in data["skipped"]),
            reused=reused,
        )


@dataclass(frozen=True)
class Entry:
    """An archive entry to extract: ``split`` from the archive (None: to be made), its class,
    and its path inside the class folder."""

    info: zipfile.ZipInfo
    split: str | None
    class_name: str
    inside: str

    @property
    def staged(self) -> str:
        """Where it is extracted to, relative to the import's temp folder: in place when the
        archive chose the split, else in a staging folder until the split is made."""
        return f"{self.split or _STAGING}/{self.class_name}/{self.inside}"


@dataclass
class SkipTally:
    """Skipped files by reason, counted while planning and extracting (then frozen)."""

    found: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.found.setdefault(reason, [0, name])[0] += 1

    def frozen(self) -> tuple[Skipped, ...]:
        return tuple(Skipped(r, c, e) for r, (c, e) in self.found.items())


# --------------------------------------------------------------------------------------------
# Receiving the upload


@contextlib.contextmanager
def received(source: Source, folder: Path, limit: int, what: str) -> Iterator[tuple[Path, str]]:
    """The upload as a file on disk and its SHA-256 (hex), refused past ``limit`` bytes.

    A path is read where it is. A stream is copied into a hidden temp file in ``folder`` with
    the cap enforced while reading (so an endless stream stops at ``limit``), deleted after.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{what} {path} does not exist; check the path")
        if path.stat().st_size > limit:
            raise UploadTooLarge(too_large(what, limit))
        with open(path, "rb") as handle:
            yield path, copy_capped(handle, None, limit, what)
        return
    folder.mkdir(parents=True, exist_ok=True)
    spool = folder / f".upload-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        with open(spool, "wb") as out:
            digest = copy_capped(source, out, limit, what)
        yield spool, digest
    finally:
        spool.unlink(missing_ok=True)


def copy_capped(source: IO[bytes], out: IO[bytes] | None, limit: int, what: str) -> str:
    """Copy ``source`` to ``out`` (None: only read it) in chunks; SHA-256 of the bytes.
    Raises :class:`UploadTooLarge` as soon as more than ``limit`` bytes have come."""
    digest = hashlib.sha256()
    total = 0
    while chunk := source.read(CHUNK):
        total += len(chunk)
        if total > limit:
            raise UploadTooLarge(too_large(what, limit))
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest()


def too_large(what: str, limit: int) -> str:
    return f"{what} is larger than {limit >> 20} MB; upload a smaller one"


def remove_stale_temps(folder: Path, now: float | None = None) -> None:
    """Delete the temp files and folders of imports (and atomic writes) that died more than a
    day ago. Younger ones may belong to an import still running in another process."""
    if not folder.is_dir():
        return
    now = time.time() if now is None else now
    for entry in folder.iterdir():
        temp = entry.name.startswith(TEMP_PREFIXES) or fnmatch.fnmatch(entry.name, TEMP_GLOB)
        if temp and now - entry.lstat().st_mtime > STALE_SECONDS:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The central directory: refused before anything is extracted


def entry_parts(name: str) -> tuple[str, ...]:
    """The path components of an entry name, or a UserError if it could leave the target
    folder: absolute (``/x``, ``\\x``), a drive letter (``C:x``) or a ``..`` component.
    Backslashes count as separators (some Windows zippers write them)."""
    text = name.replace("\\", "/")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        raise UserError(unsafe(name, "a path outside the archive's folder"))
    return parts


def unsafe(name: str, problem: str) -> str:
    return (
        f"the archive is refused: entry {name!r} is {problem}; zip the dataset folder itself "
        "(e.g. `zip -r data.zip data`), without links or absolute paths"
    )


def check_entry(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components, or a UserError for an entry no archive of images needs."""
    parts = entry_parts(info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(unsafe(info.filename, "a symbolic link"))
    if info.flag_bits & 0x1:
        raise UserError(
            f"the archive is encrypted (entry {info.filename!r}); upload a zip without a password"
        )
    return parts


def check_declared_sizes(
    infos: list[zipfile.ZipInfo], max_entries: int, max_bytes: int, what: str
) -> None:
    """Refuse a zip bomb from its central directory alone: too many entries, too many bytes
    declared in all, or an entry compressed better than ``MAX_RATIO``."""
    if len(infos) > max_entries:
        raise UploadTooLarge(
            f"{what} has {len(infos):,} entries, more than {max_entries:,}; upload fewer files"
        )
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise UploadTooLarge(
            f"{what} unpacks to {declared >> 20:,} MB, more than {max_bytes >> 20:,} MB; "
            "upload a smaller dataset"
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO:
            raise UserError(
                f"{what} is refused: entry {info.filename!r} would unpack {ratio:,.0f} times "
                f"larger than it is (at most {MAX_RATIO} for images); this looks like a zip "
                "bomb, not a dataset"
            )


def is_metadata(parts: tuple[str, ...]) -> bool:
    """macOS resource forks (``__MACOSX/``), ``.DS_Store`` and any hidden file or folder."""
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def plan_entries(infos: list[zipfile.ZipInfo], skipped: SkipTally) -> tuple[list[Entry], bool]:
    """The image entries to extract, each with its class (and split if the archive has one),
    and whether the archive is split. Everything else is counted in ``skipped``.

    Checks every entry first (:func:`check_entry`), so one unsafe entry refuses the archive.
    """
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    for info in infos:
        parts = check_entry(info)
        if info.is_dir() or not parts:
            continue
        if is_metadata(parts):
            skipped.add("OS metadata or hidden files", info.filename)
        elif not is_image_name(parts[-1]):
            skipped.add("not image files", info.filename)
        else:
            files.append((info, parts))
    # One wrapping folder (what zipping a folder makes) is not a level of the layout.
    tops = {parts[0] for _, parts in files}
    if len(tops) == 1 and all(len(parts) >= 3 for _, parts in files):
        files = [(info, parts[1:]) for info, parts in files]
        tops = {parts[0] for _, parts in files}
    split = "train" in tops and len(tops) >= 2 and tops <= set(SPLIT_FOLDERS)
    depth = 3 if split else 2
    entries: list[Entry] = []
    for info, parts in files:
        if len(parts) < depth:
            skipped.add("files outside a class folder", info.filename)
            continue
        head = 1 if split else 0
        entries.append(
            Entry(
                info=info,
                split=parts[0] if split else None,
                class_name=parts[head],
                inside="/".join(parts[head + 1 :]),
            )
        )
    if split:
        check_same_classes(entries)
    return entries, split


def check_same_classes(entries: list[Entry]) -> None:
    """In a split archive, every split must have the same class folders."""
    by_split: dict[str, set[str]] = {}
    for entry in entries:
        by_split.setdefault(entry.split or "", set()).add(entry.class_name)
    every = set().union(*by_split.values())
    for split, classes in sorted(by_split.items()):
        if classes != every:
            missing = ", ".join(sorted(every - classes))
            raise UserError(
                f"the archive's {split}/ has no folder for class(es) {missing}, which another "
                f"split has; give {', '.join(sorted(by_split))} the same class folders"
            )


# --------------------------------------------------------------------------------------------
# Extraction


def extract_entries(
    archive: zipfile.ZipFile, entries: list[Entry], target: Path, skipped: SkipTally
) -> list[Entry]:
    """Extract ``entries`` under ``target`` (at ``Entry.staged``), keeping those that decode as
    images; the others are deleted and counted in ``skipped``. The bytes written are capped
    per entry (its declared size) and in all (``MAX_UNPACKED_BYTES``)."""
    root = target.resolve()
    budget = MAX_UNPACKED_BYTES
    seen: set[str] = set()
    kept: list[Entry] = []
    for entry in entries:
        if entry.staged in seen:
            skipped.add("duplicate entries", entry.info.filename)
            continue
        seen.add(entry.staged)
        path = root / entry.staged
        # entry_parts already refused "..": this is the last line, should that ever change.
        if not path.resolve().is_relative_to(root):
            raise UserError(unsafe(entry.info.filename, "a path outside the archive's folder"))
        limit = min(entry.info.file_size, budget)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")
        except OSError as error:
            if error.errno not in _BAD_NAME_ERRORS:
                raise  # a full disk is the server's problem, not the archive's
            skipped.add("names this server cannot store", entry.info.filename)
            continue
        try:
            with archive.open(entry.info) as source, out:
                budget -= write_capped(source, out, limit, entry.info.filename)
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise UserError(
                f"the archive is damaged at entry {entry.info.filename!r} ({error}); zip the "
                "folder again and upload the new file"
            ) from None
        if readable_image(path):
            kept.append(entry)
        else:
            path.unlink()
            skipped.add("unreadable images", entry.info.filename)
    return kept


def write_capped(source: IO[bytes], out: IO[bytes], limit: int, name: str) -> int:
    """Copy at most ``limit`` bytes; more means the entry is bigger than its declared size or
    the total budget, and the archive is refused."""
    written = 0
    while chunk := source.read(CHUNK):
        written += len(chunk)
        if written > limit:
            raise UploadTooLarge(
                f"the archive is refused: entry {name!r} unpacks to more than its declared size "
                f"or the {MAX_UNPACKED_BYTES >> 20:,} MB limit; upload a smaller dataset"
            )
        out.write(chunk)
    return written


def readable_image(path: Path) -> bool:
    """True if ``path`` is a whole image of an accepted format, at most ``MAX_IMAGE_PIXELS``:
    its header read and its size checked before any pixel is decoded, then verified (PNG's
    chunk CRCs) and decoded in full."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    return False
                image.verify()
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                image.load()
        return True
    except (OSError, SyntaxError, ValueError, EOFError, Warning, Image.DecompressionBombError):
        return False


def made_split(entries: list[Entry], seed: int = SPLIT_SEED) -> dict[str, str]:
    """Staged path -> "train" or "test": per class, a shuffle seeded by ``seed`` and the class
    name (so a class's split does not depend on the others), its first 20% held out (at least
    one image of a class with two or more)."""
    by_class: dict[str, list[str]] = {}
    for entry in entries:
        by_class.setdefault(entry.class_name, []).append(entry.staged)
    split: dict[str, str] = {}
    for name, staged in sorted(by_class.items()):
        order = sorted(staged)
        random.Random(f"{seed}/{name}").shuffle(order)
        held = held_out_count(len(order))
        split.update({path: "test" if i < held else "train" for i, path in enumerate(order)})
    return split


def held_out_count(images: int) -> int:
    if images < 2:
        return 0
    return max(1, int(images * HELD_OUT_FRACTION + 0.5))


def place_split(target: Path, kept: list[Entry], split: dict[str, str]) -> list[Entry]:
    """Move staged images to ``<split>/<class>/<inside>``; the entries as placed."""
    placed = []
    for entry in kept:
        final = Entry(entry.info, split[entry.staged], entry.class_name, entry.inside)
        destination = target / final.staged
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target / entry.staged, destination)
        placed.append(final)
    shutil.rmtree(target / _STAGING, ignore_errors=True)
    return placed


def counted(entries: list[Entry]) -> tuple[tuple[str, ...], tuple[SplitImages, ...]]:
    """Classes (sorted, as ``open_folder`` orders them) and images per split and class."""
    classes = tuple(sorted({e.class_name for e in entries}))
    splits = []
    for split in SPLIT_FOLDERS:
        mine = [e for e in entries if e.split == split]
        if mine:
            images = {c: n for c in classes if (n := sum(e.class_name == c for e in mine))}
            splits.append(SplitImages(split, images))
    return classes, tuple(splits)


def check_usable(
    classes: tuple[str, ...], splits: tuple[SplitImages, ...], skipped: tuple[Skipped, ...]
) -> None:
    """An imported dataset needs images of 2 classes or more, and images in every split."""
    if not classes:
        found = "; ".join(f"{s.count} {s.reason}, e.g. {s.example}" for s in skipped)
        raise UserError(
            f"the archive has no usable images{f' ({found})' if found else ''}; it must contain "
            f"image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {_LAYOUT}"
        )
    if len(classes) < 2:
        raise UserError(
            f"the archive has images of one class only ({classes[0]}); a dataset needs at least "
            f"2 classes, as {_LAYOUT}"
        )
    if len(splits) < 2:
        raise UserError(
            "the archive has too few images to hold any out for testing; give each class at "
            "least 2 images (or add a test/ split with images)"
        )


# --------------------------------------------------------------------------------------------
# The import


def folder_name(name: str, digest: str) -> str:
    """``<name>-<hash>``: the name reduced to letters, digits, ``-`` and ``_`` (at most 40),
    so nothing the user typed can make a path."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")[:40].strip("-_") or "dataset"
    return f"{safe}-{digest[:HASH_CHARS]}"


def previous_import(uploads: Path, digest: str) -> ImportedDataset | None:
    """The dataset an earlier import of the same zip made, whatever it was called."""
    for folder in sorted(uploads.glob(f"*-{digest[:HASH_CHARS]}")):
        record = folder / RECORD_NAME
        if folder.is_dir() and not folder.name.startswith(".") and record.is_file():
            data = json.loads(record.read_text())
            return ImportedDataset.from_json(data, folder.resolve(), reused=True)
    return None


def import_dataset_zip(source: Source, data_dir: Path, name: str) -> ImportedDataset:
    """Make an uploaded zip of class folders into a dataset under ``data_dir``.

    ``source``: a path or a binary stream (read to the end). ``name``: what the user calls the
    dataset, used (sanitised) in the folder's name only. Raises :class:`UserError` (or its
    :class:`UploadTooLarge`) saying what the archive must be.
    """
    uploads = uploaded_datasets_dir(data_dir)
    uploads.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(uploads)
    with received(source, uploads, MAX_ZIP_BYTES, "the archive") as (path, digest):
        earlier = previous_import(uploads, digest)
        if earlier is not None:
            return earlier
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(
                f"the upload is not a zip archive ({error}); zip the dataset folder and upload "
                "the .zip"
            ) from None
        with archive:
            infos = archive.infolist()
            check_declared_sizes(infos, MAX_ENTRIES, MAX_UNPACKED_BYTES, "the archive")
            skipped = SkipTally()
            entries, split_from_archive = plan_entries(infos, skipped)
            temp = uploads / f".import-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            temp.mkdir()
            try:
                kept = extract_entries(archive, entries, temp, skipped)
                if not split_from_archive:
                    kept = place_split(temp, kept, made_split(kept))
                classes, splits = counted(kept)
                check_usable(classes, splits, skipped.frozen())
                final = uploads.resolve() / folder_name(name, digest)
                record = ImportedDataset(
                    spec=f"folder:{final}",
                    path=final,
                    classes=classes,
                    splits=splits,
                    split_from_archive=split_from_archive,
                    skipped=skipped.frozen(),
                )
                (temp / RECORD_NAME).write_text(json.dumps(record.to_json()))
                try:
                    os.rename(temp, final)
                except OSError:
                    # Another import of the same zip finished first: theirs is as good.
                    earlier = previous_import(uploads, digest)
                    if earlier is None:
                        raise
                    return earlier
                return record
            finally:
                shutil.rmtree(temp, ignore_errors=True)
