"""Datasets: turn what the user typed (``digits``, ``folder:PATH``, ``imagenette``...) into samples.

Every dataset becomes the same thing: a :class:`Dataset` with human class names, a deterministic
list of :class:`SampleRecord` (each with a uid that is stable across runs) and ``load_image``.
Everything downstream (thumbnails, predictions, activations) only ever sees that interface.

Downloads go through torchvision's own code (``torchvision.datasets.utils`` and the dataset
classes), but always into ``<cache_dir>/.partial-<name>-<pid>`` first; only the finished folder is
moved into place with ``os.replace``. So a killed download can never leave a folder that looks
complete, and the next attempt removes the leftover ``.partial-*``.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import http.client
import importlib.util
import os
import shutil
import socket
import sys
import tarfile
import urllib.error
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from pipelines import report
from pipelines.errors import UserError
from pipelines.io import exclusive_lock
from pipelines.types import UInt8Array

# Lower-case suffixes a folder dataset accepts; anything else (README.txt, .csv) is ignored.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

# The one table of fast.ai archives: (url, md5 or None). Download code reads it at call time, so
# tests point it at a local server. Imagenette's entry is torchvision's own
# (``Imagenette._ARCHIVES["160px"]``, checked in tests/test_datasets.py), written out because
# importing torchvision costs 2 s of a core that a run on digits does not need (issue 13).
ARCHIVES: dict[str, tuple[str, str | None]] = {
    "imagenette": (
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
        "e793b78cc4c9e9a4ccc0c1155377a412",
    ),
    "imagewoof": (
        "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz",
        "3d200a7be99704a0d7509be2a9fbfe15",
    ),
}

# Folder each archive extracts to. Fixed rather than derived from ARCHIVES: torchvision's
# Imagenette class looks for exactly "imagenette2-160" under its root.
_ARCHIVE_FOLDERS: dict[str, str] = {
    "imagenette": "imagenette2-160",
    "imagewoof": "imagewoof2-160",
}

IMAGEWOOF_CLASSES: dict[str, str] = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}

DIGIT_NAMES: list[str] = [str(d) for d in range(10)]

# name -> (torchvision.datasets class name, folder the class keeps under its root, human class
# names or None to take them from the dataset, channels, description). Names, not classes:
# torchvision is imported when one of these is opened (the folders are checked against
# torchvision's in tests/test_datasets.py).
_TORCHVISION_ARRAYS: dict[str, tuple[str, str, list[str] | None, int, str]] = {
    "mnist": ("MNIST", "MNIST", DIGIT_NAMES, 1, "MNIST handwritten digits, 28×28 grayscale"),
    "fashion-mnist": (
        "FashionMNIST",
        "FashionMNIST",
        None,
        1,
        "Fashion-MNIST clothing items, 28×28 grayscale",
    ),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", None, 3, "CIFAR-10 small photos, 32×32 colour"),
}

# The sub-folders that make a folder dataset split (``PATH/train/<class>/...``, ``PATH/test/...``);
# samples under "test" or "val" are the run's held-out rows.
SPLIT_FOLDERS: tuple[str, ...] = ("train", "test", "val")

DATASET_CHOICES: tuple[str, ...] = (
    "digits",
    "imagenette",
    "imagewoof",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "folder:PATH",
)
# Specs that name a built-in dataset (everything but folder:PATH).
BUILTIN_DATASETS: tuple[str, ...] = DATASET_CHOICES[:-1]

# Errors that mean "the download or its archive did not work out", as opposed to bugs.
_DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (
    urllib.error.URLError,
    http.client.HTTPException,
    OSError,  # connection reset, timeouts, truncated gzip (BadGzipFile)
    RuntimeError,  # torchvision: "File not found or corrupted." (md5), "Error downloading ..."
    tarfile.TarError,
    EOFError,  # a truncated .tgz
    zlib.error,
)

# Reads stall forever without a timeout (torchvision sets none); a minute of silence means the
# connection is dead, not slow.
_SOCKET_TIMEOUT_S = 60.0
# Folders smaller than this are checked in well under a second; a bar would only be noise.
_PROGRESS_MIN_FILES = 500
# Transparent pixels get this background: what image viewers show, and the colour under a
# transparent area is otherwise arbitrary (often black or garbage).
_BACKGROUND = 255


class UnreadableImage(UserError):
    """An image file PIL cannot decode. The message names the file and what to do."""


@dataclass(frozen=True)
class SampleRecord:
    """One sample of a dataset.

    ``uid`` is stable across runs: ``digits-00042``; ``{name}-{split}-{index:06d}`` for
    torchvision sets (index within the split); ``f-`` + 12 hex of sha1(relative path) for folders.
    ``source`` is the path relative to the dataset folder, or ``index:N`` for array datasets.
    """

    uid: str
    source: str
    label: int  # index into Dataset.class_names
    split: str  # "train" / "val" / "test" / "all"


class Dataset:
    """A labelled image dataset in a deterministic order, opened by :func:`open_dataset`."""

    def __init__(
        self,
        *,
        name: str,
        spec: str,
        description: str,
        class_names: list[str],
        class_wnids: list[str] | None,
        samples: list[SampleRecord],
        native_channels: int,
        read: Callable[[int], Image.Image],
        list_files: Callable[[], list[str]] | None = None,
        root: Path | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.description = description
        self.class_names = class_names
        self.class_wnids = class_wnids
        self.samples = samples
        self._native_channels = native_channels
        self._read = read
        self._list_files = list_files
        self._root = root

    @property
    def native_channels(self) -> int:
        """1 if the data is grayscale (digits, mnist, fashion-mnist), else 3."""
        return self._native_channels

    @property
    def labels(self) -> np.ndarray:
        """``(N,) int64`` label of every sample, in sample order."""
        return np.fromiter((s.label for s in self.samples), dtype=np.int64, count=len(self))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def root(self) -> Path | None:
        """The folder image files are read from (``SampleRecord.source`` is relative to it), or
        None for in-memory datasets."""
        return self._root

    def list_files(self) -> list[str] | None:
        """Every image file the dataset would consider now, relative to ``root`` (unreadable
        ones included), without decoding anything; None for in-memory datasets. The run's
        dataset fingerprint is built from it."""
        return self._list_files() if self._list_files else None

    def load_image(self, index: int) -> Image.Image:
        """Image of sample ``index``, mode "L" or "RGB" (so ``.convert("RGB")`` is always safe).

        Raises :class:`UnreadableImage` for a file that cannot be decoded.
        """
        if not 0 <= index < len(self.samples):
            raise IndexError(f"sample index {index} out of range for {len(self.samples)} samples")
        return self._read(index)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, spec={self.spec!r}, samples={len(self.samples)}, "
            f"classes={len(self.class_names)})"
        )


def open_dataset(spec: str, cache_dir: Path, progress: bool = True) -> Dataset:
    """Open the dataset named by ``spec``, downloading it into ``cache_dir`` if needed.

    ``cache_dir`` is ``<data-dir>/datasets``. Unknown specs, missing folders, failed downloads and
    folders without usable images raise :class:`UserError`.
    """
    text = spec.strip()
    if text[:7].lower() == "folder:":
        return open_folder(text[7:], progress=progress)
    key = text.lower()
    cache_dir = Path(cache_dir).expanduser()
    if key == "digits":
        return open_digits()
    if key in ARCHIVES:
        return open_fastai_subset(key, cache_dir, progress=progress)
    if key in _TORCHVISION_ARRAYS:
        return open_torchvision_arrays(key, cache_dir, progress=progress)
    raise UserError(unknown_spec_message(text))


def source_root(spec: str, cache_dir: Path) -> Path | None:
    """The folder a file dataset's ``SampleRecord.source`` paths are relative to (its
    ``Dataset.root``), from the spec alone, touching nothing on disk; None for in-memory
    datasets (whose sources are ``index:N``)."""
    text = spec.strip()
    if text[:7].lower() == "folder:":
        return Path(text[7:]).expanduser().resolve()
    key = text.lower()
    if key in ARCHIVES:
        return Path(cache_dir).expanduser() / key / _ARCHIVE_FOLDERS[key]
    return None


def source_files(spec: str, cache_dir: Path) -> tuple[Path, list[str]] | None:
    """The root and image files of a file dataset as they are on disk now, as its
    ``Dataset.list_files`` gives them, without opening (decoding) anything; None for in-memory
    datasets. A folder that is gone raises UserError."""
    root = source_root(spec, cache_dir)
    if root is None:
        return None
    if spec.strip()[:7].lower() == "folder:":
        return root, candidate_files(root, class_folders(root))
    return root, fastai_files(root)


def fastai_files(size_root: Path) -> list[str]:
    """``<split>/<wnid>/<image>`` of an extracted fast.ai archive, readable or not."""
    return [
        f"{split}/{rel}"
        for split in ("train", "val")
        for rel in candidate_files(size_root / split, class_folders(size_root / split))
    ]


def unknown_spec_message(text: str) -> str:
    """Say why ``text`` is not a dataset spec and what to type instead."""
    hint = ""
    if text and Path(text).expanduser().is_dir():
        hint = f"; to use that folder pass --dataset folder:{text}"
    else:
        close = difflib.get_close_matches(text.lower(), BUILTIN_DATASETS, n=1)
        if close:
            hint = f"; did you mean '{close[0]}'?"
    return f"unknown dataset '{text}'{hint}; choose one of: {', '.join(DATASET_CHOICES)}"


# --------------------------------------------------------------------------------------------
# digits (offline, bundled with scikit-learn)


def digits_to_uint8(images: np.ndarray) -> UInt8Array:
    """Rescale scikit-learn digits to 8-bit gray.

    ``images: (N, 8, 8) float64`` with values 0..16 -> ``(N, 8, 8) uint8`` with values 0..255.
    """
    return np.rint(np.asarray(images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)


def digits_file() -> Path:
    """The digits as scikit-learn ships them: a gzipped CSV of 1,797 rows, 64 pixel values
    (0..16, row by row) and the label. Found without importing scikit-learn, whose import (1.6-2
    s on 2 cores) was the longest step before the embedded default's training."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the digits dataset ships with scikit-learn; pip install -r requirements.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The file ``sklearn.datasets.load_digits`` reads, read the way it does: ``(images (N, 8,
    8) float64 0..16, labels (N,) int64)`` (tests/test_datasets.py checks both are equal)."""
    with gzip.open(path, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def open_digits() -> Dataset:
    """scikit-learn's 8×8 handwritten digits: 1,797 samples, split "all", works offline."""
    images, labels = read_digits(digits_file())
    pixels = digits_to_uint8(images)
    samples = [
        SampleRecord(uid=f"digits-{i:05d}", source=f"index:{i}", label=int(label), split="all")
        for i, label in enumerate(labels)
    ]
    return Dataset(
        name="digits",
        spec="digits",
        description=f"scikit-learn handwritten digits: {len(samples):,} 8×8 grayscale images, "
        "10 classes (bundled, offline)",
        class_names=list(DIGIT_NAMES),
        class_wnids=None,
        samples=samples,
        native_channels=1,
        read=array_reader(pixels),
    )


