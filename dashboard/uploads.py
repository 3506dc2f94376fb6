"""Images a user drops onto the page: validated, kept per browser session under the data dir's
cache, and never written into a run.

An upload is stored once, as the PNG of its decoded pixels, under
``<data-dir>/cache/uploads/<session>/<id>.png``; ``session`` is a random token the page made
(``new_session``) and ``id`` the first hex digits of the pixels' SHA-256, so the same picture
dropped twice is one upload. Nothing the client sends becomes a path: both are checked against
their exact formats first, and the client's file name is kept only as text to show.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import secrets
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dashboard.caches import cache_dir
from dashboard.model_service import ImageSample
from pipelines.errors import UserError
from pipelines.io import atomic_write_bytes

MAX_BYTES = 10 << 20  # per file, as sent
MAX_PIXELS = 40_000_000  # a decompression bomb is refused before it is decoded
MAX_PER_SESSION = 12  # the oldest upload is dropped beyond this
SESSION_SECONDS = 24 * 3600  # sessions untouched this long are removed
SESSION_PATTERN = re.compile(r"[0-9a-f]{32}")
UPLOAD_PATTERN = re.compile(r"[0-9a-f]{16}")
NAME_CHARS = 80


@dataclass(frozen=True)
class Upload:
    """One uploaded image: ``id`` (16 hex digits), the file name the user gave it (text only)."""

    id: str
    name: str


def new_session() -> str:
    return secrets.token_hex(16)


def check_session(session: object) -> str:
    if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
        raise UserError("this page has no upload session; reload the page")
    return session


def check_upload_id(upload_id: object) -> str:
    if not isinstance(upload_id, str) or not UPLOAD_PATTERN.fullmatch(upload_id):
        raise UserError("no such uploaded image; drop it onto the page again")
    return upload_id


def decode_data_url(contents: str) -> bytes:
    """The bytes of a ``data:<type>;base64,<data>`` URL, as ``dcc.Upload`` sends a file."""
    head, _, data = contents.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        raise UserError("the upload is not a file; drop an image file onto the page")
    if len(data) > (MAX_BYTES * 4) // 3 + 4:
        raise UserError(f"the file is larger than {MAX_BYTES >> 20} MB; use a smaller image")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("the upload is not valid base64; drop the file again") from None


def decoded_image(data: bytes) -> Image.Image:
    """The fully decoded picture in ``data`` (RGB or L), or a ``UserError`` saying why not."""
    if len(data) > MAX_BYTES:
        raise UserError(f"the file is larger than {MAX_BYTES >> 20} MB; use a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > MAX_PIXELS:
                    raise UserError(
                        f"the image is {width}×{height} pixels, more than "
                        f"{MAX_PIXELS // 1_000_000} million; use a smaller image"
                    )
                probe.load()  # the whole file decodes, not only its header
                image = probe.convert("L" if probe.mode in ("1", "L", "I;16", "I", "F") else "RGB")
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError("the file is not a readable image; use a PNG or JPEG") from None
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        raise UserError(f"the file is not a readable image ({exc}); use a PNG or JPEG") from None
    return image


class UploadStore:
    """Every session's uploads under one data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._lock = threading.Lock()

    def _dir(self, session: str) -> Path:
        return cache_dir(self.data_dir, "uploads") / check_session(session)

    def add(self, session: str, file_name: str, contents: str) -> Upload:
        """Validate one file as ``dcc.Upload`` sends it and keep it for ``session``."""
        image = decoded_image(decode_data_url(contents))
        digest = hashlib.sha256(image.mode.encode() + image.tobytes()).hexdigest()
        upload = Upload(digest[:16], Path(str(file_name or "image")).name[:NAME_CHARS])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        with self._lock:
            self._sweep()
            directory = self._dir(session)
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(directory / f"{upload.id}.png", buffer.getvalue())
            names = self._names(directory)
            names.pop(upload.id, None)
            names[upload.id] = upload.name  # newest last
            for dropped in list(names)[:-MAX_PER_SESSION]:
                names.pop(dropped)
                (directory / f"{dropped}.png").unlink(missing_ok=True)
            atomic_write_bytes(directory / "names.json", json.dumps(names).encode())
        return upload

    def list(self, session: str) -> list[Upload]:
        """The session's uploads, oldest first."""
        directory = self._dir(session)
        with self._lock:
            return [Upload(i, name) for i, name in self._names(directory).items()]

    def image(self, session: str, upload_id: str) -> Image.Image:
        path = self._dir(session) / f"{check_upload_id(upload_id)}.png"
        try:
            with Image.open(path) as image:
                image.load()
                return image.copy()
        except FileNotFoundError:
            raise UserError("no such uploaded image; drop it onto the page again") from None

    def sample(self, session: str, upload_id: str) -> ImageSample:
        """An upload as the model service takes it, named in caches by session and id."""
        return ImageSample(f"upload/{session}/{upload_id}", self.image(session, upload_id))

    def remove(self, session: str, upload_id: str) -> None:
        directory = self._dir(session)
        with self._lock:
            names = self._names(directory)
            names.pop(check_upload_id(upload_id), None)
            (directory / f"{upload_id}.png").unlink(missing_ok=True)
            if directory.exists():
                atomic_write_bytes(directory / "names.json", json.dumps(names).encode())

    @staticmethod
    def _names(directory: Path) -> dict[str, str]:
        try:
            names = json.loads((directory / "names.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {
            key: str(value)
            for key, value in names.items()
            if UPLOAD_PATTERN.fullmatch(key) and (directory / f"{key}.png").exists()
        }

    def _sweep(self) -> None:
        """Remove sessions untouched for ``SESSION_SECONDS`` (lock held)."""
        root = cache_dir(self.data_dir, "uploads")
        if not root.exists():
            return
        now = time.time()
        for directory in root.iterdir():
            if SESSION_PATTERN.fullmatch(directory.name) and directory.is_dir():
                if now - directory.stat().st_mtime > SESSION_SECONDS:
                    shutil.rmtree(directory, ignore_errors=True)
