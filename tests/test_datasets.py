"""Offline datasets: digits, folder:PATH (mixed formats, corrupt files, layout errors), specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pipelines import datasets
from pipelines.datasets import (
    DATASET_CHOICES,
    UnreadableImage,
    candidate_files,
    class_folders,
    folder_uid,
    high_depth_to_uint8,
    open_dataset,
    read_image,
    to_l_or_rgb,
)
from pipelines.errors import UserError
from tests.fixtures_datasets import MixedFolder, build_mixed_folder, save

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mixed(tmp_path: Path) -> MixedFolder:
    return build_mixed_folder(tmp_path / "photos")


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shape_labels_and_uids(tmp_path: Path) -> None:
    ds = open_dataset("digits", tmp_path)
    assert (ds.name, ds.spec, ds.native_channels) == ("digits", "digits", 1)
    assert len(ds.samples) == 1797 and len(ds) == 1797
    assert ds.class_names == [str(d) for d in range(10)] and ds.class_wnids is None
    uids = [s.uid for s in ds.samples]
    assert len(set(uids)) == 1797
    assert uids[42] == "digits-00042" and ds.samples[42].source == "index:42"
    assert {s.split for s in ds.samples} == {"all"}
    np.testing.assert_array_equal(ds.labels, load_digits().target)
    assert [s.uid for s in open_dataset("digits", tmp_path).samples] == uids


def test_digits_are_read_from_scikit_learns_file_as_load_digits_reads_them() -> None:
    images, labels = datasets.read_digits(datasets.digits_file())
    bunch = load_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
    assert images.dtype == np.float64 and labels.dtype == np.int64


def test_digits_images_are_8x8_gray_scaled_to_0_255(tmp_path: Path) -> None:
    ds = open_dataset("digits", tmp_path)
    raw = load_digits().images
    for index in (0, 500, 1796):
        img = ds.load_image(index)
        assert img.mode == "L" and img.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(img), np.rint(raw[index] * 255 / 16))
    assert max(int(np.asarray(ds.load_image(i)).max()) for i in range(20)) == 255
    with pytest.raises(IndexError):
        ds.load_image(1797)


# --------------------------------------------------------------------------------------------
# folder:PATH


def test_folder_loads_every_good_image_and_skips_corrupt_ones(
    mixed: MixedFolder, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = open_dataset(f"folder:{mixed.root}", mixed.root.parent / "cache")
    assert ds.name == "folder" and ds.spec == f"folder:{mixed.root}"
    assert ds.class_names == mixed.classes and ds.native_channels == 3
    assert sorted(s.source for s in ds.samples) == sorted(mixed.good)
    for s in ds.samples:
        assert ds.class_names[s.label] == s.source.split("/")[0]
        assert s.split == "all"
    for i in range(len(ds)):
        img = ds.load_image(i)
        assert img.mode in ("L", "RGB")
        assert img.convert("RGB").mode == "RGB"

    said = capsys.readouterr().err.splitlines()  # warnings are lines on stderr (pipelines.report)
    (message,) = [line for line in said if "unreadable" in line]
    assert message.startswith(f"warning: skipped 3 unreadable files in {mixed.root} (e.g. ")
    assert any(bad in message for bad in mixed.corrupt)
    (dropped,) = [line for line in said if "dropped" in line]
    assert "1 class" in dropped and dropped.endswith(": empty")


def test_folder_sample_order_and_sizes_are_preserved(mixed: MixedFolder) -> None:
    ds = open_dataset(f"folder:{mixed.root}", mixed.root.parent / "cache", progress=False)
    # classes in sorted order, files sorted within each class (so runs line up across machines)
    assert [s.source for s in ds.samples] == mixed.good
    sizes = {s.source: ds.load_image(i).size for i, s in enumerate(ds.samples)}
    assert sizes["cat/a.jpg"] == (40, 30) and sizes["fish/i.tif"] == (5, 50)


def test_folder_converts_awkward_modes_exactly(mixed: MixedFolder) -> None:
    ds = open_dataset(f"folder:{mixed.root}", mixed.root.parent / "cache", progress=False)
    by_source = {s.source: ds.load_image(i) for i, s in enumerate(ds.samples)}

    deep = by_source["dog/e.png"]  # 16-bit: absolute scale, 65535 -> 255
    assert deep.mode == "L"
    np.testing.assert_array_equal(np.asarray(deep)[0], [0, 128, 255])

    rgba = np.asarray(by_source["cat/sub/c.PNG"])  # transparent half becomes white
    assert by_source["cat/sub/c.PNG"].mode == "RGB"
    np.testing.assert_array_equal(rgba[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(rgba[0, 15], [255, 255, 255])

    gif = np.asarray(by_source["dog/d.gif"])  # palette with a transparent index
    np.testing.assert_array_equal(gif[0, 0], [200, 30, 40])
    np.testing.assert_array_equal(gif[0, 11], [255, 255, 255])

    cmyk = by_source["dog/f.JPEG"]
    assert cmyk.mode == "RGB"
    red, green, blue = np.asarray(cmyk).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60  # C=0 M=255 Y=255 K=0 is red

    assert by_source["cat/b.png"].mode == "L"
    assert int(np.asarray(by_source["cat/b.png"]).mean()) == 77


def test_folder_uids_stable_and_independent_of_location(mixed: MixedFolder) -> None:
    cache = mixed.root.parent / "cache"
    first = open_dataset(f"folder:{mixed.root}", cache, progress=False)
    again = open_dataset(f"folder:{mixed.root}", cache, progress=False)
    moved_root = mixed.root.parent / "elsewhere" / "renamed"
    shutil.copytree(mixed.root, moved_root)
    moved = open_dataset(f"folder:{moved_root}", cache, progress=False)

    uids = [s.uid for s in first.samples]
    assert uids == [s.uid for s in again.samples] == [s.uid for s in moved.samples]
    assert len(set(uids)) == len(uids)
    assert uids[0] == folder_uid("cat/a.jpg")
    assert all(u.startswith("f-") and len(u) == 14 for u in uids)
    assert moved.spec == f"folder:{moved_root}"


def test_folder_relative_path_spec_resolves(mixed: MixedFolder, monkeypatch) -> None:
    monkeypatch.chdir(mixed.root.parent)
    ds = open_dataset("folder:photos", Path("cache"), progress=False)
    assert ds.spec == f"folder:{mixed.root.resolve()}"
    assert len(ds) == len(mixed.good)


def test_file_that_breaks_after_opening_raises_unreadable_image(mixed: MixedFolder) -> None:
    ds = open_dataset(f"folder:{mixed.root}", mixed.root.parent / "cache", progress=False)
    (mixed.root / "cat" / "b.png").write_bytes(b"overwritten")
    index = [s.source for s in ds.samples].index("cat/b.png")
    with pytest.raises(UnreadableImage, match=r"cat/b\.png.*remove or replace") as info:
        ds.load_image(index)
    assert isinstance(info.value, UserError)
    ds.load_image(0)  # the others still load


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(img, tmp_path / "c" / "rot.jpg", exif=exif, quality=95)
    upright = read_image(path)
    assert upright.size == (20, 40)
    pixels = np.asarray(upright.convert("L")).astype(int)
    assert pixels[:20].mean() > 200 and pixels[20:].mean() < 50  # white half now on top


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 257, 65535]], dtype=np.uint16), [0, 1, 255]),
        (np.array([[0, 32768, 65535]], dtype=np.int32), [0, 128, 255]),
        (np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), [0, 128, 255]),
        (np.array([[3.5, 3.5, 3.5]], dtype=np.float32), [0, 0, 0]),
        (np.array([[0, 70000, 140000]], dtype=np.int32), [0, 128, 255]),
    ],
)
def test_high_depth_to_uint8(values: np.ndarray, expected: list[int]) -> None:
    out = high_depth_to_uint8(values)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], expected)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"])
def test_to_l_or_rgb_handles_every_common_mode(mode: str) -> None:
    out = to_l_or_rgb(Image.new(mode, (3, 2)))
    assert out.mode in ("L", "RGB") and out.size == (3, 2)
    assert out.mode == ("L" if mode in ("1", "L", "LA", "I", "F") else "RGB")


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not exist.*<class>/<image>"):
        open_dataset(f"folder:{tmp_path / 'nope'}", tmp_path)


def test_file_instead_of_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        open_dataset(f"folder:{tmp_path / 'f.png'}", tmp_path)


def test_empty_folder_explains_the_layout(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserError, match=r"no class sub-folders.*imgs/<class>/<image>"):
        open_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path)


def test_flat_folder_of_images_says_to_make_class_folders(tmp_path: Path) -> None:
    for i in range(3):
        save(Image.new("RGB", (4, 4)), tmp_path / "flat" / f"{i}.png")
    with pytest.raises(UserError, match="found 3 images directly in it; expected one sub-folder"):
        open_dataset(f"folder:{tmp_path / 'flat'}", tmp_path)


def test_class_folders_without_usable_images_are_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    (tmp_path / "d" / "a" / "x.txt").write_text("text")
    (tmp_path / "d" / "b" / "y.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"no usable images in .*d; .*d/<class>/<image>"):
        open_dataset(f"folder:{tmp_path / 'd'}", tmp_path)


def test_folder_without_a_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="folder: needs a path"):
        open_dataset("folder:", tmp_path)


# --------------------------------------------------------------------------------------------
# folder:PATH with symlinks (issue 9, item 4): each real folder is read once


def pngs(folder: Path, *names: str) -> None:
    for name in names:
        save(Image.new("RGB", (6, 6), (len(name) * 40 % 256, 90, 30)), folder / name)


def link_messages(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines about symlinks since the last call (warnings: see pipelines.report)."""
    return [line for line in capsys.readouterr().err.splitlines() if "symlink" in line]


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    pets_layout = {"cat": ("a.png", "b.png"), "dog": ("c.png",)}
    for name, files in pets_layout.items():
        pngs(root / name, *files)
    pngs(root / "cat" / "sub", "d.png")
    return root


