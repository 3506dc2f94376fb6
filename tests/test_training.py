"""Training as part of a run: the loop and its curves, presets, torchvision fine-tuning, the
`train` command and its resume path. Offline and small: digits, a few epochs, few samples."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from cli import main
from components.training_curves import curves_figure
from dashboard.data import RunData
from dashboard.panels.about import training_graph
from pipelines.cores import available_cores
from pipelines.datasets import open_dataset
from pipelines.models import load_inputs, open_run_model, rebuild_adapter, resolve_device
from pipelines.precompute import Precompute
from pipelines.presets import PRESETS, build_preset
from pipelines.run_config import (
    PrecomputeConfig,
    default_run_id,
    run_training,
    training_settings,
)
from pipelines.smallcnn import SmallCNN, TrainingStopped, train_small_cnn
from pipelines.stages import follow_free_cores
from pipelines.stages.model import run_rows, training_split
from pipelines.store import RunStore, datasets_dir, runs_dir
from pipelines.training import (
    TrainingCurves,
    TrainingSettings,
    default_settings,
    held_out_metrics,
    train_model,
)


def blobs(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Two separable classes of 1x8x8 images, every fifth row held out."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    inputs = torch.randn(n, 1, 8, 8, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1)
    return inputs, labels, np.arange(n) % 5 == 0


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_preset("mlp", 1, 2, 8)


# ---- the loop -------------------------------------------------------------------------------


def test_train_model_reproduces_smallcnn_recipe_weight_for_weight():
    inputs, labels, is_test = blobs(160)
    inputs = torch.nn.functional.interpolate(inputs, size=32)

    def fresh() -> SmallCNN:
        torch.manual_seed(0)
        return SmallCNN(1, 2, 32)

    reference = fresh()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_small_cnn(reference, inputs, labels, is_test, 0, epochs=2, progress=False)
    generalised = fresh()
    settings = default_settings("digits", "smallcnn")
    train_model(generalised, inputs, labels, is_test, TrainingSettings(epochs=2, seed=0))
    assert settings == TrainingSettings()  # smallcnn's defaults are its recipe
    for ours, theirs in zip(
        generalised.state_dict().values(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs)


def test_curves_grow_one_point_per_epoch_and_round_trip():
    inputs, labels, is_test = blobs()
    seen: list[TrainingCurves] = []
    curves = train_model(
        tiny_mlp(), inputs, labels, is_test, TrainingSettings(epochs=3, batch_size=32), seen.append
    )
    # A point per epoch, then the final state once more.
    assert [len(c.points) for c in seen] == [1, 2, 3, 3]
    assert [c.state for c in seen] == ["training"] * 3 + ["done"]
    assert [p.epoch for p in curves.points] == [1.0, 2.0, 3.0]
    assert curves.points[-1].held_out_accuracy > 0.9
    assert curves.points[-1].train_loss < curves.points[0].train_loss
    assert TrainingCurves.from_json(json.loads(json.dumps(curves.to_json()))) == curves


def test_long_epochs_get_points_inside_them():
    inputs, labels, is_test = blobs(400)
    curves = train_model(
        tiny_mlp(), inputs, labels, is_test, TrainingSettings(epochs=1, batch_size=4)
    )
    # 80 steps: at least 50, so about five points (every 16 steps), the last the epoch's end.
    assert [p.epoch for p in curves.points] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [p.step for p in curves.points] == [16, 32, 48, 64, 80]
    assert len(curves.epoch_points()) == 1


def test_sgd_trains():
    inputs, labels, is_test = blobs()
    settings = TrainingSettings(epochs=4, batch_size=32, optimizer="sgd", lr=0.05)
    curves = train_model(tiny_mlp(), inputs, labels, is_test, settings)
    assert curves.state == "done"
    assert curves.points[-1].held_out_accuracy > 0.9
    assert curves.points[-1].train_loss < curves.points[0].train_loss


def test_augmented_training_trains():
    inputs, labels, is_test = blobs()
    settings = TrainingSettings(epochs=3, batch_size=32, augment=True)
    curves = train_model(tiny_mlp(), inputs, labels, is_test, settings, flip=True)
    assert curves.points[-1].held_out_accuracy > 0.9


def test_early_stopping_stops_and_restores_the_best_epoch():
    # Held-out labels are noise: once the model memorises the (noisy) training labels, the
    # held-out loss only grows.
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(120, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 2, (120,), generator=generator)
    is_test = np.arange(120) % 3 == 0
    model = tiny_mlp()
    settings = TrainingSettings(epochs=40, batch_size=16, lr=5e-3, early_stopping=2)
    curves = train_model(model, inputs, labels, is_test, settings)
    assert curves.state == "stopped early"
    epochs = curves.epoch_points()
    assert len(epochs) < 40
    assert curves.best_epoch == len(epochs) - 2  # two epochs of patience after the best
    best = epochs[curves.best_epoch - 1]
    assert best.held_out_loss == min(p.held_out_loss for p in epochs)
    mask = torch.as_tensor(is_test)
    restored_loss, _ = held_out_metrics(model, inputs[mask], labels[mask])
    assert restored_loss == pytest.approx(best.held_out_loss, rel=1e-5)


def test_stop_cancels_and_reports_it():
    inputs, labels, is_test = blobs()
    stop = threading.Event()
    seen: list[TrainingCurves] = []

    def on_point(curves: TrainingCurves) -> None:
        seen.append(curves)
        stop.set()

    with pytest.raises(TrainingStopped):
        train_model(tiny_mlp(), inputs, labels, is_test, TrainingSettings(epochs=5), on_point, stop)
    assert [c.state for c in seen] == ["training", "cancelled"]


# ---- settings and identity -------------------------------------------------------------------


def test_a_run_without_training_keeps_its_old_identity():
    config = PrecomputeConfig(dataset="digits", model="smallcnn")
    assert config.identity() == {
        "dataset": "digits",
        "model": "smallcnn",
        "weights": None,
        "samples": None,
        "subsets": ["100", "1000", "all"],
        "perplexities": [10.0, 30.0, 90.0],
        "seed": 0,
        "input_size": None,
    }
    assert default_run_id(config) == "digits-smallcnn"
    # The embedded default trains nothing in the run: the shared cached smallcnn.
    assert run_training(config) is None
    nothing = dict.fromkeys(("epochs", "lr", "optimizer"))
    assert training_settings("digits", "smallcnn", 0, nothing, trains=False) is None


def test_training_settings_join_the_identity_and_the_run_id():
    given = {"epochs": 3}
    settings = training_settings("digits", "mlp", 0, given, trains=True)
    config = PrecomputeConfig(dataset="digits", model="mlp", training=settings)
    assert config.identity()["training"]["epochs"] == 3
    assert default_run_id(config).startswith("digits-mlp-trained-")
    # A preset's defaults are the preset's own run: train and precompute name the same one.
    assert training_settings("digits", "mlp", 0, {}, trains=True) is None
    assert run_training(PrecomputeConfig(dataset="digits", model="mlp")) == default_settings(
        "digits", "preset"
    )
    fine_tune = training_settings("digits", "resnet18", 0, {}, trains=True)
    assert fine_tune is not None and fine_tune.fine_tune == "classifier"
    resnet = PrecomputeConfig(dataset="digits", model="resnet18", training=fine_tune)
    assert default_run_id(resnet) == "digits-resnet18-trained"


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--model", "mlp", "--epochs", "0"], "--epochs 0"),
        (["--model", "mlp", "--lr", "0"], "--lr 0"),
        (["--model", "mlp", "--lr", "fast"], "--lr"),
        (["--model", "mlp", "--optimizer", "rmsprop"], "unknown --optimizer 'rmsprop'"),
        (["--model", "mlp", "--fine-tune", "all"], "drop --fine-tune"),
        (["--model", "resnet18", "--fine-tune", "most"], "unknown --fine-tune"),
        (["--model", "mlp", "--early-stopping", "0"], "--early-stopping 0"),
        (["--model", "vgg-tiny"], "unknown model 'vgg-tiny'"),
        (["--model", "mlp", "--batch-size", "0"], "--train-batch-size 0"),
    ],
)
def test_bad_training_options_are_one_error_line(argv, phrase, tmp_path, capsys):
    status = main(["train", "--dataset", "digits", "--data-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and phrase in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_unknown_model_names_the_presets(tmp_path, capsys):
    status = main(["precompute", "--dataset", "digits", "--model", "nope"])
    err = capsys.readouterr().err
    assert status == 2
    assert "mlp, vgg-small, resnet-small" in err


# ---- runs that train --------------------------------------------------------------------------


def assert_rebuilt_model_predicts_as_stored(store: RunStore, data_dir) -> None:
    """The dashboard's way of reopening the model gives the stored predictions."""
    run_model = open_run_model(store, data_dir, "cpu")
    predictions = store.load_arrays("predictions")
    for row in range(4):
        with torch.no_grad():
            logits = run_model.adapter.module(run_model.input_for(row))
        assert int(logits.argmax(1)) == int(predictions["predicted"][row])
        probabilities = run_model.adapter.decode(logits)[0]
        top = predictions["top10_prob"][row][0]
        assert float(probabilities.max()) == pytest.approx(float(top), abs=2e-3)


