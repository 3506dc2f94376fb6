"""The new-run form's values -> the job that makes the run: a checked ``main.py`` command line.

The page never runs anything itself: it submits a ``main.py train ... --then-precompute`` (or a
``main.py precompute`` for a model that is not trained) to the job queue
(``pipelines/job_queue.py``), which runs exactly what a person would type in a shell. This module
turns the form into that command and refuses what the command would refuse, before anything is
queued, with the same messages. Nothing the browser sends becomes a path unless it resolves
inside a folder the server allows: an uploaded dataset or model (``data/datasets/uploads``,
``data/models/uploads``) or a root the server was started with (``serve --allow-folder``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.allowed_folders import resolve_allowed_folder
from pipelines.datasets import BUILTIN_DATASETS
from pipelines.errors import UserError
from pipelines.models import torchvision_names
from pipelines.run_config import PrecomputeConfig, run_id_for, training_settings
from pipelines.store import RunStore, runs_dir, uploaded_datasets_dir, uploaded_models_dir
from pipelines.training import OPTIMIZERS

PRESETS = ("smallcnn", "mlp", "vgg-small", "resnet-small")
# A few a course would use first; any other torchvision name may be typed into the field.
TORCHVISION_CHOICES = ("resnet18", "resnet50", "vgg16", "mobilenet_v3_small", "efficientnet_b0")
DEVICES = ("auto", "cpu", "cuda")
MAX_EPOCHS = 500


@dataclass(frozen=True)
class NewRunPlan:
    """A checked job: the ``main.py`` arguments (without ``--data-dir``, which the queue adds),
    a title for the jobs list, and the run it writes."""

    argv: tuple[str, ...]
    title: str
    run_id: str
    trains: bool


def dataset_spec(source: str, value: Any, data_dir: Path, roots: Sequence[Path]) -> str:
    """The ``--dataset`` of the form's choice: a built-in name, a folder under an allowed root,
    or an uploaded archive's folder (a ``folder:`` spec the upload route returned)."""
    text = str(value or "").strip()
    if not text:
        raise UserError("choose a dataset: a built-in one, a server folder, or upload a zip")
    if source == "builtin":
        if text not in BUILTIN_DATASETS:
            raise UserError(
                f"unknown dataset {text!r}; choose one of {', '.join(BUILTIN_DATASETS)}"
            )
        return text
    if source == "folder":
        return f"folder:{resolve_allowed_folder(text, roots)}"
    if source == "upload":
        return f"folder:{inside(text.removeprefix('folder:'), uploaded_datasets_dir(data_dir))}"
    raise UserError(f"unknown dataset source {source!r}")


def model_spec(source: str, value: Any, data_dir: Path) -> str:
    """The ``--model`` of the form's choice: a preset, a torchvision name, or an uploaded
    TorchScript file (never a Python file: those load from the shell only)."""
    text = str(value or "").strip()
    if not text:
        raise UserError("choose a model: a preset, a torchvision architecture, or upload one")
    if source == "preset":
        if text not in PRESETS:
            raise UserError(f"unknown preset {text!r}; choose one of {', '.join(PRESETS)}")
        return text
    if source == "torchvision":
        if text not in torchvision_names():
            raise UserError(
                f"{text!r} is not a torchvision classification model; e.g. {', '.join(TORCHVISION_CHOICES)}"
            )
        return text
    if source == "upload":
        path = inside(text.removeprefix("torchscript:"), uploaded_models_dir(data_dir))
        return f"torchscript:{path}"
    raise UserError(f"unknown model source {source!r}")


def inside(text: str, folder: Path) -> Path:
    """``text`` as a path that resolves inside ``folder`` (an upload the server stored), or a
    UserError: the browser can name only what the server itself put there."""
    base = folder.resolve()
    path = Path(text).resolve()
    if not path.is_relative_to(base) or path == base or not path.exists():
        raise UserError("that upload is not on the server (any more); upload the file again")
    return path


def number_of(value: Any) -> float:
    """A form field as a float; NaN when it holds no number: true/false are not numbers, and
    text must be ASCII (``float`` also reads "١٢" or full-width digits)."""
    if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float
        return float("nan")


def whole(value: Any, name: str, low: int, high: int | None = None) -> int:
    """A form field as a whole number in [low, high], or a UserError naming the field."""
    number = number_of(value)
    if not number.is_integer() or number < low or (high is not None and number > high):
        bound = f"{low}..{high}" if high is not None else f"{low} or more"
        raise UserError(f"{name} must be a whole number {bound}, not {value!r}")
    return int(number)


def real(value: Any, name: str, allow_zero: bool) -> float:
    number = number_of(value)
    if (
        not (number == number and abs(number) != float("inf"))
        or number < 0
        or (number == 0 and not allow_zero)
    ):
        least = "0 or more" if allow_zero else "above 0"
        raise UserError(f"{name} must be a number {least}, not {value!r}")
    return number


def optional_whole(value: Any, name: str, low: int) -> int | None:
    return None if value in (None, "") else whole(value, name, low)


def comma_numbers(text: Any, name: str) -> list[str]:
    parts = [part.strip() for part in str(text or "").split(",") if part.strip()]
    if not parts:
        raise UserError(f"{name} needs at least one value, e.g. 10,30,90")
    for part in parts:
        if part != "all":
            real(part, name, allow_zero=False)
    return parts


