"""End-to-end precompute: the session run's artifacts, reopening its model, kill -9 and resume,
a folder of real images through resnet18, and ImageNet weights from a pre-placed torch cache."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torchvision
from PIL import Image

from pipelines import precision
from pipelines.models import build_torchvision, open_run_model
from pipelines.precompute import Precompute, PrecomputeConfig
from pipelines.stages import forward
from pipelines.store import RunStore, embedding_key, runs_dir
from tests.conftest import small_run_arguments
from tests.run_checks import assert_same_artifacts

ROOT = Path(__file__).resolve().parent.parent


def open_store(data_dir: Path, run_id: str) -> RunStore:
    return RunStore(runs_dir(data_dir) / run_id)


def expected_embedding_keys(manifest: dict) -> list[dict]:
    keys = []
    for layer in manifest["layers"]:
        for size in manifest["subsets"]:
            keys.append(embedding_key(layer["id"], size, "pca", None))
            for perplexity in manifest["perplexities"][str(size)]:
                keys.append(embedding_key(layer["id"], size, "tsne", perplexity))
    return keys


def test_small_run_has_every_artifact_for_every_layer(small_run):
    store = open_store(*small_run)
    manifest = store.read_manifest()
    assert all(stage["state"] == "done" for stage in manifest["stages"].values())
    n = manifest["dataset"]["num_samples"]
    assert n == 300 and manifest["subsets"] == [100, 300]
    assert manifest["perplexities"] == {"100": [10.0, 30.0], "300": [10.0, 30.0]}

    samples = store.load_json("samples")
    assert len(set(samples["uid"])) == n
    # Nested, class-balanced: the first 100 rows hold every digit about equally.
    counts = np.bincount(samples["label"][:100], minlength=10)
    assert counts.max() - counts.min() <= 1

    assert store.load_array("thumbnails").shape == (n, 64, 64, 3)
    predictions = store.load_arrays("predictions")
    assert predictions["top10_index"].shape == (n, 10)
    assert (predictions["top10_prob"].sum(1) <= 1.0 + 1e-5).all()
    assert predictions["confusion"].sum() == n
    assert manifest["accuracy"] > 0.9  # smallcnn on digits
    training = manifest["model"]["training"]  # trained fresh for this session's data dir
    assert training["test_accuracy"] >= 0.95 and training["test_samples"] > 300

    size = manifest["explanation_size"]
    assert manifest["model"]["gradcam_layer"] == "features.7"  # ReLU after the last conv
    cams = store.load_array("explanation", method="gradcam")
    assert (cams.reshape(n, -1).max(axis=1) > 0).mean() > 0.9  # maps are not empty
    assert store.load_array("explanation", method="gradcam").shape == (n, size, size)
    assert store.load_array("explanation", method="guided_backprop").shape == (n, size, size, 3)
    assert store.load_array("explanation", method="guided_gradcam").shape == (n, size, size, 3)

    layer_ids = [layer["id"] for layer in manifest["layers"]]
    assert layer_ids[0] == "input" and "features.0" in layer_ids and "classifier.3" in layer_ids
    for layer in manifest["layers"]:
        reduction = store.load_json("reduction", layer=layer["id"])
        assert reduction["kept_dims"] >= 2
    for key in expected_embedding_keys(manifest):
        coords = store.load_array("embedding", **key)
        assert coords.shape == (key["subset"], 2) and np.isfinite(coords).all(), key
    # Intermediate per-chunk files are gone once consolidated.
    assert not store.run_dir.joinpath("features").exists()
    assert not store.run_dir.joinpath("forward_chunk").exists()


def test_reopened_model_reproduces_the_stored_predictions(small_run):
    data_dir, run_id = small_run
    store = open_store(data_dir, run_id)
    run_model = open_run_model(store, data_dir, device="cpu")
    predicted = store.load_arrays("predictions")["predicted"]
    for row in (0, 57, 299):
        with torch.no_grad():
            logits = run_model.adapter.module(run_model.input_for(row))
        assert int(logits.argmax()) == int(predicted[row])


def precompute_command(data_dir: Path, run_id: str) -> list[str]:
    """The very command that made the session's reference run, into another folder."""
    return [sys.executable, "main.py", *small_run_arguments(data_dir, run_id)]


