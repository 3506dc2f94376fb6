"""Images users drop onto the page: validated, kept per session, never a path from the client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard import uploads
from dashboard.uploads import UploadStore, check_session, check_upload_id, decoded_image
from pipelines.errors import UserError

SESSION = "0123456789abcdef0123456789abcdef"


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int = 0, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_an_upload_is_kept_as_its_pixels_and_listed_by_name(tmp_path: Path):
    store = UploadStore(tmp_path)
    pixels = picture()
    added = store.add(SESSION, "../../etc/cat photo.png", data_url(png_bytes(pixels)))
    assert added.name == "cat photo.png"  # a name to show, never a path
    assert store.list(SESSION) == [added]
    np.testing.assert_array_equal(np.asarray(store.image(SESSION, added.id)), pixels)
    # The same picture again is the same upload; stored under the data dir's cache only.
    assert store.add(SESSION, "again.png", data_url(png_bytes(pixels))).id == added.id
    assert [p.name for p in (tmp_path / "cache" / "uploads" / SESSION).glob("*.png")] == [
        f"{added.id}.png"
    ]
    assert not (tmp_path / "runs").exists()


def test_sessions_are_apart_and_the_oldest_upload_goes_beyond_the_limit(tmp_path: Path):
    store = UploadStore(tmp_path)
    other = "f" * 32
    ids = [
        store.add(SESSION, f"{i}.png", data_url(png_bytes(picture(i)))).id
        for i in range(uploads.MAX_PER_SESSION + 2)
    ]
    assert [u.id for u in store.list(SESSION)] == ids[2:]
    assert store.list(other) == []
    with pytest.raises(UserError, match="drop it onto the page again"):
        store.image(other, ids[-1])
    with pytest.raises(UserError, match="drop it onto the page again"):
        store.image(SESSION, ids[0])
    store.remove(SESSION, ids[-1])
    assert [u.id for u in store.list(SESSION)] == ids[2:-1]


@pytest.mark.parametrize(
    "contents, message",
    [
        (data_url(b"not an image at all"), "not a readable image"),
        (data_url(png_bytes(picture())[:60]), "not a readable image"),  # a truncated PNG
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("/etc/passwd", "not a file"),
        ("data:image/png,rawtext", "not a file"),
    ],
)
def test_bad_files_are_refused_with_a_sentence(tmp_path: Path, contents: str, message: str):
    with pytest.raises(UserError, match=message):
        UploadStore(tmp_path).add(SESSION, "x.png", contents)
    assert UploadStore(tmp_path).list(SESSION) == []


def test_too_large_files_and_decompression_bombs_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(uploads, "MAX_BYTES", 1000)
    with pytest.raises(UserError, match="larger than"):
        decoded_image(b"x" * 1001)
    monkeypatch.setattr(uploads, "MAX_PIXELS", 100)
    with pytest.raises(UserError, match="million"):
        decoded_image(png_bytes(picture(size=11)))
    assert decoded_image(png_bytes(picture(size=10))).size == (10, 10)


def test_grey_images_stay_grey_and_other_modes_become_rgb():
    grey = png_bytes(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert decoded_image(grey).mode == "L"
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(buffer, format="PNG")
    assert decoded_image(buffer.getvalue()).mode == "RGB"


@pytest.mark.parametrize("value", [None, "", "../" * 10, "A" * 32, "0" * 31, SESSION + "/x"])
def test_session_tokens_must_be_32_hex_digits(value):
    with pytest.raises(UserError):
        check_session(value)


@pytest.mark.parametrize("value", [None, "", "../names", "0" * 15, "g" * 16, 12])
def test_upload_ids_must_be_16_hex_digits(value):
    with pytest.raises(UserError):
        check_upload_id(value)