def array_reader(pixels: UInt8Array) -> Callable[[int], Image.Image]:
    """Reader for in-memory images: ``pixels: (N, H, W) uint8`` (-> "L") or ``(N, H, W, 3)``."""

    def read(index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(pixels[index]))

    return read


# --------------------------------------------------------------------------------------------
# folder:PATH


def open_folder(path_text: str, progress: bool = True) -> Dataset:
    """A folder laid out as ``PATH/<class>/<image>`` (images may sit deeper inside a class), or
    split as ``PATH/train/<class>/<image>`` plus ``PATH/test/...`` and/or ``PATH/val/...``.

    Classes are the sorted sub-folder names (in a split folder: of every split together). A split
    folder's samples carry its split ("train", "test", "val"), which the precompute keeps as the
    held-out rows; otherwise every sample's split is "all". Unreadable files are skipped with one
    warning, and classes left without images are dropped with another.

    Folder symlinks are followed so that each real folder is read once: a class folder, or a
    folder inside one, may be a symlink to a folder elsewhere (a common way to assemble a
    dataset), but a symlink that leads back into ``PATH`` (``self -> .``, ``alias -> cat``), to
    a folder containing ``PATH`` (``up -> ..``), or to a folder already read through another
    symlink is skipped with one warning, since its images would be counted twice.
    """
    if not path_text.strip():
        raise UserError(
            "folder: needs a path; pass --dataset folder:PATH with images laid out as "
            "PATH/<class>/<image>"
        )
    root = Path(path_text).expanduser().resolve()
    skipped_links: list[str] = []
    classes = class_folders(root, skipped_links)
    rel_paths = candidate_files(root, classes, skipped_links)
    if skipped_links:
        count = len(skipped_links)
        shown = ", ".join(skipped_links[:3]) + (", …" if count > 3 else "")
        report.warn(
            f"did not follow {count} folder symlink{'' if count == 1 else 's'} in {root} that "
            f"lead{'s' if count == 1 else ''} back into it, to a folder containing it, or to a "
            f"folder already read ({shown}); their images would be counted twice"
        )
    splits = split_folders(root, classes)
    candidates = files_by_class(classes, rel_paths, splits)
    classes = list(candidates)
    unreadable = set(find_unreadable(root, rel_paths, progress=progress))
    if unreadable:
        example = min(unreadable)
        count = len(unreadable)
        report.warn(
            f"skipped {count} unreadable file{'' if count == 1 else 's'} in {root} (e.g. {example})"
        )

    usable = {
        name: [rel for rel in files if rel not in unreadable] for name, files in candidates.items()
    }
    kept = [name for name in classes if usable[name]]
    dropped = [name for name in classes if not usable[name]]
    if not kept:
        raise UserError(
            f"no usable images in {root}; expected images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) laid out as {root}/<class>/<image>"
        )
    if dropped:
        count = len(dropped)
        report.warn(
            f"dropped {count} class{'' if count == 1 else 'es'} with no usable images in {root}: "
            f"{', '.join(dropped)}"
        )

    samples = [
        SampleRecord(
            uid=folder_uid(rel),
            source=rel,
            label=label,
            split=rel.split("/", 1)[0] if splits else "all",
        )
        for label, name in enumerate(kept)
        for rel in usable[name]
    ]
    return Dataset(
        name="folder",
        spec=f"folder:{root}",
        description=f"Image folder {root.name}: {len(samples):,} images in {len(kept)} classes "
        f"({root})",
        class_names=kept,
        class_wnids=None,
        samples=samples,
        native_channels=3,
        read=file_reader(root, samples),
        list_files=lambda: candidate_files(root, class_folders(root)),
        root=root,
    )


