"""The new-run form -> the job's command line (dashboard/new_run.py): the command names the run
the form names, exactly as the shell derives it, and what the browser sends is checked."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli import build_parser, config_from_args
from dashboard.new_run import plan_new_run
from pipelines.archives import import_dataset_zip
from pipelines.errors import UserError
from pipelines.job_queue import check_argv
from pipelines.model_uploads import import_torchscript
from pipelines.run_config import run_id_for
from pipelines.store import RunStore, runs_dir

FORM = {
    "dataset_source": "builtin",
    "dataset": "digits",
    "model_source": "preset",
    "model": "mlp",
    "epochs": 3,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.01,
    "weight_decay": 0,
    "augment": False,
    "seed": 4,
    "early_stopping": 2,
    "samples": 200,
    "subsets": "100,all",
    "perplexities": "10",
    "device": "cpu",
}


def shell_config(argv: tuple[str, ...], data_dir: Path):
    """The PrecomputeConfig `main.py` builds from the job's command line."""
    args = build_parser().parse_args([*argv, "--data-dir", str(data_dir)])
    return config_from_args(args, trains=args.command == "train")


def test_the_form_becomes_the_train_command_the_shell_would_run(tmp_path):
    plan = plan_new_run(FORM, tmp_path, ())
    assert plan.trains and plan.argv[0] == "train" and "--then-precompute" in plan.argv
    assert "--maps-first" in plan.argv  # the page shows the run's maps before its explanations
    assert check_argv(plan.argv) == plan.argv  # a command the job queue accepts
    config = shell_config(plan.argv, tmp_path)
    training = config.training
    assert training is not None
    assert (training.epochs, training.batch_size, training.optimizer) == (3, 64, "sgd")
    assert (training.lr, training.early_stopping, config.seed) == (0.01, 2, 4)
    assert (config.samples, config.subsets, config.perplexities) == (200, ("100", "all"), (10.0,))
    assert plan.run_id == plan.argv[plan.argv.index("--run-id") + 1]
    assert plan.run_id == run_id_for(config, None)  # what `main.py train` names it by itself
    assert plan.title == "train + precompute: digits × mlp"


def test_a_preset_with_its_defaults_names_the_same_run_as_precompute(tmp_path):
    defaults = {key: FORM[key] for key in ("dataset_source", "dataset", "model_source", "model")}
    plan = plan_new_run({**defaults, "model": "vgg-small"}, tmp_path, ())
    assert shell_config(plan.argv, tmp_path).training is None
    assert plan.run_id == "digits-vgg-small"


def test_an_existing_run_name_is_never_reused(tmp_path):
    first = plan_new_run(FORM, tmp_path, ())
    store = RunStore(runs_dir(tmp_path) / first.run_id)
    store.run_dir.mkdir(parents=True)
    store.write_manifest({"run_id": first.run_id, "stages": {}})
    again = plan_new_run(FORM, tmp_path, ())
    assert again.run_id == f"{first.run_id}-2"
    with pytest.raises(UserError, match="exists already; choose another name"):
        plan_new_run({**FORM, "run_name": first.run_id}, tmp_path, ())
    named = plan_new_run({**FORM, "run_name": "lesson-3"}, tmp_path, ())
    assert named.run_id == "lesson-3"
    # A run a queued job will make is taken too: two tabs starting the same form get two runs.
    queued = frozenset({again.run_id, "lesson-3"})
    assert plan_new_run(FORM, tmp_path, (), queued).run_id == f"{first.run_id}-3"
    with pytest.raises(UserError, match="exists already"):
        plan_new_run({**FORM, "run_name": "lesson-3"}, tmp_path, (), queued)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be a whole number 1..500"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"lr": "fast"}, "learning rate must be a number above 0"),
        ({"lr": 0}, "learning rate must be a number above 0"),
        ({"weight_decay": -1}, "weight decay must be a number 0 or more"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"early_stopping": 0}, "early stopping must be a whole number 1 or more"),
        ({"samples": 1}, "samples must be a whole number 2 or more"),
        ({"subsets": ""}, None),  # empty: the defaults
        ({"perplexities": "ten"}, "perplexities must be a number above 0"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"run_name": "../escape"}, "may only use letters"),
        ({"dataset": "imagenet21k"}, "unknown dataset 'imagenet21k'"),
        ({"model": "resnet9000"}, "unknown preset 'resnet9000'"),
        ({"model_source": "torchvision", "model": "os.system"}, "not a torchvision"),
        ({"model_source": "python", "model": "python:evil.py"}, "unknown model source"),
        ({"dataset_source": "folder", "dataset": "/etc"}, "started without --allow-folder"),
    ],
)
def test_bad_fields_are_refused_before_anything_is_queued(tmp_path, change, message):
    if message is None:
        plan_new_run({**FORM, **change}, tmp_path, ())
        return
    with pytest.raises(UserError, match=message):
        plan_new_run({**FORM, **change}, tmp_path, ())


def test_uploads_are_used_only_from_where_the_server_stored_them(tmp_path):
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("cat", "dog"):
            for i in range(5):
                image = Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8))
                path = tmp_path / f"{name}{i}.png"
                image.save(path)
                zipped.write(path, f"{name}/{i}.png")
    data_dir = tmp_path / "data"
    imported = import_dataset_zip(archive, data_dir, "pets")
    scripted = torch.jit.script(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    )
    model_file = tmp_path / "model.pt"
    scripted.save(str(model_file))
    model = import_torchscript(model_file, data_dir, "tiny")
    form = {
        **FORM,
        "dataset_source": "upload",
        "dataset": imported.spec,
        "model_source": "upload",
        "model": model.spec,
    }
    plan = plan_new_run(form, data_dir, ())
    # A TorchScript model is used as it is: a precompute, no training options.
    assert plan.argv[0] == "precompute" and not plan.trains and "--epochs" not in plan.argv
    assert shell_config(plan.argv, data_dir).dataset == imported.spec
    # A path the browser names elsewhere is not an upload, even if it exists.
    with pytest.raises(UserError, match="upload the file again"):
        plan_new_run({**form, "dataset": f"folder:{tmp_path}"}, data_dir, ())
    with pytest.raises(UserError, match="upload the file again"):
        plan_new_run({**form, "model": f"torchscript:{model_file}"}, data_dir, ())
    with pytest.raises(UserError, match="upload the file again"):
        plan_new_run({**form, "dataset": f"{imported.spec}/../../../.."}, data_dir, ())


def test_a_torchvision_model_as_it_is_is_not_trained(tmp_path):
    form = {**FORM, "model_source": "torchvision", "model": "resnet18", "weights": "none"}
    tuned = plan_new_run({**form, "fine_tune": "all"}, tmp_path, ())
    assert tuned.trains and tuned.argv[tuned.argv.index("--fine-tune") + 1] == "all"
    assert shell_config(tuned.argv, tmp_path).training.fine_tune == "all"
    as_is = plan_new_run({**form, "fine_tune": "none"}, tmp_path, ())
    assert as_is.argv[0] == "precompute" and "--fine-tune" not in as_is.argv
