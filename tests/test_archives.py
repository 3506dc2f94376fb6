"""Uploads made safe: zips of class folders, TorchScript files, allowed server folders, and the
HTTP routes that take them. Every archive is a real zip of real PNGs made in tmp_path."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import flask
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipelines import archives, model_uploads
from pipelines.allowed_folders import list_allowed_folders, resolve_allowed_folder
from pipelines.archives import import_dataset_zip, made_split, write_capped
from pipelines.datasets import open_dataset
from pipelines.errors import UserError
from pipelines.model_uploads import import_torchscript
from pipelines.models import build_adapter
from pipelines.store import uploaded_datasets_dir, uploaded_models_dir


def png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def classes_of(prefix: str, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog")):
    return {
        f"{prefix}{name}/{i}.png": png(100 * c + i)
        for c, name in enumerate(classes)
        for i in range(per_class)
    }


def imported_folders(data_dir: Path) -> list[str]:
    uploads = uploaded_datasets_dir(data_dir)
    return sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []


@pytest.mark.parametrize("prefix", ["", "pets/"], ids=["flat", "wrapped"])
def test_class_folders_import_split_80_20_and_open_as_a_folder_dataset(tmp_path, prefix):
    zipped = make_zip(tmp_path / "pets.zip", classes_of(prefix, per_class=10))
    imported = import_dataset_zip(zipped, tmp_path / "data", "My pets!")
    assert imported.classes == ("cat", "dog")
    assert not imported.split_from_archive and not imported.reused
    assert {s.split: s.images for s in imported.splits} == {
        "train": {"cat": 8, "dog": 8},
        "test": {"cat": 2, "dog": 2},
    }
    assert imported.path.name.startswith("My-pets-") and imported.path.is_absolute()
    dataset = open_dataset(imported.spec, tmp_path / "cache", progress=False)
    assert dataset.class_names == ["cat", "dog"]
    assert sorted(s.split for s in dataset.samples) == ["test"] * 4 + ["train"] * 16
    assert all(s.source.split("/")[1] == dataset.class_names[s.label] for s in dataset.samples)


def test_an_archive_split_is_kept(tmp_path):
    files = {**classes_of("data/train/", 4), **classes_of("data/val/", 2)}
    imported = import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")
    assert imported.split_from_archive
    assert {s.split: s.total for s in imported.splits} == {"train": 8, "val": 4}
    dataset = open_dataset(imported.spec, tmp_path / "cache", progress=False)
    assert sorted({(s.split, s.source.split("/")[1]) for s in dataset.samples}) == [
        ("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "dog"),
    ]  # fmt: skip


def test_splits_with_different_classes_are_refused(tmp_path):
    files = {**classes_of("train/", 2), **classes_of("test/", 2, classes=("cat",))}
    with pytest.raises(UserError, match=r"test/ has no folder for class\(es\) dog"):
        import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")


def test_the_made_split_is_seeded_and_per_class(tmp_path):
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 10))
    with zipfile.ZipFile(zipped) as archive:
        entries, _ = archives.plan_entries(archive.infolist(), archives.SkipTally())
    assert made_split(entries) == made_split(list(reversed(entries)))
    assert made_split(entries) != made_split(entries, seed=1)
    assert archives.held_out_count(1) == 0 and archives.held_out_count(2) == 1


def test_files_that_are_not_images_are_skipped_and_counted(tmp_path):
    files = {
        **classes_of("", 3),
        "cat/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        "cat/notes.txt": b"hello",
        "loose.png": png(7),
        "__MACOSX/cat/._0.png": b"resource fork",
        "dog/.DS_Store": b"",
        "dog/fake.jpg": png(8)[:40],  # a truncated PNG under a JPEG name
    }
    imported = import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")
    reasons = {s.reason: s.count for s in imported.skipped}
    assert reasons == {
        "unreadable images": 2,
        "not image files": 1,
        "files outside a class folder": 1,
        "OS metadata or hidden files": 2,
    }
    assert imported.skipped_count == 6 and "skipped 6 files" in imported.summary()
    assert imported.images == 6
    on_disk = sorted(p.name for p in imported.path.rglob("*") if p.is_file())
    assert on_disk == [".import.json"] + sorted(f"{i}.png" for i in range(3) for _ in "cd")


def test_importing_the_same_zip_again_reuses_its_folder(tmp_path):
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 3))
    first = import_dataset_zip(zipped, tmp_path / "d", "first")
    with open(zipped, "rb") as stream:  # as the route hands it over: a stream
        again = import_dataset_zip(stream, tmp_path / "d", "other name")
    assert again.reused and again.path == first.path and again.splits == first.splits
    assert imported_folders(tmp_path / "d") == [first.path.name]  # no temp files left either


@pytest.mark.parametrize(
    "evil",
    ["../evil.png", "cat/../../evil.png", "/tmp/evil.png", "C:/evil.png", "..\\evil.png"],
)
def test_entries_that_could_leave_the_folder_refuse_the_archive(tmp_path, evil):
    files = {**classes_of("", 3), evil: png(1)}
    with pytest.raises(UserError, match=r"refused: entry .*evil\.png.* outside"):
        import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")
    assert imported_folders(tmp_path / "d") == []
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "d" / "evil.png").exists()


def test_a_symlink_entry_refuses_the_archive(tmp_path):
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 3))
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(zipped, "a") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UserError, match="'cat/link.png' is a symbolic link"):
        import_dataset_zip(zipped, tmp_path / "d", "a")
    assert imported_folders(tmp_path / "d") == []


def test_a_zip_bomb_is_refused_before_extraction(tmp_path, monkeypatch):
    zipped = make_zip(tmp_path / "bomb.zip", classes_of("", 3))
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(zipped, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("cat/huge.png", "w", force_zip64=True) as entry:
            for _ in range(256):  # 256 MB of zeros, never held in memory
                entry.write(zeros)
    assert zipped.stat().st_size < 2 << 20
    written: list[object] = []
    monkeypatch.setattr(archives, "extract_entries", lambda *a: written.append(a))
    with pytest.raises(UserError, match="'cat/huge.png' would unpack .* zip bomb"):
        import_dataset_zip(zipped, tmp_path / "d", "a")
    assert written == [] and imported_folders(tmp_path / "d") == []


def test_declared_totals_over_the_limits_are_refused(tmp_path, monkeypatch):
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 3))
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 100)
    with pytest.raises(archives.UploadTooLarge, match="unpacks to"):
        import_dataset_zip(zipped, tmp_path / "d", "a")
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 1 << 30)
    monkeypatch.setattr(archives, "MAX_ENTRIES", 5)
    with pytest.raises(archives.UploadTooLarge, match="6 entries"):
        import_dataset_zip(zipped, tmp_path / "d", "a")
    monkeypatch.setattr(archives, "MAX_ZIP_BYTES", 100)
    with pytest.raises(archives.UploadTooLarge, match="the archive is larger than"):
        import_dataset_zip(io.BytesIO(zipped.read_bytes()), tmp_path / "d", "a")
    assert imported_folders(tmp_path / "d") == []


def test_bytes_written_are_capped_whatever_the_sizes_declare():
    out = io.BytesIO()
    with pytest.raises(archives.UploadTooLarge, match="more than its declared size"):
        write_capped(io.BytesIO(bytes(5000)), out, 4096, "cat/x.png")
    assert len(out.getvalue()) <= 4096


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"readme.txt": b"hi", "cat/notes.txt": b"x"}, "no usable images .*2 not image files"),
        (classes_of("", 3, classes=("cat",)), "one class only"),
        ({"cat/a.png": png(1), "dog/b.png": png(2)}, "at least 2 images"),
    ],
    ids=["no-images", "one-class", "nothing-to-hold-out"],
)
def test_archives_without_a_usable_dataset_say_what_they_must_contain(tmp_path, files, message):
    with pytest.raises(UserError, match=message):
        import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")
    assert imported_folders(tmp_path / "d") == []


def test_names_the_file_system_refuses_are_skipped(tmp_path):
    files = {**classes_of("", 3), f"cat/{'x' * 300}.png": png(1)}
    imported = import_dataset_zip(make_zip(tmp_path / "a.zip", files), tmp_path / "d", "a")
    assert [(s.reason, s.count) for s in imported.skipped] == [
        ("names this server cannot store", 1)
    ]


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"PK but not really a zip")
    with pytest.raises(UserError, match="not a zip archive"):
        import_dataset_zip(tmp_path / "a.zip", tmp_path / "d", "a")


# --------------------------------------------------------------------------------------------
# TorchScript uploads


def scripted_file(path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_a_scripted_model_is_stored_by_content_and_builds(tmp_path):
    source = scripted_file(tmp_path / "mine.pt")
    imported = import_torchscript(source, tmp_path / "d", "../My model.pt")
    assert imported.path.parent == uploaded_models_dir(tmp_path / "d").resolve()
    assert imported.spec == f"torchscript:{imported.path}" and not imported.reused
    assert imported.name == "My model.pt"  # text to show, never a path
    adapter = build_adapter(imported.spec, torch.device("cpu"), input_size=16)
    assert adapter.module(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    with open(source, "rb") as stream:
        again = import_torchscript(stream, tmp_path / "d", "again")
    assert again.reused and again.path == imported.path
    assert sorted(os.listdir(imported.path.parent)) == [imported.path.name]


@pytest.mark.parametrize("kind", ["random-bytes", "state-dict", "pickled-module"])
def test_files_that_are_not_torchscript_are_refused(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "state-dict":
        torch.save(nn.Linear(2, 2).state_dict(), path)
    else:
        torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UserError, match="not a TorchScript file .*torch.jit.script"):
        import_torchscript(path, tmp_path / "d", "m")
    assert os.listdir(uploaded_models_dir(tmp_path / "d")) == []


def test_a_model_over_the_limit_is_refused_while_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(model_uploads, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(archives.UploadTooLarge, match="the model file is larger"):
        import_torchscript(io.BytesIO(bytes(5000)), tmp_path / "d", "m")


# --------------------------------------------------------------------------------------------
# Allowed server folders


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        (root / name / "0.png").write_bytes(png(0))
    return root


def test_allowed_folders_resolve_inside_the_roots_only(tmp_path):
    root = image_folder(tmp_path / "allowed" / "pets")
    outside = image_folder(tmp_path / "secret")
    roots = [tmp_path / "allowed"]
    assert resolve_allowed_folder(str(root), roots) == root.resolve()
    assert resolve_allowed_folder("pets", roots) == root.resolve()  # relative to a root
    for escape in (str(root / ".." / ".." / "secret"), "../secret", str(outside)):
        with pytest.raises(UserError, match=f"outside the folders this server allows .*{roots[0]}"):
            resolve_allowed_folder(escape, roots)
    (tmp_path / "allowed" / "door").symlink_to(outside)
    with pytest.raises(UserError, match="outside the folders"):
        resolve_allowed_folder("door", roots)
    (root / "a" / "leak").symlink_to(outside / "a")  # open_folder would follow it
    with pytest.raises(UserError, match=r"leak is a symlink to .*secret/a, outside"):
        resolve_allowed_folder("pets", roots)
    with pytest.raises(UserError, match="started without --allow-folder"):
        resolve_allowed_folder(str(root), [])


def test_listing_offers_dataset_shaped_folders(tmp_path):
    root = tmp_path / "allowed"
    image_folder(root / "pets")
    image_folder(root / "split" / "train")
    image_folder(root / "split" / "test")
    image_folder(root / "one" / "two" / "three" / "deep")  # below depth 2
    image_folder(root / "single", classes=("a",))
    (root / "link").symlink_to(image_folder(tmp_path / "secret"))
    choices = list_allowed_folders([root])
    assert [(c.label, c.classes, c.split) for c in choices] == [
        ("allowed/pets", 2, False),
        ("allowed/split", 2, True),
    ]


# --------------------------------------------------------------------------------------------
# HTTP routes


@pytest.fixture
def client(tmp_path):
    from dashboard.upload_routes import register_upload_routes

    server = flask.Flask("test")
    register_upload_routes(server, tmp_path / "data")
    return server.test_client()


def post(client, url: str, data: bytes, name: str = "../../x.zip"):
    return client.post(
        url,
        data={"file": (io.BytesIO(data), name), "name": "pets"},
        content_type="multipart/form-data",
    )


def test_the_dataset_route_imports_a_good_zip(client, tmp_path):
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 3))
    answer = post(client, "/upload/dataset", zipped.read_bytes())
    assert answer.status_code == 200
    spec = answer.get_json()["spec"]
    assert spec.startswith(f"folder:{uploaded_datasets_dir(tmp_path / 'data').resolve()}/pets-")
    assert answer.get_json()["summary"].startswith("2 classes, 6 images")
    assert not (tmp_path / "x.zip").exists()


def test_the_dataset_route_answers_400_for_a_bad_zip(client, tmp_path):
    zipped = make_zip(tmp_path / "a.zip", {**classes_of("", 3), "../evil.png": png(1)})
    answer = post(client, "/upload/dataset", zipped.read_bytes())
    assert answer.status_code == 400
    assert "'../evil.png'" in answer.get_json()["error"]
    answer = client.post("/upload/dataset", data={}, content_type="multipart/form-data")
    assert answer.status_code == 400 and "file" in answer.get_json()["error"]


def test_the_routes_answer_413_over_the_limit(client, monkeypatch):
    monkeypatch.setattr(archives, "MAX_ZIP_BYTES", 10_000)
    answer = post(client, "/upload/dataset", bytes(100_000))  # past the request's own limit
    assert answer.status_code == 413 and "larger than" in answer.get_json()["error"]
    monkeypatch.setattr(model_uploads, "MAX_MODEL_BYTES", 10_000)
    answer = post(client, "/upload/model", bytes(10_500))  # within it, past the file's
    assert answer.status_code == 413 and "model file is larger" in answer.get_json()["error"]


def test_the_model_route_stores_torchscript_and_refuses_the_rest(client, tmp_path):
    good = scripted_file(tmp_path / "m.pt").read_bytes()
    answer = post(client, "/upload/model", good, name="m.pt")
    assert answer.status_code == 200 and answer.get_json()["spec"].startswith("torchscript:")
    answer = post(client, "/upload/model", b"random bytes", name="m.pt")
    assert answer.status_code == 400 and "not a TorchScript file" in answer.get_json()["error"]


# --------------------------------------------------------------------------------------------
# serve --allow-folder


def test_serve_hands_its_allowed_folders_to_the_app(tmp_path, monkeypatch, capsys):
    import dashboard.app
    from cli import main

    seen: list[object] = []

    def fake_create_app(data_dir, *, allowed_folders=(), auth=None):
        seen.append(allowed_folders)
        raise UserError("stopped before serving")

    monkeypatch.setattr(dashboard.app, "create_app", fake_create_app)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    serve = ["serve", "--data-dir", str(tmp_path / "d")]
    monkeypatch.chdir(tmp_path)
    assert main([*serve, "--allow-folder", str(tmp_path / "a"), "--allow-folder", "b"]) == 2
    assert "stopped before serving" in capsys.readouterr().err
    assert seen == [(tmp_path.resolve() / "a", tmp_path.resolve() / "b")]
    assert main([*serve, "--allow-folder", str(tmp_path / "nope")]) == 2
    assert "error: --allow-folder" in capsys.readouterr().err and len(seen) == 1
    assert main(serve) == 2 and seen[-1] == ()


def test_the_dashboard_app_serves_the_upload_routes(tmp_path):
    from dashboard.app import create_app
    from dashboard.context import CONFIG_KEY

    app = create_app(tmp_path, allowed_folders=[tmp_path])
    assert app.server.config[CONFIG_KEY].allowed_folders == (tmp_path.resolve(),)
    zipped = make_zip(tmp_path / "a.zip", classes_of("", 3))
    answer = post(app.server.test_client(), "/upload/dataset", zipped.read_bytes())
    assert answer.status_code == 200 and answer.get_json()["spec"].startswith("folder:")