def split_folders(root: Path, top: list[str]) -> bool:
    """True if the folder ``root`` is split: its sub-folders ``top`` are ``train`` and ``test``
    and/or ``val`` (nothing else), and each holds sub-folders (the classes). A lone ``train``
    folder, or one of images, is a class that happens to be called so."""
    names = set(top)
    if "train" not in names or len(names) < 2 or not names <= set(SPLIT_FOLDERS):
        return False
    return all(
        any(entry.is_dir() and not entry.name.startswith(".") for entry in (root / name).iterdir())
        for name in top
    )


def files_by_class(classes: list[str], rel_paths: list[str], split: bool) -> dict[str, list[str]]:
    """Class name -> its candidate files (relative to the dataset root), classes sorted.

    Not split: ``rel_paths`` are ``<class>/...`` and every class of ``classes`` is kept, even
    without files (so it can be reported as dropped). Split: they are ``<split>/<class>/...``,
    the classes are those found in any split, and an image loose in a split folder is in none.
    """
    if not split:
        grouped: dict[str, list[str]] = {name: [] for name in classes}
        for rel in rel_paths:
            grouped[rel.split("/", 1)[0]].append(rel)
        return grouped
    in_class = [rel for rel in rel_paths if rel.count("/") >= 2]
    grouped = {name: [] for name in sorted({rel.split("/", 2)[1] for rel in in_class})}
    for rel in in_class:
        grouped[rel.split("/", 2)[1]].append(rel)
    return grouped