def test_mlp_train_then_precompute_resumes_the_same_run(tmp_path, capsys):
    data_dir = tmp_path / "data"
    common = ["--dataset", "digits", "--model", "mlp", "--samples", "90", "--subsets", "all"]
    common += ["--perplexities", "10", "--data-dir", str(data_dir)]
    assert main(["train", *common, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "held-out acc" in out.splitlines()[0]
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["1", "2"]
    (run_dir,) = (data_dir / "runs").iterdir()
    store = RunStore(run_dir)
    assert store.pending_stages(["model", "index"]) == ["index"]
    curves = TrainingCurves.from_json(store.load_json("training_curves"))
    assert curves.state == "done" and len(curves.epoch_points()) == 2
    assert curves.settings.optimizer == "sgd"
    resume = out.strip().splitlines()[-1].strip()
    assert resume.startswith("python main.py precompute") and "--optimizer sgd" in resume

    # The printed command (the same options) completes the same run.
    assert main(["precompute", *common, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.01"]) == 0
    assert [path.name for path in (data_dir / "runs").iterdir()] == [run_dir.name]
    assert store.pending_stages(["model", "index", "forward", "embeddings", "quality"]) == []
    record = store.read_record()
    assert record.model is not None and record.model.trained and record.model.gradcam_layer is None
    assert_rebuilt_model_predicts_as_stored(store, data_dir)
    graph = training_graph(RunData(store, store.read_manifest()))
    assert graph is not None and graph.figure.data[0].name == "train loss"
    capsys.readouterr()
    assert main(["runs", "--data-dir", str(data_dir)]) == 0
    assert "training: 2 of 2 epochs (done), best held-out accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("preset", ["vgg-small", "resnet-small"])
def test_conv_presets_train_into_a_run_the_dashboard_opens(preset, tmp_path, capsys):
    data_dir = tmp_path / "data"
    argv = ["train", "--dataset", "digits", "--model", preset, "--samples", "80"]
    argv += ["--subsets", "all", "--perplexities", "10", "--epochs", "1"]
    assert main([*argv, "--data-dir", str(data_dir), "--run-id", "run"]) == 0
    assert "the other stages are pending" in capsys.readouterr().out
    # The forward pass, as `precompute` would go on (the maps, slow on a busy 2-core machine,
    # are the mlp test's: they do not depend on the model's kind).
    config = PrecomputeConfig(
        dataset="digits",
        model=preset,
        samples=80,
        subsets=("all",),
        perplexities=(10.0,),
        training=training_settings("digits", preset, 0, {"epochs": 1}, trains=True),
    )
    Precompute(config, data_dir, "run", progress=False, until="forward").run()
    store = RunStore(runs_dir(data_dir) / "run")
    assert store.pending_stages(["forward", "embeddings"]) == ["embeddings"]
    record = store.read_record()
    assert record.model is not None and record.model.gradcam_layer is not None
    assert store.has("explanation", method="gradcam")
    assert_rebuilt_model_predicts_as_stored(store, data_dir)
    samples = store.load_json("samples")
    assert set(samples["model_split"]) == {"train", "held-out"}


def test_presets_are_all_registered():
    assert PRESETS == ("mlp", "vgg-small", "resnet-small")


def test_curves_are_on_disk_while_training(tmp_path):
    data_dir = tmp_path / "data"
    config = PrecomputeConfig(
        dataset="digits",
        model="resnet-small",
        samples=60,
        subsets=("all",),
        training=TrainingSettings(epochs=2, batch_size=16),
    )
    seen: list[int] = []

    def on_point(curves: TrainingCurves) -> None:
        on_disk = TrainingCurves.from_json(precompute.store.load_json("training_curves"))
        assert on_disk == curves  # written before the caller hears of it
        stage = precompute.store.read_record().stage("model")
        if curves.state == "training":  # the manifest says how far (the page polls it)
            assert (stage.state, stage.done, stage.total) == ("running", len(curves.points), 2)
        seen.append(len(curves.points))

    precompute = Precompute(
        config, data_dir, None, progress=False, on_training_point=on_point, until="model"
    )
    precompute.run()
    assert seen == [1, 2, 2]
    assert precompute.store.read_record().stage("model").state == "done"


def test_torchvision_fine_tune_of_the_classifier(tmp_path, capsys):
    data_dir = tmp_path / "data"
    argv = ["train", "--dataset", "digits", "--model", "resnet18", "--weights", "none"]
    argv += ["--samples", "24", "--subsets", "all", "--epochs", "1", "--batch-size", "12"]
    assert main([*argv, "--data-dir", str(data_dir), "--run-id", "ft", "--device", "cpu"]) == 0
    store = RunStore(runs_dir(data_dir) / "ft")
    record = store.read_record()
    model = record.model
    assert model is not None and model.replaced_head == "fc" and model.trained
    assert list(model.class_names) == [str(i) for i in range(10)]
    assert record.class_mapping is not None
    assert record.class_mapping.dataset_to_model == tuple(range(10))
    curves = TrainingCurves.from_json(store.load_json("training_curves"))
    assert curves.settings.fine_tune == "classifier"

    # Rebuilt from the run's checkpoint (no ImageNet weights needed), it scores the held-out
    # rows exactly as the training's last point did.
    adapter = rebuild_adapter(
        record, store.artifact_path("model_checkpoint"), resolve_device("cpu")
    )
    assert adapter.module.fc.out_features == 10 and not adapter.is_imagenet
    dataset = open_dataset("digits", datasets_dir(data_dir), progress=False)
    rows = run_rows(dataset, 0, 24)
    held_out = training_split(dataset, 0)[rows]
    _, inputs = load_inputs(adapter, dataset, rows[held_out])
    labels = torch.tensor([dataset.samples[i].label for i in rows[held_out]])
    _, accuracy = held_out_metrics(adapter.module, inputs, labels)
    assert accuracy == pytest.approx(curves.points[-1].held_out_accuracy)


# ---- the figure -------------------------------------------------------------------------------


def test_curves_figure_has_loss_and_accuracy_on_two_axes():
    inputs, labels, is_test = blobs()
    curves = train_model(tiny_mlp(), inputs, labels, is_test, TrainingSettings(epochs=2))
    figure = curves_figure(curves)
    names = [trace.name for trace in figure.data]
    assert names == ["train loss", "held-out loss", "train accuracy", "held-out accuracy"]
    assert [trace.yaxis for trace in figure.data] == ["y", "y", "y2", "y2"]
    assert [trace.line.dash for trace in figure.data] == ["solid", "dash", "solid", "dash"]
    assert list(figure.data[0].x) == [1.0, 2.0]
    assert figure.layout.font.size >= 18 and figure.data[0].line.width >= 3
    assert figure.layout.yaxis2.overlaying == "y"


def test_the_embedded_default_still_uses_the_shared_cached_smallcnn(tmp_path, monkeypatch):
    import pipelines.stages.model as model_stage

    calls = []

    def cached(adapter, checkpoint, load_inputs, seed, progress, before_epoch=None):
        calls.append(checkpoint)  # trained (or loaded) as before; skipped here to stay fast
        return {"checkpoint": str(checkpoint), "trained_now": False}

    monkeypatch.setattr(model_stage, "train_or_load_smallcnn", cached)
    data_dir = tmp_path / "data"
    config = PrecomputeConfig(dataset="digits", model="smallcnn", samples=40)
    store = Precompute(config, data_dir, None, progress=False, until="model").run()
    (checkpoint,) = calls
    assert checkpoint.parent == data_dir / "models"
    assert not store.has("training_curves")
    record = store.read_record()
    assert record.model is not None and not record.model.trained
    assert "trained" not in record.model.to_json() and "replaced_head" not in record.model.to_json()


def test_interrupted_training_is_marked_and_trains_again_on_rerun(tmp_path):
    data_dir = tmp_path / "data"
    config = PrecomputeConfig(
        dataset="digits",
        model="mlp",
        samples=60,
        subsets=("all",),
        training=TrainingSettings(epochs=3, batch_size=16),
    )

    def ctrl_c(curves: TrainingCurves) -> None:
        raise KeyboardInterrupt

    interrupted = Precompute(
        config, data_dir, "run", progress=False, on_training_point=ctrl_c, until="model"
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    store = interrupted.store
    assert TrainingCurves.from_json(store.load_json("training_curves")).state == "cancelled"
    assert store.pending_stages(["model"]) == ["model"]  # not done: the rerun trains again
    Precompute(config, data_dir, "run", progress=False, until="model").run()
    curves = TrainingCurves.from_json(store.load_json("training_curves"))
    assert curves.state == "done" and len(curves.points) == 3
    assert store.pending_stages(["model"]) == []


def test_early_stopping_without_held_out_rows_trains_every_epoch():
    inputs, labels, _ = blobs(60)
    settings = TrainingSettings(epochs=3, batch_size=32, early_stopping=1)
    curves = train_model(tiny_mlp(), inputs, labels, np.zeros(60, dtype=bool), settings)
    assert curves.state == "done" and len(curves.epoch_points()) == 3
    assert curves.points[-1].held_out_loss is None and curves.best_epoch is None
    assert [trace.name for trace in curves_figure(curves).data] == ["train loss", "train accuracy"]


def test_the_smallcnn_follows_the_free_cores_before_every_later_epoch():
    """`python main.py`'s server imports during the first seconds of the default run's
    training: the training's threads are decided again before each epoch."""
    inputs, labels, is_test = blobs(160)
    inputs = torch.nn.functional.interpolate(inputs, size=32)
    model = SmallCNN(1, 2, 32)
    threads_before: list[int] = []
    previous = torch.get_num_threads()
    adapt = follow_free_cores("smallcnn", "cpu")
    assert adapt is not None and follow_free_cores("vgg16", "cpu") is None
    try:
        torch.set_num_threads(1)

        def before_epoch() -> None:
            adapt()
            threads_before.append(torch.get_num_threads())

        train_small_cnn(
            model, inputs, labels, is_test, 0, epochs=3, progress=False, before_epoch=before_epoch
        )
    finally:
        torch.set_num_threads(previous)
    assert len(threads_before) == 2  # not before the first: the stage chose its threads then
    assert all(1 <= n <= available_cores() for n in threads_before)