@pytest.mark.slow
def test_kill_9_during_embeddings_then_resume_equals_an_uninterrupted_run(small_run, tmp_path):
    reference = open_store(*small_run)
    data_dir = tmp_path / "data"
    # Reuse the trained smallcnn so the test measures resuming, not training.
    shutil.copytree(small_run[0] / "models", data_dir / "models")
    store = open_store(data_dir, "resumed")
    process = subprocess.Popen(
        precompute_command(data_dir, "resumed"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    reductions = store.run_dir / "reduction"
    while time.time() < deadline and process.poll() is None:
        if reductions.is_dir() and len(list(reductions.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers, "the embeddings stage should be running in worker processes"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Orphaned workers would keep writing into the run while it resumes.
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
    assert store.read_manifest()["stages"]["embeddings"]["state"] != "done"

    resumed = subprocess.run(
        precompute_command(data_dir, "resumed"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run 'resumed'" in resumed.stderr

    assert_same_artifacts(store, reference)


@pytest.fixture
def torch_threads_kept():
    """The precompute sets torch's threads for the smallcnn; this process's other tests keep
    theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_image_folder(root: Path) -> Path:
    """Three classes of real photographs (scikit-image samples), varied crops, mixed modes."""
    from skimage import data

    sources = {"astronaut": data.astronaut(), "coffee": data.coffee(), "cat": data.chelsea()}
    rng = np.random.default_rng(0)
    for name, photo in sources.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(8):
            top, left = rng.integers(0, 60, size=2)
            crop = Image.fromarray(photo[top : top + 200, left : left + 240])
            if i % 4 == 1:
                crop = crop.convert("L")
            if i % 4 == 2:
                crop = crop.convert("P")
            crop.save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_folder_of_images_through_random_resnet18(tmp_path):
    folder = make_image_folder(tmp_path / "photos")
    config = PrecomputeConfig(
        dataset=f"folder:{folder}",
        model="resnet18",
        weights="none",
        subsets=("all",),
        perplexities=(5.0,),
        batch_size=8,
    )
    store = Precompute(config, tmp_path / "data", None, progress=False).run()
    manifest = store.read_manifest()
    assert manifest["dataset"]["num_samples"] == 24
    assert manifest["class_mapping"]["method"] == "none"  # random ImageNet head, folder names
    assert manifest["accuracy"] is None
    assert manifest["model"]["gradcam_layer"] == "layer4.1.relu"
    relu = next(layer for layer in manifest["layers"] if layer["id"] == "layer1.0.relu")
    assert set(relu["parents"]) == {"layer1.0.bn2", "maxpool"}
    for key in expected_embedding_keys(manifest):
        assert store.load_array("embedding", **key).shape == (24, 2)


def test_imagenet_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    """The real torchvision loading path, with the weight file pre-placed in $TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, checkpoints / Path(weights.url).name)
    adapter = build_torchvision("resnet18", "imagenet", torch.device("cpu"), progress=False)
    assert torch.equal(adapter.module.fc.weight, state["fc.weight"])
    assert adapter.is_imagenet and adapter.class_names[0] == "tench" and adapter.input_size == 224


# ---- forward precision: bfloat16 where it stays within tolerance (CPU branch of the same code) ---

BF16_LAYERS = ["conv1", "layer1.0.relu", "layer3.1.relu", "layer4.1.relu", "fc"]


def random_resnet18_and_images(count: int = 6) -> tuple:
    torch.manual_seed(0)
    adapter = build_torchvision("resnet18", "none", torch.device("cpu"), progress=False)
    images = torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return adapter, images


def test_bf16_forward_stays_within_tolerance_of_float32():
    adapter, images = random_resnet18_and_images()
    check = precision.compare_bf16(adapter, images, BF16_LAYERS)
    # Autocast really ran (bfloat16 changed the features) and stayed within the tolerance.
    assert 0.0 < check["worst_feature_error"] <= precision.BF16_MAX_FEATURE_ERROR
    assert check["worst_layer"] in BF16_LAYERS
    assert precision.choose_precision(check)["dtype"] == (
        "bfloat16" if check["accepted"] else "float32"
    )
    exact, exact_features = forward.forward_chunk(
        adapter, images, BF16_LAYERS, "layer4.1.relu", 16, 3, "float32"
    )
    bf16, bf16_features = forward.forward_chunk(
        adapter, images, BF16_LAYERS, "layer4.1.relu", 16, 3, "bfloat16"
    )
    for layer in BF16_LAYERS:
        error = precision.relative_error(
            torch.from_numpy(bf16_features[layer]), torch.from_numpy(exact_features[layer])
        )
        assert 0.0 < error <= precision.BF16_MAX_FEATURE_ERROR, layer
    assert bf16_features["fc"].dtype == np.float16  # stored as always
    np.testing.assert_allclose(bf16["log_prob"], exact["log_prob"], atol=0.05)
    # The explanations of the same class agree (Grad-CAM maps in float32 from bf16 tensors).
    same = bf16["top10_index"][:, 0] == exact["top10_index"][:, 0]
    assert same.mean() >= precision.BF16_MIN_TOP1_AGREEMENT
    for method in ("gradcam", "guided_backprop"):
        a = bf16[method][same].astype(np.float64).ravel()
        b = exact[method][same].astype(np.float64).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.95, method


def test_bf16_is_refused_where_it_would_change_predictions():
    # Two classes whose weights differ by 1e-3 of their size: bfloat16's 8-bit mantissa cannot
    # tell their logits apart, so the predicted class changes for many images.
    torch.manual_seed(0)
    head = torch.nn.Linear(3 * 8 * 8, 2, bias=False)
    with torch.no_grad():
        head.weight[1] = head.weight[0] * (1 + 1e-3 * torch.randn(head.weight.shape[1]))
    model = torch.nn.Sequential(torch.nn.Flatten(), head).eval()
    adapter = type("Adapter", (), {"module": model, "device": torch.device("cpu")})()
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    check = precision.compare_bf16(adapter, images, ["1"])
    assert check["top1_agreement"] < precision.BF16_MIN_TOP1_AGREEMENT
    choice = precision.choose_precision(check)
    assert choice["dtype"] == "float32" and not choice["accepted"]
    assert f"{check['top1_agreement']:.1%}" in choice["reason"] and "needs 99%" in choice["reason"]


def test_precision_is_float32_off_cuda_and_kept_in_the_manifest(small_run):
    assert precision.choose_precision(None) == {
        "dtype": "float32",
        "reason": "bfloat16 is used on CUDA GPUs only",
    }
    assert not precision.bf16_available(torch.device("cpu"))
    manifest = open_store(*small_run).read_manifest()
    assert manifest["forward_precision"]["dtype"] == "float32"


@pytest.mark.slow
def test_maps_first_stores_the_same_run_and_resumes_its_explanations(
    small_run, tmp_path, monkeypatch, torch_threads_kept
):
    """``--maps-first`` (what `python main.py` and the page's runs use): the forward pass
    without the explanations, which the explanations stage computes after the PCA maps. The
    run is the reference's, file for file, also when that stage failed once half way."""
    import cli

    reference = open_store(*small_run)
    data_dir = tmp_path / "data"
    shutil.copytree(small_run[0] / "models", data_dir / "models")  # no training again
    store = open_store(data_dir, "maps-first")
    real_stream = forward.stream_chunks

    def failing_stream(store, num_chunks, name, rows, kind, params, source="forward_chunk"):
        if source == "explanation_chunk":
            raise RuntimeError("disk full")
        return real_stream(store, num_chunks, name, rows, kind, params, source)

    monkeypatch.setattr(forward, "stream_chunks", failing_stream)
    arguments = [*small_run_arguments(data_dir, "maps-first"), "--maps-first"]
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(arguments)
    record = store.read_record()
    assert record.stage("forward").state == "done"
    assert record.stage("explanations").state == "running"
    assert not store.has("explanation", method="gradcam")  # not in the forward pass
    assert store.has("explanation_chunk", chunk=0)  # kept for the resume
    assert record.failure is not None and "disk full" in record.failure.error

    monkeypatch.setattr(forward, "stream_chunks", real_stream)
    assert cli.main(arguments) == 0
    record = store.read_record()
    assert all(stage.state == "done" for stage in record.stages.values())
    assert list(record.stages)[-2:] == ["explanations", "quality"]
    assert record.stage("explanations").seconds > 0
    assert not store.run_dir.joinpath("explanation_chunk").exists()
    assert_same_artifacts(store, reference)