def folder_uid(rel_path: str) -> str:
    """Stable uid of a folder image: ``f-`` + 12 hex digits of sha1 of its relative posix path.

    Relative, so the same images give the same uids wherever the folder is moved.
    """
    return "f-" + hashlib.sha1(rel_path.encode("utf-8")).hexdigest()[:12]


def class_folders(root: Path, skipped_links: list[str] | None = None) -> list[str]:
    """Sorted names of the class sub-folders of ``root``; raises UserError if there are none.

    ``root`` is resolved. A sub-folder may be a symlink to a folder outside ``root``; one that
    leads into ``root``, to a folder containing it, or to the same folder as an earlier class is
    left out and described (``"name -> target"``) in ``skipped_links``.
    """
    layout = f"{root}/<class>/<image>"
    if not root.exists():
        raise UserError(
            f"folder {root} does not exist; check the path in folder:PATH (images go in {layout})"
        )
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder; pass a folder laid out as {layout}")
    entries = sorted(
        (e for e in root.iterdir() if not e.name.startswith(".")), key=lambda e: e.name
    )
    classes: list[str] = []
    refused: list[str] = []
    read_trees = [root]
    for entry in entries:
        if not entry.is_dir():
            continue
        if entry.is_symlink() and not claim_tree(entry, read_trees, root, refused):
            continue
        classes.append(entry.name)
    if skipped_links is not None:
        skipped_links.extend(refused)
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image_name(e.name))
        found = f"found {loose} images directly in it; " if loose else ""
        if refused:
            found += f"did not follow folder symlinks that loop back ({', '.join(refused)}); "
        raise UserError(
            f"folder {root} has no class sub-folders; {found}expected one sub-folder per class: "
            f"{layout}"
        )
    return classes