PET_SOURCES = ["cat/a.png", "cat/b.png", "cat/sub/d.png", "dog/c.png"]


def test_symlink_to_the_dataset_root_is_not_a_class(
    pets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pets / "self").symlink_to(".")
    ds = open_dataset(f"folder:{pets}", pets.parent / "cache", progress=False)
    assert ds.class_names == ["cat", "dog"]
    assert [s.source for s in ds.samples] == PET_SOURCES
    (message,) = link_messages(capsys)
    assert message.startswith(f"warning: did not follow 1 folder symlink in {pets} that leads")
    assert f"self -> {pets}" in message and "counted twice" in message


def test_loops_inside_class_folders_are_not_followed_and_said(
    pets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (pets / "cat" / "loop").symlink_to(".")
    (pets / "cat" / "sub" / "up").symlink_to("../..")  # the dataset root
    (pets / "cat" / "dogs").symlink_to("../dog")  # another class: its images twice
    (pets / "dog" / "everything").symlink_to(pets.parent)  # contains the dataset
    ds = open_dataset(f"folder:{pets}", pets.parent / "cache", progress=False)
    assert ds.class_names == ["cat", "dog"]
    assert [s.source for s in ds.samples] == PET_SOURCES
    (message,) = link_messages(capsys)
    assert message.startswith("warning: did not follow 4 folder symlinks in ")
    assert f"cat/dogs -> {pets / 'dog'}, cat/loop -> {pets / 'cat'}, cat/sub/up -> {pets}, …" in (
        message
    )


def test_class_folders_may_be_symlinks_to_folders_elsewhere_read_once(
    pets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The layout people build datasets with: class folders (or folders inside one) that are
    symlinks to real folders outside the dataset. Each real folder is read once."""
    elsewhere = pets.parent / "elsewhere"
    pngs(elsewhere / "cows", "e.png", "f.png")
    pngs(elsewhere / "more-cats", "g.png")
    (pets / "cows").symlink_to(elsewhere / "cows")
    (pets / "zebu").symlink_to(elsewhere / "cows")  # the same folder again: skipped
    (pets / "cat" / "more").symlink_to(elsewhere / "more-cats")
    (elsewhere / "more-cats" / "back").symlink_to(pets)  # out and back in: skipped
    (elsewhere / "cows" / "itself").symlink_to(elsewhere / "cows")
    ds = open_dataset(f"folder:{pets}", pets.parent / "cache", progress=False)
    assert ds.class_names == ["cat", "cows", "dog"]
    assert [s.source for s in ds.samples] == [
        "cat/a.png",
        "cat/b.png",
        "cat/more/g.png",
        "cat/sub/d.png",
        "cows/e.png",
        "cows/f.png",
        "dog/c.png",
    ]
    assert ds.load_image(2).size == (6, 6)
    (message,) = link_messages(capsys)
    assert "did not follow 3 folder symlinks" in message
    for skipped in (
        f"zebu -> {elsewhere / 'cows'}",
        f"cat/more/back -> {pets}",
        f"cows/itself -> {elsewhere / 'cows'}",
    ):
        assert skipped in message
    # The listing the run's dataset fingerprint is built from follows the same rules, silently.
    assert candidate_files(pets, class_folders(pets)) == [s.source for s in ds.samples]
    assert not link_messages(capsys)


def test_a_folder_whose_only_subfolder_loops_has_no_classes(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    pngs(root, "a.png", "b.png")
    (root / "self").symlink_to(".")
    with pytest.raises(UserError, match=r"no class sub-folders; found 2 images .*self ->"):
        open_dataset(f"folder:{root}", tmp_path, progress=False)


@pytest.mark.slow
def test_symlink_warning_is_one_stderr_line(pets: Path) -> None:
    (pets / "self").symlink_to(".")
    code = (
        "import sys; from pathlib import Path; from pipelines.datasets import open_dataset; "
        "print(open_dataset('folder:' + sys.argv[1], Path(sys.argv[2])).class_names)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(pets), str(pets.parent / "cache")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['cat', 'dog']"
    assert done.stderr.splitlines() == [
        f"warning: did not follow 1 folder symlink in {pets} that leads back into it, to a "
        f"folder containing it, or to a folder already read (self -> {pets}); their images "
        "would be counted twice"
    ]


# --------------------------------------------------------------------------------------------
# spec parsing


def test_unknown_spec_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        open_dataset("svhn", tmp_path)
    message = str(info.value)
    assert message.startswith("unknown dataset 'svhn'")
    for choice in DATASET_CHOICES:
        assert choice in message


def test_near_miss_spec_suggests_the_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="did you mean 'imagenette'"):
        open_dataset("imagenet", tmp_path)


def test_bare_folder_path_suggests_folder_prefix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"pass --dataset folder:{tmp_path}"):
        open_dataset(str(tmp_path), tmp_path)


def test_specs_are_case_and_space_insensitive(tmp_path: Path) -> None:
    assert len(open_dataset("  Digits ", tmp_path)) == 1797


@pytest.mark.slow
def test_warning_is_one_stderr_line_without_logging_setup(mixed: MixedFolder) -> None:
    """With no logging configured (as in the CLI), the skip warning is exactly one stderr line."""
    code = (
        "import sys; from pathlib import Path; from pipelines.datasets import open_dataset; "
        "open_dataset('folder:' + sys.argv[1], Path(sys.argv[2]), progress=False)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(mixed.root), str(mixed.root.parent / "cache")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    skipped = [line for line in lines if "unreadable" in line]
    assert skipped == [line for line in lines if line.startswith("warning: skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("warning: skipped 3 unreadable files in")


def test_torchvision_constants_written_out_are_torchvisions(tmp_path: Path) -> None:
    """``pipelines.datasets`` spells out what it used to read from torchvision at import (so a
    run on digits never imports torchvision); they must stay torchvision's."""
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, Imagenette

    assert datasets.ARCHIVES["imagenette"] == Imagenette._ARCHIVES["160px"]
    assert datasets._ARCHIVE_FOLDERS["imagenette"] == Path(Imagenette._ARCHIVES["160px"][0]).stem
    classes = {"MNIST": MNIST, "FashionMNIST": FashionMNIST, "CIFAR10": CIFAR10}
    for class_name, folder, _names, _channels, _blurb in datasets._TORCHVISION_ARRAYS.values():
        cls = classes[class_name]
        assert folder == getattr(cls, "base_folder", class_name), class_name


def test_opening_digits_imports_neither_torchvision_nor_the_explainers_libraries() -> None:
    """What a precompute on digits imports (issue 13: the first page in seconds): torchvision,
    Captum, zennit, openTSNE and scikit-learn only when something uses them (the digits are
    read from scikit-learn's file without importing it)."""
    code = (
        "import sys; from pathlib import Path; import pipelines.precompute, dashboard.app; "
        "from pipelines.datasets import open_dataset; "
        "open_dataset('digits', Path('unused'), progress=False); "
        "print(sorted(m for m in ('torchvision', 'captum', 'zennit', 'openTSNE', "
        "'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
