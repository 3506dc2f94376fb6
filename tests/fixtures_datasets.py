"""Builders for dataset tests: image folders, archives in the real upstream formats, and a local
HTTP server to download them from (the machines running tests have no internet).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Image folders


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust colour per class, so a test can tell which class an image is."""
    return ((label * 70) % 256, (255 - label * 50) % 256, (label * 110 + 40) % 256)


def jpeg_bytes(
    colour: tuple[int, int, int], size: tuple[int, int] = (24, 18), noise: int = 0, seed: int = 0
) -> bytes:
    """A JPEG of one colour; ``noise`` adds seeded uniform noise of that amplitude, which keeps
    the mean colour but makes the file big (incompressible), for downloads that must take a while.
    """
    pixels = np.empty((size[1], size[0], 3), dtype=np.int16)
    pixels[:] = colour
    if noise:
        rng = np.random.default_rng(seed)
        pixels += rng.integers(-noise, noise + 1, size=pixels.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


@dataclass
class MixedFolder:
    root: Path
    good: list[str]  # relative posix paths of the images that must load
    corrupt: list[str]  # relative paths that must be skipped
    classes: list[str]  # expected class names, sorted, without the empty class


def build_mixed_folder(root: Path) -> MixedFolder:
    """Three classes mixing RGB/L/RGBA/P/16-bit/CMYK, JPEG/PNG/GIF/BMP/TIFF/WebP, different sizes,
    plus a garbage .jpg, a truncated .png, a truncated .JPG, a .txt, hidden files and a class
    folder holding no images at all."""
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (10, 20, 30, 255)  # left half opaque
    rgba[:, 10:] = (10, 20, 30, 0)  # right half fully transparent
    palette = Image.new("P", (12, 12), 0)
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    palette.paste(1, (0, 0, 6, 12))  # left half colour 1, right half colour 0 (transparent)
    deep = np.array([[0, 257 * 128, 65535]] * 3, dtype=np.uint16)

    save(Image.new("RGB", (40, 30), (200, 10, 10)), root / "cat" / "a.jpg", quality=95)
    save(Image.new("L", (16, 16), 77), root / "cat" / "b.png")
    save(Image.fromarray(rgba), root / "cat" / "sub" / "c.PNG")
    save(palette, root / "dog" / "d.gif", transparency=0)
    save(Image.fromarray(deep), root / "dog" / "e.png")
    save(Image.new("CMYK", (9, 7), (0, 255, 255, 0)), root / "dog" / "f.JPEG", quality=95)
    save(Image.new("RGB", (64, 48), (10, 200, 10)), root / "fish" / "g.bmp")
    save(Image.new("RGB", (33, 21), (10, 10, 200)), root / "fish" / "h.webp", lossless=True)
    save(Image.new("L", (5, 50), 200), root / "fish" / "i.tif")

    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    png = io.BytesIO()
    Image.new("RGB", (50, 50), (1, 2, 3)).save(png, "PNG")
    (root / "fish" / "truncated.png").write_bytes(png.getvalue()[:-30])
    (root / "cat" / "cut.JPG").write_bytes(jpeg_bytes((5, 6, 7), (64, 64))[:-200])
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save(Image.new("RGB", (4, 4)), root / ".thumbnails" / "x.png")  # hidden: not a class
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    return MixedFolder(
        root=root,
        good=[
            "cat/a.jpg",
            "cat/b.png",
            "cat/sub/c.PNG",
            "dog/d.gif",
            "dog/e.png",
            "dog/f.JPEG",
            "fish/g.bmp",
            "fish/h.webp",
            "fish/i.tif",
        ],
        corrupt=["cat/cut.JPG", "dog/broken.jpg", "fish/truncated.png"],
        classes=["cat", "dog", "fish"],
    )


# ---------------------------------------------------------------------------------------------
# Archives in the upstream formats


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tgz_bytes(files: dict[str, bytes]) -> bytes:
    """A gzipped tar holding ``files`` (archive path -> content), directories implied."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def fastai_archive(
    folder: str, wnids: list[str], per_split: dict[str, int], noise: int = 0
) -> bytes:
    """A .tgz laid out like fast.ai's ``imagenette2-160.tgz`` / ``imagewoof2-160.tgz``:
    ``<folder>/{train,val}/<wnid>/<id>.JPEG`` plus ``<folder>/noisy_<name>.csv``.

    Image of class k has mean colour :func:`class_colour` (k), so labels can be checked by pixel;
    ``noise`` > 0 makes the images larger (see :func:`jpeg_bytes`).
    """
    files: dict[str, bytes] = {}
    rows = ["path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50"]
    for split, count in per_split.items():
        for label, wnid in enumerate(wnids):
            for i in range(count):
                rel = f"{split}/{wnid}/{wnid}_{i:04d}.JPEG"
                size = (20 + i, 16) if not noise else (96 + i, 96)
                files[f"{folder}/{rel}"] = jpeg_bytes(class_colour(label), size, noise, seed=i)
                rows.append(",".join([rel] + [wnid] * 5) + ",")
    stem = folder.split("2")[0]
    files[f"{folder}/noisy_{stem}.csv"] = ("\n".join(rows) + "\n").encode()
    return tgz_bytes(files)


def idx_images(pixels: np.ndarray) -> bytes:
    """MNIST idx3 file: ``pixels: (N, H, W) uint8``."""
    n, h, w = pixels.shape
    return struct.pack(">IIII", 0x0803, n, h, w) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """MNIST idx1 file: ``labels: (N,)`` values 0..255."""
    return struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes()


def mnist_files(n_train: int, n_test: int) -> dict[str, bytes]:
    """The four gzipped idx files MNIST/Fashion-MNIST download; image i is filled with
    ``label * 20`` so the label is readable from the pixels."""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        pixels = np.repeat((labels * 20).astype(np.uint8), 28 * 28).reshape(n, 28, 28)
        out[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_images(pixels))
        out[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_labels(labels))
    return out


def cifar_members(per_batch: int) -> dict[str, bytes]:
    """The pickles inside ``cifar-10-batches-py``; image i of a batch is filled with
    ``label * 20`` in every channel."""
    members = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [i % 10 for i in range(per_batch)]
        data = np.repeat(np.array(labels, dtype=np.uint8) * 20, 3072).reshape(per_batch, 3072)
        members[name] = pickle.dumps({"data": data, "labels": labels, "batch_label": name})
    label_names = [f"thing{i}" for i in range(10)]
    members["batches.meta"] = pickle.dumps({"label_names": label_names})
    return members


# ---------------------------------------------------------------------------------------------
# A local HTTP server


@dataclass
class Route:
    body: bytes
    mode: str = "ok"  # "ok", "404", "drop" (close after half the body), "stall" (half, wait)


@dataclass
class FileServer:
    """Serves ``routes`` on 127.0.0.1 from a thread and counts GET requests per path.

    "stall" sends half the body, then waits for :attr:`release` before sending the rest, so a
    test can catch a download in flight (to kill it, or to start a second one meanwhile).
    """

    routes: dict[str, Route] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests[self.path] += 1
                route = server.routes.get(self.path)
                if route is None or route.mode == "404":
                    self.send_error(404, "not here")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                half = len(route.body) // 2
                try:
                    if route.mode == "ok":
                        self.wfile.write(route.body)
                    elif route.mode == "drop":
                        self.wfile.write(route.body[:half])
                        self.close_connection = True
                    elif route.mode == "stall":
                        self.wfile.write(route.body[:half])
                        self.wfile.flush()
                        server.release.wait(60)
                        self.wfile.write(route.body[half:])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a killed download): nothing to finish

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"
