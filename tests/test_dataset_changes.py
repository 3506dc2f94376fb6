"""A folder dataset that changes after its run was computed: the resume is refused, the dashboard
marks the run, and on-demand work finds each sample by uid and refuses a changed file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.data import RunCatalog
from dashboard.state import setup_for
from pipelines.errors import UserError
from pipelines.fingerprint import describe_change
from pipelines.models import open_run_model
from pipelines.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "growing"
CLASSES = ("zero", "one", "two")


def write_digits(folder: Path, start: int, count: int) -> None:
    """``count`` digit images per class, named from ``start`` on (8x8 digits scaled to 16 px)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        images = digits.images[digits.target == label]
        for i in range(start, start + count):
            pixels = np.rint(images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((16, 16)).save(folder / name / f"img{i:03d}.png")


def precompute(data_dir: Path, folder: Path, run_id: str = RUN_ID) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "main.py",
            "precompute",
            "--dataset",
            f"folder:{folder}",
            "--model",
            "smallcnn",
            "--subsets",
            "all",
            "--perplexities",
            "5",
            "--data-dir",
            str(data_dir),
            "--run-id",
            run_id,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run computed on a 24-image folder, after which 9 images were added."""
    base = tmp_path_factory.mktemp("growing")
    folder, data_dir = base / "images", base / "data"
    write_digits(folder, 0, 8)
    result = precompute(data_dir, folder)
    assert result.returncode == 0, result.stderr[-2000:]
    write_digits(folder, 8, 3)
    return folder, data_dir


def test_resuming_over_a_changed_folder_is_refused(grown: tuple[Path, Path]) -> None:
    folder, data_dir = grown
    result = precompute(data_dir, folder)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "changed" in errors[0] and "9 images added" in errors[0] and "--run-id" in errors[0]
    manifest = RunStore(data_dir / "runs" / RUN_ID).read_manifest()
    assert manifest["dataset"]["num_samples"] == 24  # the run was left as it was


def test_a_new_run_id_computes_the_folder_as_it_is_now(grown: tuple[Path, Path]) -> None:
    folder, data_dir = grown
    result = precompute(data_dir, folder, run_id="grown")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = RunStore(data_dir / "runs" / "grown").read_manifest()
    assert manifest["dataset"]["num_samples"] == 33
    # The smallcnn trained on the 24 images is not reused for the 33.
    assert manifest["model"]["trained_now"] is True


def test_the_dashboard_marks_a_run_whose_folder_changed(grown: tuple[Path, Path]) -> None:
    _, data_dir = grown
    catalog = RunCatalog(data_dir)
    run = catalog.open(RUN_ID)
    assert "9 images added" in (run.source_change() or "")
    setup = setup_for(catalog, {"run": RUN_ID})
    assert any(color == "danger" and "changed" in text for color, text in setup.messages)
    labels = {s.run_id: s.label for s in catalog.summaries()}
    assert "DATASET CHANGED" in labels[RUN_ID]


def test_on_demand_work_finds_samples_by_uid(grown: tuple[Path, Path]) -> None:
    """After the folder grew, every row still gets its own image (by position, 20 of 24 rows
    got another image)."""
    _, data_dir = grown
    store = RunStore(data_dir / "runs" / RUN_ID)
    model = open_run_model(store, data_dir, "cpu")
    samples = store.load_json("samples")
    root = Path(store.read_manifest()["dataset"]["spec"].split(":", 1)[1])
    for row, source in enumerate(samples["source"]):
        expected = model.adapter.preprocess([Image.open(root / source)])
        assert np.array_equal(model.input_for(row).numpy(), expected.numpy()), source


def test_on_demand_work_refuses_a_changed_or_removed_file(grown: tuple[Path, Path]) -> None:
    """Runs last in this module: it edits the folder that run "grown" was computed on."""
    folder, data_dir = grown
    store = RunStore(data_dir / "runs" / "grown")
    samples = store.load_json("samples")
    edited = folder / samples["source"][3]
    Image.new("L", (16, 16), 255).save(edited)
    os.utime(edited, ns=(1, 1))  # a different mtime even within the filesystem's resolution
    (folder / samples["source"][5]).unlink()
    model = open_run_model(store, data_dir, "cpu")
    with pytest.raises(UserError, match="changed on disk"):
        model.input_for(3)
    with pytest.raises(UserError, match="no longer in its dataset"):
        model.input_for(5)
    model.input_for(4)  # untouched samples still work
    assert "1 removed, 1 modified" in (RunCatalog(data_dir).open("grown").source_change() or "")


def test_describe_change_counts_each_kind() -> None:
    recorded = {"a/1.png": [10, 1], "a/2.png": [10, 1], "b/3.png": [5, 1]}
    current = {"a/1.png": [10, 1], "a/2.png": [11, 2], "b/4.png": [5, 1], "b/5.png": [5, 1]}
    assert (
        describe_change(recorded, current) == "2 images added, 1 removed, 1 modified (e.g. b/4.png)"
    )
