"""The real download code (torchvision's utilities and dataset classes) against a local server
serving small archives in the real upstream formats. Nothing here touches the internet."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, Imagenette

import pipelines.datasets as datasets
from pipelines.datasets import IMAGEWOOF_CLASSES, open_dataset
from pipelines.errors import UserError
from tests.browser_helpers import free_port
from tests.fixtures_datasets import (
    FileServer,
    Route,
    cifar_members,
    class_colour,
    fastai_archive,
    md5_of,
    mnist_files,
    tgz_bytes,
)

REPO = Path(__file__).resolve().parents[1]
IMAGENETTE_WNIDS = sorted(Imagenette._WNID_TO_CLASS)
IMAGEWOOF_WNIDS = sorted(IMAGEWOOF_CLASSES)
PER_SPLIT = {"train": 3, "val": 2}
FASTAI = {  # name -> (archive folder, wnids)
    "imagenette": ("imagenette2-160", IMAGENETTE_WNIDS),
    "imagewoof": ("imagewoof2-160", IMAGEWOOF_WNIDS),
}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def serve_fastai(
    server: FileServer,
    monkeypatch,
    name: str,
    mode: str = "ok",
    md5: bool = True,
    noise: int = 0,
) -> str:
    """Serve a small ``<name>2-160.tgz`` and point ``ARCHIVES[name]`` at it; returns its path."""
    folder, wnids = FASTAI[name]
    body = fastai_archive(folder, wnids, PER_SPLIT, noise=noise)
    path = f"/fast-ai-imageclas/{folder}.tgz"
    server.routes[path] = Route(body, mode)
    monkeypatch.setitem(datasets.ARCHIVES, name, (server.url(path), md5_of(body) if md5 else None))
    return path


def final_folder(cache: Path, name: str) -> Path:
    return cache / name / FASTAI[name][0]


def partials(cache: Path) -> list[Path]:
    return sorted(cache.glob(".partial-*")) if cache.exists() else []


# --------------------------------------------------------------------------------------------
# imagenette / imagewoof


@pytest.mark.parametrize("name", ["imagenette", "imagewoof"])
def test_fastai_download_extracts_and_opens(server, monkeypatch, tmp_path, name) -> None:
    path = serve_fastai(server, monkeypatch, name)
    cache = tmp_path / "datasets"
    ds = open_dataset(name, cache)

    assert server.requests[path] >= 1
    assert (final_folder(cache, name) / "train").is_dir() and partials(cache) == []
    assert not list(cache.rglob("*.tgz"))  # the archive is not kept next to the images
    assert ds.name == ds.spec == name and ds.native_channels == 3
    wnids = FASTAI[name][1]
    assert ds.class_wnids == wnids
    if name == "imagenette":
        assert ds.class_names == [Imagenette._WNID_TO_CLASS[w][0] for w in wnids]
        assert ds.class_names[0] == "tench" and "gas pump" in ds.class_names
    else:
        assert ds.class_names == [IMAGEWOOF_CLASSES[w] for w in wnids]
        assert "Samoyed" in ds.class_names and "dingo" in ds.class_names

    splits = [s.split for s in ds.samples]
    assert splits.count("train") == 30 and splits.count("val") == 20
    assert splits == sorted(splits, key=["train", "val"].index)  # train first, then val
    first_val = ds.samples[30]
    assert first_val.uid == f"{name}-val-000000" and ds.samples[29].uid == f"{name}-train-000029"
    assert first_val.source == f"val/{wnids[0]}/{wnids[0]}_0000.JPEG"
    assert len({s.uid for s in ds.samples}) == 50
    for index in (0, 7, 29, 30, 49):
        sample = ds.samples[index]
        assert sample.source.split("/")[1] == wnids[sample.label]
        img = ds.load_image(index)
        assert img.mode == "RGB"
        colour = np.asarray(img).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(colour, class_colour(sample.label), atol=4)
    assert "30 train + 20 val" in ds.description


@pytest.mark.parametrize("name", ["imagenette", "imagewoof"])
def test_second_open_does_not_download_again(server, monkeypatch, tmp_path, name) -> None:
    path = serve_fastai(server, monkeypatch, name)
    first = open_dataset(name, tmp_path, progress=False)
    requests = server.requests[path]
    second = open_dataset(name, tmp_path, progress=False)
    assert server.requests[path] == requests
    assert [s.uid for s in second.samples] == [s.uid for s in first.samples]
    assert [s.source for s in second.samples] == [s.source for s in first.samples]


@pytest.mark.parametrize(
    ("mode", "md5", "cause"),
    [
        ("404", True, "404"),
        ("drop", True, "corrupted"),  # md5 mismatch on the short file
        ("drop", False, ""),  # no md5: the truncated .tgz fails to extract
    ],
)
@pytest.mark.parametrize("name", ["imagenette", "imagewoof"])
def test_failed_download_is_a_user_error_and_leaves_no_folder(
    server, monkeypatch, tmp_path, name, mode, md5, cause
) -> None:
    path = serve_fastai(server, monkeypatch, name, mode=mode, md5=md5)
    cache = tmp_path / "datasets"
    with pytest.raises(UserError) as info:
        open_dataset(name, cache, progress=False)
    message = str(info.value)
    assert message.startswith(f"could not download {name} from {server.url(path)} (")
    assert cause in message
    assert message.endswith(
        f"check your connection or place the extracted archive at {final_folder(cache, name)}"
    )
    assert "\n" not in message
    assert not final_folder(cache, name).exists()
    assert partials(cache) == []

    server.routes[path].mode = "ok"  # the next attempt works and leaves nothing stale behind
    assert len(open_dataset(name, cache, progress=False)) == 50
    assert partials(cache) == []


def test_unreachable_server_is_a_user_error(monkeypatch, tmp_path) -> None:
    port = free_port()  # a port nobody listens on
    url = f"http://127.0.0.1:{port}/imagenette2-160.tgz"
    monkeypatch.setitem(datasets.ARCHIVES, "imagenette", (url, None))
    with pytest.raises(UserError, match=f"could not download imagenette from {url} .*refused"):
        open_dataset("imagenette", tmp_path, progress=False)


def test_stale_partial_from_a_dead_run_is_removed(server, monkeypatch, tmp_path) -> None:
    serve_fastai(server, monkeypatch, "imagewoof")
    stale = tmp_path / ".partial-imagewoof-999999"
    (stale / "extracted" / "imagewoof2-160" / "train").mkdir(parents=True)
    (stale / "imagewoof2-160.tgz").write_bytes(b"half an archive")
    other = tmp_path / ".partial-imagenette-999999"  # another dataset's: not ours to touch
    other.mkdir()
    assert len(open_dataset("imagewoof", tmp_path, progress=False)) == 50
    assert not stale.exists() and other.exists()


def test_manually_placed_archive_is_used_without_downloading(server, monkeypatch, tmp_path):
    """The error message tells users to place the extracted archive; that must then work."""
    import tarfile

    path = serve_fastai(server, monkeypatch, "imagenette")
    archive = tmp_path / "manual.tgz"
    archive.write_bytes(server.routes[path].body)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "datasets" / "imagenette", filter="data")
    ds = open_dataset("imagenette", tmp_path / "datasets", progress=False)
    assert len(ds) == 50 and server.requests[path] == 0


def test_concurrent_opens_download_once(server, monkeypatch, tmp_path) -> None:
    path = serve_fastai(server, monkeypatch, "imagewoof", mode="stall")
    solo = tmp_path / "solo"
    server.release.set()
    open_dataset("imagewoof", solo, progress=False)
    one_download = server.requests[path]
    server.release.clear()

    cache = tmp_path / "shared"
    results: dict[str, object] = {}

    def worker(key: str) -> None:
        try:
            results[key] = [s.uid for s in open_dataset("imagewoof", cache, progress=False).samples]
        except Exception as error:  # surfaced by the asserts below
            results[key] = error

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    deadline = time.monotonic() + 30
    while server.requests[path] < 2 * one_download and time.monotonic() < deadline:
        time.sleep(0.02)  # until the first download is under way, stalled mid-file
    second = threading.Thread(target=worker, args=("second",))
    second.start()
    time.sleep(0.3)
    assert first.is_alive() and second.is_alive()  # the second waits for the first's lock
    server.release.set()
    first.join(30)
    second.join(30)
    assert isinstance(results["first"], list) and results["first"] == results["second"]
    assert server.requests[path] == 2 * one_download  # solo + first; the second reused it


@pytest.mark.slow
def test_killed_download_leaves_only_a_partial_that_the_next_run_cleans(
    server, monkeypatch, tmp_path
) -> None:
    # Noisy images: half the archive must exceed torchvision's 32 KiB read size, or the child
    # would never write a byte before the stall.
    path = serve_fastai(server, monkeypatch, "imagenette", mode="stall", noise=40)
    assert len(server.routes[path].body) > 4 * 32 * 1024
    url, md5 = datasets.ARCHIVES["imagenette"]
    cache = tmp_path / "datasets"
    code = (
        "import sys; from pathlib import Path; import pipelines.datasets as d; "
        "d.ARCHIVES['imagenette'] = (sys.argv[1], sys.argv[2]); "
        "d.open_dataset('imagenette', Path(sys.argv[3]), progress=False)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, url, md5, str(cache)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        archive = cache / f".partial-imagenette-{child.pid}" / "imagenette2-160.tgz"
        deadline = time.monotonic() + 90
        while not (archive.exists() and archive.stat().st_size > 0):
            assert child.poll() is None and time.monotonic() < deadline, "download never started"
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no finally blocks, no cleanup, like a crash or OOM kill
        child.wait()

    assert not final_folder(cache, "imagenette").exists()
    assert [p.name for p in partials(cache)] == [f".partial-imagenette-{child.pid}"]

    server.routes[path].mode = "ok"
    assert len(open_dataset("imagenette", cache, progress=False)) == 50
    assert partials(cache) == []


# --------------------------------------------------------------------------------------------
# mnist / fashion-mnist / cifar10


@pytest.mark.parametrize(("name", "cls"), [("mnist", MNIST), ("fashion-mnist", FashionMNIST)])
def test_mnist_like_download_through_torchvision(server, monkeypatch, tmp_path, name, cls) -> None:
    files = mnist_files(n_train=30, n_test=10)
    for filename, body in files.items():
        server.routes[f"/{name}/{filename}"] = Route(body)
    monkeypatch.setattr(cls, "mirrors", [server.url(f"/{name}/")])
    monkeypatch.setattr(cls, "resources", [(f, md5_of(b)) for f, b in files.items()])

    ds = open_dataset(name, tmp_path, progress=False)
    assert ds.native_channels == 1 and ds.class_wnids is None and len(ds.class_names) == 10
    assert (tmp_path / name / cls.__name__ / "raw").is_dir() and partials(tmp_path) == []
    assert [s.split for s in ds.samples] == ["train"] * 30 + ["test"] * 10
    assert ds.samples[31].uid == f"{name}-test-000001" and ds.samples[31].source == "index:1"
    for index in (0, 13, 31, 39):
        img = ds.load_image(index)
        assert img.mode == "L" and img.size == (28, 28)
        assert int(np.asarray(img)[0, 0]) == ds.samples[index].label * 20
    if name == "mnist":
        assert ds.class_names == [str(d) for d in range(10)]
    else:
        assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"

    requests = sum(server.requests.values())
    open_dataset(name, tmp_path, progress=False)
    assert sum(server.requests.values()) == requests


def test_mnist_download_failure_is_a_user_error(server, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [server.url("/missing/")])
    with pytest.raises(UserError, match=r"could not download mnist from http://127\.0\.0\.1"):
        open_dataset("mnist", tmp_path, progress=False)
    assert not (tmp_path / "mnist" / "MNIST").exists() and partials(tmp_path) == []


def test_cifar10_download_through_torchvision(server, monkeypatch, tmp_path) -> None:
    members = cifar_members(per_batch=4)
    body = tgz_bytes({f"cifar-10-batches-py/{k}": v for k, v in members.items()})
    server.routes["/cifar-10-python.tar.gz"] = Route(body)
    monkeypatch.setattr(CIFAR10, "url", server.url("/cifar-10-python.tar.gz"))
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5_of(body))
    monkeypatch.setattr(
        CIFAR10,
        "train_list",
        [[f"data_batch_{i}", md5_of(members[f"data_batch_{i}"])] for i in range(1, 6)],
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5_of(members["test_batch"])]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5_of(members["batches.meta"])})

    ds = open_dataset("cifar10", tmp_path, progress=False)
    assert ds.native_channels == 3 and ds.class_names == [f"thing{i}" for i in range(10)]
    assert [s.split for s in ds.samples] == ["train"] * 20 + ["test"] * 4
    assert not list(tmp_path.rglob("*.tar.gz")) and partials(tmp_path) == []
    for index in (0, 5, 19, 23):
        img = ds.load_image(index)
        assert img.mode == "RGB" and img.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(img)[3, 3], [ds.samples[index].label * 20] * 3)
    assert "20 train + 4 test" in ds.description


def test_progress_false_keeps_the_terminal_quiet(server, monkeypatch, tmp_path, capfd) -> None:
    serve_fastai(server, monkeypatch, "imagewoof")
    open_dataset("imagewoof", tmp_path / "quiet", progress=False)
    quiet = capfd.readouterr()
    assert quiet.out == "" and quiet.err == ""
    open_dataset("imagewoof", tmp_path / "loud", progress=True)
    loud = capfd.readouterr()
    assert "100%" in loud.err  # torchvision's tqdm bar


def test_default_archive_table_points_at_the_real_archives() -> None:
    """Tests only monkeypatch the table; the defaults must stay the real fast.ai archives."""
    assert datasets.ARCHIVES["imagenette"] == Imagenette._ARCHIVES["160px"]
    assert datasets.ARCHIVES["imagewoof"][0].startswith("https://s3.amazonaws.com/")
    assert os.path.basename(datasets.ARCHIVES["imagewoof"][0]) == "imagewoof2-160.tgz"
