"""An uploaded model, accepted only as a TorchScript file and stored by content.

A TorchScript file is a zip (``<name>/code/``, ``constants.pkl``, ``data.pkl``) whose code is
TorchScript, run by TorchScript's interpreter, and whose pickles only hold TorchScript types: so
loading one runs none of the uploader's Python. That is why it is the only model format an upload
may use; a ``python:FILE.py`` model, or a pickled checkpoint (``torch.save``, which unpickles
arbitrary objects), is never accepted from the page.

Checks, cheapest first: the size, a zip whose central directory is no bomb
(``archives.check_declared_sizes``) and holds TorchScript code (a ``torch.save`` archive has
``data.pkl`` but no ``code/``), then ``torch.jit.load`` on the CPU. The file is stored as
``<data-dir>/models/uploads/<sha256, 16 hex>.pt`` with an atomic rename, so the same file uploaded
twice is one model, and a reader never sees half of one.
"""

from __future__ import annotations

import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.archives import (
    HASH_CHARS,
    Source,
    check_declared_sizes,
    received,
    remove_stale_temps,
)
from pipelines.errors import UserError
from pipelines.io import atomic_path
from pipelines.store import uploaded_models_dir

MAX_MODEL_BYTES = 1 << 30  # VGG16's TorchScript is about 530 MB
# A TorchScript archive stores its tensors uncompressed: what it unpacks to is about its size.
MAX_MODEL_UNPACKED_BYTES = 2 * MAX_MODEL_BYTES
MAX_MODEL_ENTRIES = 100_000
_EXPORT = (
    "export it with torch.jit.script(model) (or torch.jit.trace(model, example)) and save "
    "that with torch.jit.save(scripted, 'model.pt')"
)


@dataclass(frozen=True)
class ImportedModel:
    """A stored upload: ``spec`` (``torchscript:<absolute path>``) is what precompute takes;
    ``name`` is the user's name for it (display only); ``reused``: stored before."""

    spec: str
    path: Path
    name: str
    size_bytes: int
    reused: bool

    def summary(self) -> str:
        text = f"TorchScript model {self.name} ({self.size_bytes / (1 << 20):,.1f} MB)"
        return text + ("; uploaded before, reused" if self.reused else "")


def not_torchscript(why: str) -> UserError:
    return UserError(f"the upload is not a TorchScript file ({why}); {_EXPORT}")


def check_torchscript_archive(path: Path) -> None:
    """Refuse, without running torch, what cannot be a TorchScript file."""
    if not zipfile.is_zipfile(path):
        raise not_torchscript("not a zip archive, as torch.jit.save writes")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise not_torchscript(f"a damaged zip: {error}") from None
    check_declared_sizes(infos, MAX_MODEL_ENTRIES, MAX_MODEL_UNPACKED_BYTES, "the model file")
    names = [info.filename for info in infos]
    if not any("/code/" in name for name in names):
        if any(name.endswith("/data.pkl") for name in names):
            raise not_torchscript("it is a torch.save checkpoint, e.g. a state dict")
        raise not_torchscript("no TorchScript code inside")


def load_check(path: Path) -> None:
    """``torch.jit.load`` on the CPU: the file must load as a module with a forward."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - any load failure is the uploaded file's
        raise not_torchscript(f"torch.jit.load failed: {type(error).__name__}") from None
    if not hasattr(module, "forward"):
        raise not_torchscript("it has no forward method")


def display_name(name: str) -> str:
    """The user's name, as text to show only (never a path)."""
    return re.sub(r"\s+", " ", Path(str(name or "model")).name)[:80] or "model"


def import_torchscript(source: Source, data_dir: Path, name: str) -> ImportedModel:
    """Check an uploaded TorchScript file and store it under ``data_dir``.

    ``source``: a path or a binary stream. Raises :class:`UserError` (``UploadTooLarge`` past
    ``MAX_MODEL_BYTES``) saying how to export a TorchScript file instead.
    """
    uploads = uploaded_models_dir(data_dir)
    uploads.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(uploads)
    with received(source, uploads, MAX_MODEL_BYTES, "the model file") as (path, digest):
        final = uploads.resolve() / f"{digest[:HASH_CHARS]}.pt"
        size = path.stat().st_size
        reused = final.is_file()
        if not reused:
            check_torchscript_archive(path)
            load_check(path)
            with atomic_path(final) as temp:
                shutil.copyfile(path, temp)
    return ImportedModel(
        spec=f"torchscript:{final}",
        path=final,
        name=display_name(name),
        size_bytes=size,
        reused=reused,
    )
