"""A stand-in for CIFAR-10 in its real on-disk format, for runs of 60,000 samples offline.

The machines here have no internet, so ``--dataset cifar10`` cannot fetch the real archive. This
writes ``cifar-10-python.tar.gz`` as torchvision expects it (five ``data_batch_*`` pickles of
10,000 images and a ``test_batch``, each ``{"data": (n, 3072) uint8 planar RGB, "labels": [...]}``,
plus ``batches.meta``), serves it on 127.0.0.1, and points torchvision's ``CIFAR10`` class at
that URL and the archive's checksums, the way ``tests/test_downloads.py`` does: the dataset then
goes through torchvision's real download, checksum and extraction code.

The pictures are synthetic but not trivial: each class is a coloured grating at its own angle and
frequency, in three sub-styles, shifted, scaled in contrast and drowned in noise, with
neighbouring classes close in angle, so a small CNN learns them imperfectly and every layer's map
has clusters, sub-clusters and confusions to look at.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import sys
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ARCHIVE = "cifar-10-python.tar.gz"
CHECKSUMS = "cifar-10-checksums.json"
BATCH = 10_000
SIDE = 32
CLASS_NAMES = [f"pattern{i}" for i in range(10)]


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """labels: (n,) int -> (n, 32, 32, 3) uint8 pictures of their classes (module docstring)."""
    n = len(labels)
    style = rng.integers(0, 3, n)
    # Neighbouring classes 18 degrees apart: hard to tell apart under the noise.
    angle = np.deg2rad(18.0 * labels + 6.0 * style + rng.normal(0, 4.0, n))
    frequency = 0.18 + 0.035 * (labels % 5) + 0.02 * style
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    along = (
        np.cos(angle)[:, None, None] * xx[None] + np.sin(angle)[:, None, None] * yy[None]
    ).astype(np.float32)
    wave = np.sin(frequency[:, None, None] * along + phase[:, None, None])
    tint = np.stack(
        [
            0.5 + 0.5 * np.cos(2 * np.pi * labels / 10),
            0.5 + 0.5 * np.cos(2 * np.pi * labels / 10 + 2.1),
            0.5 + 0.5 * np.cos(2 * np.pi * labels / 10 + 4.2),
        ],
        axis=1,
    ).astype(np.float32)
    contrast = rng.uniform(0.3, 1.0, n).astype(np.float32)
    pictures = 128 + 70 * contrast[:, None, None, None] * wave[..., None] * tint[:, None, None, :]
    pictures += clutter(n, rng)
    pictures += rng.normal(0, 8, pictures.shape).astype(np.float32)
    return np.clip(pictures, 0, 255).astype(np.uint8)


def clutter(n: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """(n, 32, 32, 3) float32 smooth random colour fields: a coarse grid of random colours,
    linearly interpolated. Like a photo's background, most of its variance is in few principal
    components (white noise of the same strength would need thousands, unlike any photo)."""
    coarse = rng.normal(0, 40, (n, cells + 1, cells + 1, 3)).astype(np.float32)
    steps = np.linspace(0, cells, SIDE, dtype=np.float32)
    low = np.minimum(steps.astype(int), cells - 1)
    frac = (steps - low)[None, :, None, None]
    rows = coarse[:, low] * (1 - frac) + coarse[:, low + 1] * frac
    frac = frac.transpose(0, 2, 1, 3)
    return rows[:, :, low] * (1 - frac) + rows[:, :, low + 1] * frac


def batch_pickle(name: str, images: np.ndarray, labels: np.ndarray) -> bytes:
    """One batch file as CIFAR-10 stores it: rows of 1024 red, 1024 green, 1024 blue bytes."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * SIDE * SIDE)
    return pickle.dumps(
        {"batch_label": name, "labels": labels.tolist(), "data": planar},
        protocol=2,
    )


def write_archive(folder: Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write ``ARCHIVE`` (and the checksums torchvision will check, ``CHECKSUMS``) into
    ``folder`` unless there already; returns the archive's path. ``n_train`` is split over the
    five training batches."""
    archive = folder / ARCHIVE
    if archive.is_file() and (folder / CHECKSUMS).is_file():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    train_sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)]
    for name, size in [(f"data_batch_{i + 1}", s) for i, s in enumerate(train_sizes)] + [
        ("test_batch", n_test)
    ]:
        labels = rng.permutation(np.arange(size) % 10)
        members[name] = batch_pickle(name, synthetic_images(labels, rng), labels)
    members["batches.meta"] = pickle.dumps(
        {"label_names": CLASS_NAMES, "num_cases_per_batch": BATCH, "num_vis": 3 * SIDE * SIDE},
        protocol=2,
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buffer.getvalue()
    sums = {name: hashlib.md5(data).hexdigest() for name, data in members.items()}
    sums[ARCHIVE] = hashlib.md5(body).hexdigest()
    archive.write_bytes(body)
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    return archive


@contextlib.contextmanager
def served(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on a free port of 127.0.0.1 from a thread; yields the archive's URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            # torchvision opens the URL once to follow redirects and hangs up: no traceback.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)  # type: ignore[arg-type]

    server = Server(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{ARCHIVE}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def point_torchvision_at(url: str | None, folder: Path) -> None:
    """Make torchvision's ``CIFAR10`` download from ``url`` and check the stand-in's checksums
    (``None``: checksums only, for a process that reads the extracted dataset)."""
    from torchvision.datasets import CIFAR10

    sums = json.loads((folder / CHECKSUMS).read_text())
    if url is not None:
        CIFAR10.url = url
    CIFAR10.tgz_md5 = sums[ARCHIVE]
    CIFAR10.train_list = [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
    CIFAR10.test_list = [["test_batch", sums["test_batch"]]]
    CIFAR10.meta = {**CIFAR10.meta, "md5": sums["batches.meta"]}