def candidate_files(
    root: Path, classes: list[str], skipped_links: list[str] | None = None
) -> list[str]:
    """``<class>/<image>`` paths, relative to ``root``, of every image file of ``classes``,
    readable or not (nothing is decoded). Each real folder is read once across all classes
    (see :func:`image_files`); symlinks not followed are described in ``skipped_links``."""
    read_trees = [root.resolve()]
    read_trees += [(root / name).resolve() for name in classes if (root / name).is_symlink()]
    return [
        f"{name}/{rel}"
        for name in classes
        for rel in image_files(root / name, read_trees, skipped_links, relative_to=root)
    ]


def claim_tree(
    link: Path, read_trees: list[Path], root: Path, skipped_links: list[str] | None
) -> bool:
    """Whether the folder symlink ``link`` may be followed: only if its target shares no folder
    with ``read_trees`` (the dataset root and the folders already read). A followed target is
    added to ``read_trees``; a refused one is described in ``skipped_links``."""
    target = link.resolve()
    if any(overlapping(target, tree) for tree in read_trees):
        if skipped_links is not None:
            shown = link.relative_to(root) if link.is_relative_to(root) else link
            skipped_links.append(f"{shown.as_posix()} -> {target}")
        return False
    read_trees.append(target)
    return True


def overlapping(a: Path, b: Path) -> bool:
    """True if the resolved folders ``a`` and ``b`` are the same or one contains the other."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def is_image_name(name: str) -> bool:
    """True for file names with an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def image_files(
    class_dir: Path,
    read_trees: list[Path] | None = None,
    skipped_links: list[str] | None = None,
    relative_to: Path | None = None,
) -> list[str]:
    """Sorted posix paths, relative to ``class_dir``, of every image file below it.

    Hidden files and folders are skipped: they are OS metadata (``.DS_Store``, ``._x.jpg``
    resource forks), never images the user meant. Folder symlinks are followed unless they lead
    into a folder of ``read_trees`` (resolved folders already being read; default: the class
    folder itself), or contain one: so loops end and no real folder is read twice. Those not
    followed are described in ``skipped_links``, relative to ``relative_to`` (default
    ``class_dir``).
    """
    trees = read_trees if read_trees is not None else [class_dir.resolve()]
    base = relative_to or class_dir
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not d.startswith(".")
            and (not (here / d).is_symlink() or claim_tree(here / d, trees, base, skipped_links))
        ]
        rel_dir = here.relative_to(class_dir)
        for filename in filenames:
            if not filename.startswith(".") and is_image_name(filename):
                found.append((rel_dir / filename).as_posix())
    return sorted(found)