def training_given(form: Mapping[str, Any], fine_tune: str | None) -> dict[str, Any]:
    """The form's training fields, checked, as ``run_config.training_settings`` takes them (an
    empty field: None, the model's default)."""

    def given(name: str, read: Any) -> Any:
        value = form.get(name)
        return None if value in (None, "") else read(value)

    optimizer = given("optimizer", str)
    if optimizer not in (None, *OPTIMIZERS):
        raise UserError(f"unknown optimizer {optimizer!r}; choose adam or sgd")
    return {
        "epochs": given("epochs", lambda v: whole(v, "epochs", 1, MAX_EPOCHS)),
        "batch_size": given("batch_size", lambda v: whole(v, "batch size", 1, 4096)),
        "optimizer": optimizer,
        "lr": given("lr", lambda v: real(v, "learning rate", allow_zero=False)),
        "weight_decay": given("weight_decay", lambda v: real(v, "weight decay", allow_zero=True)),
        "augment": given("augment", bool),
        "early_stopping": given("early_stopping", lambda v: whole(v, "early stopping", 1)),
        "fine_tune": fine_tune,
    }


def given_argv(given: Mapping[str, Any]) -> list[str]:
    """The training options ``given`` names, as `main.py train` flags."""
    argv: list[str] = []
    for key, value in given.items():
        if value is None:
            continue
        if key == "augment":
            argv.append("--augment" if value else "--no-augment")
        elif key == "batch_size":
            argv += ["--train-batch-size", str(value)]
        else:
            flag = "--" + key.replace("_", "-")
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def trains(model_source: str, fine_tune: Any) -> bool:
    """Presets are trained on the dataset; a torchvision model is fine-tuned unless the form
    asks for it as it is; an uploaded model is used as it is."""
    if model_source == "preset":
        return True
    return model_source == "torchvision" and fine_tune != "none"


def plan_new_run(
    form: Mapping[str, Any],
    data_dir: Path,
    roots: Sequence[Path],
    taken: frozenset[str] = frozenset(),
) -> NewRunPlan:
    """The form's values -> the checked job. ``taken``: run ids that unfinished jobs will write
    (two tabs starting the same settings get two runs). Raises UserError with what to fix."""
    dataset = dataset_spec(form.get("dataset_source", ""), form.get("dataset"), data_dir, roots)
    model_source = str(form.get("model_source", ""))
    model = model_spec(model_source, form.get("model"), data_dir)
    training = trains(model_source, form.get("fine_tune"))
    fine_tune = str(form.get("fine_tune")) if model_source == "torchvision" and training else None
    given = training_given(form, fine_tune) if training else {}
    seed = whole(form.get("seed") or 0, "seed", 0, 2**32 - 1)
    samples = optional_whole(form.get("samples"), "samples", 2)
    subsets = comma_numbers(form.get("subsets") or "100,1000,all", "subsets")
    perplexities = comma_numbers(form.get("perplexities") or "10,30,90", "perplexities")
    device = str(form.get("device") or "auto")
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; choose {', '.join(DEVICES)}")
    weights = str(form.get("weights") or "imagenet") if model_source == "torchvision" else None
    if weights not in (None, "imagenet", "none"):
        raise UserError("weights must be imagenet or none")
    config = PrecomputeConfig(
        dataset=dataset,
        model=model,
        weights=weights,
        samples=samples,
        subsets=tuple(subsets),
        perplexities=tuple(float(p) for p in perplexities),
        device=device,
        seed=seed,
        # Exactly as `main.py train` derives it from the same options.
        training=training_settings(dataset, model, seed, given, trains=True) if training else None,
    )
    config.check()
    run_id = chosen_run_id(form.get("run_name"), config, data_dir, taken)
    argv = ["train" if training else "precompute", "--dataset", dataset, "--model", model]
    argv += ["--run-id", run_id, "--device", device, "--seed", str(seed)]
    argv += ["--subsets", ",".join(subsets), "--perplexities", ",".join(perplexities)]
    # The page that started the run shows its maps before its explanations are stored.
    argv += ["--maps-first"]
    if samples is not None:
        argv += ["--samples", str(samples)]
    if weights is not None:
        argv += ["--weights", weights]
    if training:
        argv += given_argv(given) + ["--then-precompute"]
    verb = "train + precompute" if training else "precompute"
    return NewRunPlan(
        argv=tuple(argv),
        title=f"{verb}: {short(dataset)} × {short(model)}",
        run_id=run_id,
        trains=training,
    )


def short(spec: str) -> str:
    """'folder:/a/b/pets-1a2b' -> 'pets-1a2b'; names stay."""
    return Path(spec.split(":", 1)[1]).name if ":" in spec else spec


def chosen_run_id(
    name: Any, config: PrecomputeConfig, data_dir: Path, taken: frozenset[str] = frozenset()
) -> str:
    """The user's name for the run (which must be new), else one derived from the settings,
    numbered when a run of that name exists already or a queued job will make it: a page never
    resumes someone else's run."""

    def in_use(run_id: str) -> bool:
        return run_id in taken or RunStore(runs_dir(data_dir) / run_id).exists()

    text = str(name or "").strip()
    if text:
        run_id = run_id_for(config, text)
        if in_use(run_id):
            raise UserError(f"a run named {run_id!r} exists already; choose another name")
        return run_id
    base = run_id_for(config, None)
    run_id, number = base, 1
    while in_use(run_id):
        number += 1
        run_id = f"{base}-{number}"
    return run_id
