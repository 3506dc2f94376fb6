"""Server folders the page may offer as datasets: only below the roots the server was started
with (``python main.py serve --allow-folder ROOT``, repeatable; none by default).

Text from the page is never trusted as a path: it is resolved (every symlink and ``..``
followed) and must land inside a root; the folder's own symlinks, which ``open_folder`` would
follow, must stay inside the roots too. Listing offers the folders shaped like a dataset (class
sub-folders with images, or train/ + test/ of them) a few levels below each root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.datasets import SPLIT_FOLDERS, is_image_name
from pipelines.errors import UserError

# Enough to recognise a class folder or a dataset without reading a big folder to the end.
SCAN_ENTRIES = 1000
MAX_CHOICES = 500


@dataclass(frozen=True)
class FolderChoice:
    """A candidate dataset folder: its resolved ``path``, the ``root`` it is under, its number
    of class folders, and whether it is split (train/ + test/ or val/)."""

    path: Path
    root: Path
    classes: int
    split: bool

    @property
    def label(self) -> str:
        """``<root name>/<path under root>``: what the dropdown shows."""
        if not self.path.is_relative_to(self.root):  # a symlink into another root
            return str(self.path)
        inside = self.path.relative_to(self.root).as_posix()
        return self.root.name if inside == "." else f"{self.root.name}/{inside}"


def resolved_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(root).expanduser().resolve() for root in roots]


def inside_any(path: Path, roots: Sequence[Path]) -> bool:
    """``path`` and ``roots`` resolved."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def no_roots_error() -> UserError:
    return UserError(
        "this server was started without --allow-folder, so no server folder can be used; "
        "restart it with `python main.py serve --allow-folder ROOT`, or upload a zip"
    )


def resolve_allowed_folder(text: str, roots: Sequence[Path]) -> Path:
    """The resolved folder ``text`` names, if it is inside one of ``roots``.

    ``text``: absolute, or relative to a root (the first root where it exists). Raises a
    UserError listing the roots if it resolves outside them (through ``..`` or a symlink), is
    not a folder, or holds a symlink that leads outside them.
    """
    if not roots:
        raise no_roots_error()
    allowed = resolved_roots(roots)
    shown = ", ".join(str(root) for root in allowed)
    given = Path(text.strip()).expanduser()
    if not text.strip():
        raise UserError(f"no folder given; pick a folder under {shown}")
    candidates = [given] if given.is_absolute() else [root / given for root in allowed]
    real = [candidate.resolve() for candidate in candidates]
    inside = [path for path in real if inside_any(path, allowed)]
    if not inside:
        raise UserError(
            f"folder {text.strip()!r} is outside the folders this server allows ({shown}); "
            "pick a folder under one of them"
        )
    folder = next((path for path in inside if path.is_dir()), None)
    if folder is None:
        raise UserError(f"{inside[0]} is not a folder; pick a folder under {shown}")
    escape = escaping_link(folder, allowed)
    if escape is not None:
        link, target = escape
        raise UserError(
            f"{link} is a symlink to {target}, outside the folders this server allows ({shown}); "
            "remove the link or pick another folder"
        )
    return folder


def escaping_link(folder: Path, roots: Sequence[Path]) -> tuple[Path, Path] | None:
    """The first symlink below ``folder`` (file or folder, not followed) whose target is
    outside ``roots``, and that target; None if there is none."""
    for entry in walk_entries(folder):
        if entry.is_symlink():
            target = Path(entry.path).resolve()
            if not inside_any(target, roots):
                return Path(entry.path), target
    return None


def walk_entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry below ``folder``, symlinks not followed (``scandir``: one call per folder)."""
    pending = [folder]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    yield entry
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
        except OSError:
            continue  # unreadable: open_folder will say so if it is ever picked


def sub_folders(folder: Path, roots: Sequence[Path]) -> list[Path]:
    """Visible sub-folders of ``folder`` (a symlink only if it stays inside ``roots``), at most
    ``SCAN_ENTRIES`` entries read."""
    found: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= SCAN_ENTRIES:
                    break
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                path = Path(entry.path)
                if entry.is_symlink() and not inside_any(path.resolve(), roots):
                    continue
                found.append(path)
    except OSError:
        return []
    return sorted(found)


def has_image(folder: Path) -> bool:
    """An image file directly in ``folder`` (among its first ``SCAN_ENTRIES`` entries)."""
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= SCAN_ENTRIES:
                    return False
                if not entry.name.startswith(".") and is_image_name(entry.name):
                    if entry.is_file():
                        return True
    except OSError:
        return False
    return False


def dataset_shape(folder: Path, roots: Sequence[Path]) -> tuple[int, bool] | None:
    """(classes, split) if ``folder`` looks like a dataset: 2 or more sub-folders with images,
    or train/ + test/ (or val/) of them; else None."""
    subs = sub_folders(folder, roots)
    names = {sub.name for sub in subs}
    if "train" in names and len(names) >= 2 and names <= set(SPLIT_FOLDERS):
        classes = {c.name for split in subs for c in sub_folders(split, roots) if has_image(c)}
        return (len(classes), True) if len(classes) >= 2 else None
    classes_found = sum(1 for sub in subs if has_image(sub))
    return (classes_found, False) if classes_found >= 2 else None


def list_allowed_folders(roots: Sequence[Path], depth: int = 2) -> list[FolderChoice]:
    """Dataset-shaped folders at most ``depth`` levels below each root (the root itself is
    level 0), sorted by path; a dataset's own sub-folders are not searched. At most
    ``MAX_CHOICES``."""
    choices: list[FolderChoice] = []
    allowed = resolved_roots(roots)
    for root in allowed:
        level = [root] if root.is_dir() else []
        for step in range(depth + 1):
            deeper: list[Path] = []
            for folder in level:
                shape = dataset_shape(folder, allowed)
                if shape is not None:
                    choices.append(FolderChoice(folder.resolve(), root, *shape))
                elif step < depth:
                    deeper += sub_folders(folder, allowed)
            level = deeper
    unique = {choice.path: choice for choice in choices}
    return sorted(unique.values(), key=lambda c: str(c.path))[:MAX_CHOICES]