def find_unreadable(root: Path, rel_paths: list[str], progress: bool = True) -> list[str]:
    """The entries of ``rel_paths`` (relative to ``root``) that fail :func:`check_image`."""
    show = progress and len(rel_paths) >= _PROGRESS_MIN_FILES
    if show:
        from tqdm import tqdm

        items = tqdm(rel_paths, desc=f"checking images in {root.name}", unit="img", leave=False)
    else:
        items = rel_paths
    return [rel for rel in items if not check_image(root / rel)]


def check_image(path: Path) -> bool:
    """True if ``path`` decodes as an image.

    PNG's ``verify`` checks every chunk's CRC, so it catches truncation without decoding. JPEG's
    ``verify`` checks nothing, so JPEGs are decoded in draft mode instead: the decoder still reads
    all entropy-coded data (truncation shows) but produces 1/64 of the pixels (~0.2 ms for
    160 px). Other formats are rare enough to decode fully.
    """
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                img.verify()
            else:
                if img.format == "JPEG":
                    img.draft(img.mode, (1, 1))
                img.load()
        return True
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return False


def file_reader(root: Path, samples: list[SampleRecord]) -> Callable[[int], Image.Image]:
    """Reader for datasets whose ``SampleRecord.source`` is a path relative to ``root``."""

    def read(index: int) -> Image.Image:
        return read_image(root / samples[index].source)

    return read


def read_image(path: Path) -> Image.Image:
    """Decode one image file into mode "L" or "RGB", applying its EXIF orientation.

    Raises :class:`UnreadableImage` (a UserError that names the file) if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
        return to_l_or_rgb(upright)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImage(
            f"cannot read image {path} ({error}); remove or replace the file and re-run"
        ) from error


def to_l_or_rgb(img: Image.Image) -> Image.Image:
    """Normalise any PIL mode to "L" (grayscale data) or "RGB".

    16-bit and 32-bit integer images are scaled to 8 bits, float images min-max scaled,
    transparent pixels composited over white, CMYK/YCbCr/palette converted to RGB.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(high_depth_to_uint8(np.asarray(img)))
    if mode in ("LA", "La"):
        return composite_over_background(img.convert("LA"), "L")
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        return composite_over_background(img.convert("RGBA"), "RGB")
    return img.convert("RGB")


def high_depth_to_uint8(values: np.ndarray) -> UInt8Array:
    """Scale a single-channel high-depth image to 8 bits.

    ``values: (H, W)`` uint16/int32 (16-bit images) or float32 -> ``(H, W) uint8``. Integer data
    within 0..65535 keeps its absolute scale (65535 -> 255), as a 16-bit viewer would show it;
    anything else (float, negative or >16-bit values) has no fixed range, so it is min-max scaled.
    """
    data = np.asarray(values)
    if np.issubdtype(data.dtype, np.integer) and data.min() >= 0 and data.max() <= 65535:
        return np.rint(data.astype(np.float64) / 257.0).astype(np.uint8)
    data = np.nan_to_num(data.astype(np.float64))
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.rint((data - low) * (255.0 / (high - low))).astype(np.uint8)


def composite_over_background(img: Image.Image, mode: str) -> Image.Image:
    """Flatten an "LA"/"RGBA" image over a white background into ``mode`` ("L" or "RGB")."""
    alpha = img.getchannel("A")
    background = Image.new(mode, img.size, _BACKGROUND if mode == "L" else (_BACKGROUND,) * 3)
    return Image.composite(img.convert(mode), background, alpha)


# --------------------------------------------------------------------------------------------
# Downloads: torchvision does the fetching, this module makes it atomic.


def _partial_prefix(name: str) -> str:
    return f".partial-{name}-"


@contextlib.contextmanager
def _download_lock(cache_dir: Path, name: str, progress: bool) -> Iterator[None]:
    """Hold ``<cache_dir>/.lock-<name>`` so only one process (or thread) downloads ``name``.

    flock is released by the kernel when a process dies, so a killed download never blocks the
    next one; and whoever holds the lock knows every ``.partial-<name>-*`` is a leftover.
    """

    def say_waiting() -> None:
        if progress:
            print(f"waiting for another process to finish downloading {name}", file=sys.stderr)

    with exclusive_lock(cache_dir / f".lock-{name}", on_wait=say_waiting):
        yield


def remove_stale_partials(cache_dir: Path, name: str) -> list[Path]:
    """Delete ``.partial-<name>-*`` folders left by killed runs; call only under the lock."""
    removed = []
    for entry in cache_dir.glob(_partial_prefix(name) + "*"):
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence everything torchvision writes while downloading (tqdm bars, prints) if enabled."""
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as sink:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give sockets opened meanwhile a timeout, unless the process already chose one."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch_atomically(
    name: str,
    cache_dir: Path,
    final: Path,
    fetch: Callable[[Path], Path],
    url: str,
    progress: bool = True,
) -> Path:
    """Make ``final`` exist, building it with ``fetch`` if needed, never leaving it half-built.

    ``fetch(partial)`` downloads into the empty folder ``partial`` and returns the finished
    folder inside it, which is then renamed to ``final`` (atomic on one filesystem). Network and
    archive failures raise a UserError naming ``url`` and where a manual copy can go.
    """
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _download_lock(cache_dir, name, progress):
        if final.is_dir():  # another process finished it while we waited for the lock
            return final
        remove_stale_partials(cache_dir, name)
        partial = cache_dir / f"{_partial_prefix(name)}{os.getpid()}"
        partial.mkdir()
        try:
            with _quiet(not progress), _socket_timeout(_SOCKET_TIMEOUT_S):
                built = fetch(partial)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, final)
        except _DOWNLOAD_ERRORS as error:
            detail = " ".join(str(error).split()) or type(error).__name__
            raise UserError(
                f"could not download {name} from {url} ({detail}); check your connection or "
                f"place the extracted archive at {final}"
            ) from error
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------
# imagenette / imagewoof (fast.ai archives: <folder>/{train,val}/<wnid>/*.JPEG)


def fastai_archive_root(extracted: Path) -> Path:
    """The folder holding ``train/`` and ``val/`` in an extracted fast.ai archive."""
    for candidate in [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    # A RuntimeError so fetch_atomically reports it like any other bad download.
    raise RuntimeError("the archive has no <folder>/train and <folder>/val inside")


def fetch_fastai_archive(name: str, partial: Path) -> Path:
    """Download and extract ``ARCHIVES[name]`` inside ``partial`` with torchvision's utilities."""
    url, md5 = ARCHIVES[name]
    from torchvision.datasets.utils import download_and_extract_archive

    extracted = partial / "extracted"
    download_and_extract_archive(
        url, download_root=str(partial), extract_root=str(extracted), md5=md5, remove_finished=True
    )
    return fastai_archive_root(extracted)


def wnid_names(name: str, root: Path) -> dict[str, str]:
    """WordNet id -> human name for ``name``; Imagenette's come from torchvision."""
    if name == "imagewoof":
        return dict(IMAGEWOOF_CLASSES)
    from torchvision.datasets import Imagenette

    # Built by torchvision's own Imagenette, which also checks the folder is where it expects.
    reference = Imagenette(str(root), split="train", size="160px")
    return {
        wnid: synonyms[0] for wnid, synonyms in zip(reference.wnids, reference.classes, strict=True)
    }


def open_fastai_subset(name: str, cache_dir: Path, progress: bool = True) -> Dataset:
    """Imagenette or Imagewoof at 160 px, train and val splits, labels by WordNet id."""
    from torchvision.datasets.folder import find_classes, make_dataset

    root = cache_dir / name
    size_root = root / _ARCHIVE_FOLDERS[name]
    url = ARCHIVES[name][0]
    fetch_atomically(
        name, cache_dir, size_root, lambda p: fetch_fastai_archive(name, p), url, progress
    )
    broken = (
        f"{name} at {size_root} is incomplete or not the {name} archive; delete that folder "
        "and re-run to download it again"
    )
    try:
        names = wnid_names(name, root)
        wnids, wnid_to_idx = find_classes(str(size_root / "train"))
        split_files = {
            split: make_dataset(str(size_root / split), wnid_to_idx, extensions=".jpeg")
            for split in ("train", "val")
        }
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"{broken} ({error})") from error
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise UserError(f"{broken} (unexpected class folders: {', '.join(unknown)})")

    samples = [
        SampleRecord(
            uid=f"{name}-{split}-{i:06d}",
            source=Path(path).relative_to(size_root).as_posix(),
            label=label,
            split=split,
        )
        for split, files in split_files.items()
        for i, (path, label) in enumerate(files)
    ]
    counts = {split: len(files) for split, files in split_files.items()}
    kind = "easy-to-tell ImageNet classes" if name == "imagenette" else "ImageNet dog breeds"
    return Dataset(
        name=name,
        spec=name,
        description=f"{name.capitalize()} (fast.ai, 160 px): {len(wnids)} {kind}, "
        f"{counts['train']:,} train + {counts['val']:,} val images",
        class_names=[names[w] for w in wnids],
        class_wnids=list(wnids),
        samples=samples,
        native_channels=3,
        read=file_reader(size_root, samples),
        list_files=lambda: fastai_files(size_root),
        root=size_root,
    )


# --------------------------------------------------------------------------------------------
# mnist / fashion-mnist / cifar10 (torchvision array datasets)


def torchvision_source_url(cls: type[Any]) -> str:
    """Where ``cls`` downloads from, for error messages (read at call time, like torchvision)."""
    from torchvision.datasets import MNIST

    if issubclass(cls, MNIST):
        return cls.mirrors[0]
    return cls.url


def fetch_torchvision(cls: type, folder: str, partial: Path) -> Path:
    """Let torchvision download both splits of ``cls`` under ``partial``; return its folder."""
    for train in (True, False):
        cls(str(partial), train=train, download=True)
    return partial / folder


def split_arrays(dataset: Any) -> tuple[UInt8Array, np.ndarray]:
    """Images and labels of a loaded torchvision array dataset.

    Returns ``(N, H, W) uint8`` (MNIST-like) or ``(N, H, W, 3) uint8`` (CIFAR) and ``(N,) int64``.
    """
    data = dataset.data
    pixels = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    targets = dataset.targets
    labels = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
    return pixels.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False)


def open_torchvision_arrays(name: str, cache_dir: Path, progress: bool = True) -> Dataset:
    """MNIST, Fashion-MNIST or CIFAR-10 via torchvision: train then test split, in file order."""
    import torchvision.datasets

    class_name, folder, fixed_names, channels, blurb = _TORCHVISION_ARRAYS[name]
    cls = getattr(torchvision.datasets, class_name)
    root = cache_dir / name
    fetch_atomically(
        name,
        cache_dir,
        root / folder,
        lambda p: fetch_torchvision(cls, folder, p),
        torchvision_source_url(cls),
        progress,
    )
    try:
        splits = {"train": cls(str(root), train=True), "test": cls(str(root), train=False)}
    except RuntimeError as error:
        raise UserError(
            f"{name} at {root / folder} is incomplete or corrupted ({error}); delete that folder "
            "and re-run to download it again"
        ) from error
    arrays = {split: split_arrays(ds) for split, ds in splits.items()}
    samples = [
        SampleRecord(
            uid=f"{name}-{split}-{i:06d}", source=f"index:{i}", label=int(lbl), split=split
        )
        for split, (_, labels) in arrays.items()
        for i, lbl in enumerate(labels)
    ]
    pixels = np.concatenate([images for images, _ in arrays.values()])
    class_names = fixed_names if fixed_names is not None else list(splits["train"].classes)
    return Dataset(
        name=name,
        spec=name,
        description=f"{blurb}: {len(class_names)} classes, {len(arrays['train'][1]):,} train + "
        f"{len(arrays['test'][1]):,} test images",
        class_names=list(class_names),
        class_wnids=None,
        samples=samples,
        native_channels=channels,
        read=array_reader(pixels),
    )
