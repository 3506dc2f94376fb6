"""What defines a run, its name, and the checks on both: the one place for run naming and
validation (the CLI, the embedded default and the benchmarks all build a ``PrecomputeConfig``)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, STORED_METHODS
from pipelines.models import check_weights_option, model_kind
from pipelines.records import RunSettings
from pipelines.training import TrainingSettings, default_settings, training_flags

DEFAULT_PERPLEXITIES = (10.0, 30.0, 90.0)
RUN_ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"


@dataclass(frozen=True)
class PrecomputeConfig:
    """Everything that defines a run. ``device`` and ``batch_size`` are not part of its identity
    (a run may resume on another device). ``batch_size`` changes speed, and results only by float
    rounding. ``device`` changes results within a measured bound, not their quality: on CUDA the
    forward pass may run in bfloat16 (within ``pipelines.precision``'s ``BF16_*`` bounds) and the t-SNE maps come from
    the torch backend, whose coordinates differ from openTSNE's at the same neighbourhood quality
    (measured in ``pipelines/tsne.py``); each layer's ``reduction`` record names its
    ``tsne_backend``.

    ``explain`` names the explanation methods stored for every sample (fast ones only; None:
    the run's own list when it exists, else ``STORED_METHODS``). It is left out of
    ``identity`` and checked on its own (``Precompute.check_same_settings``), so runs made
    before it was recorded still resume, and a mismatch gets a message of its own."""

    dataset: str
    model: str
    weights: str | None = None
    samples: int | None = None
    subsets: tuple[str, ...] = ("100", "1000", "all")
    # None: the defaults, of which those the data is too small for are dropped with a warning;
    # explicit values the data cannot support are an error.
    perplexities: tuple[float, ...] | None = None
    device: str = "auto"
    batch_size: int = 64
    seed: int = 0
    input_size: int | None = None
    explain: tuple[str, ...] | None = None
    # The quality stage's settings (None: its defaults). Like ``explain`` they are left out of
    # ``identity``, so runs made before the stage existed still resume (and get it), and are
    # checked on their own against what a finished quality stage used.
    folds: int | None = None
    quality_layer: str | None = None
    # How the run trains its model (None: today's behaviour: smallcnn from the shared cache,
    # a preset with its defaults, anything else as built). Part of ``identity`` only when set,
    # so runs made before training settings existed keep their identity and still resume.
    training: TrainingSettings | None = None

    def identity(self) -> dict[str, Any]:
        fields = asdict(self)
        for other in ("device", "batch_size", "explain", "folds", "quality_layer", "training"):
            fields.pop(other)
        if self.training is not None:
            fields["training"] = self.training.to_json()
        fields["subsets"] = list(self.subsets)
        fields["perplexities"] = list(self.perplexities or DEFAULT_PERPLEXITIES)
        return fields

    def check(self) -> None:
        """Options that make no sense, refused before anything is read or written."""
        if self.batch_size <= 0:
            raise UserError("--batch-size must be a positive number")
        if self.samples is not None and self.samples <= 0:
            raise UserError(
                "--samples must be a positive number of images (or leave it out for all)"
            )
        model_kind(self.model)  # unknown model names fail here
        check_weights_option(self.model, self.weights)
        if not 0 <= self.seed < 2**32:
            # numpy's and scikit-learn's seeds are unsigned 32-bit numbers
            raise UserError(f"--seed {self.seed} is out of range; use a whole number 0..4294967295")
        if self.input_size is not None and self.input_size <= 0:
            raise UserError(
                f"--input-size {self.input_size} is not a size; give the model's input side in "
                "pixels, e.g. --input-size 224"
            )
        if self.explain is not None:
            check_stored_methods(self.explain)
        check_folds(self.model, self.folds)
        check_training(self.model, self.training)


def dataset_name(spec: str) -> str:
    """A dataset spec's name for per-dataset defaults: "digits", "cifar10", "folder"."""
    return spec.split(":", 1)[0]


def check_training(model: str, training: TrainingSettings | None) -> None:
    """Training settings fit the model: only models LayerScope can train take them, and
    ``--fine-tune`` only torchvision ones (the others are trained whole, from scratch)."""
    if training is None:
        return
    training.check()
    kind = model_kind(model)
    if kind in ("torchscript", "python"):
        raise UserError(
            f"{model} cannot be trained here (its weights are the file's); train smallcnn, a "
            "preset (mlp, vgg-small, resnet-small) or a torchvision model, or drop the training "
            "options"
        )
    if training.fine_tune is not None and kind != "torchvision":
        raise UserError(
            f"--fine-tune is for torchvision models; {model} is trained whole, from scratch: "
            "drop --fine-tune"
        )


def training_settings(
    dataset: str, model: str, seed: int, given: Mapping[str, Any], trains: bool
) -> TrainingSettings | None:
    """The run's ``PrecomputeConfig.training`` from the training options the user ``given``
    (flag name -> value, None for those left out). ``trains``: the command asks for training
    (``main.py train``) even with no option given.

    None (today's behaviour) when nothing asks for training, and when the settings are a
    preset's defaults (a preset always trains with them), so `train --model mlp` and
    `precompute --model mlp` are the same run. A torchvision model's ``fine_tune`` defaults to
    "classifier"; ``given`` may name it to ask for fine-tuning from `precompute`.
    """
    chosen = {key: value for key, value in given.items() if value is not None}
    if not chosen and not trains:
        return None
    kind = model_kind(model)
    defaults = default_settings(dataset_name(dataset), kind, seed)
    try:
        settings = TrainingSettings(**{**defaults.to_json(), **chosen})
    except TypeError as exc:  # a caller's misspelt key, not the user's
        raise ValueError(f"unknown training setting: {exc}") from None
    if kind == "preset" and settings == defaults:
        return None
    return settings


def run_training(config: PrecomputeConfig) -> TrainingSettings | None:
    """How the run's model is trained: its settings, a preset's defaults, or None (built, or
    smallcnn's shared cached model)."""
    kind = model_kind(config.model)
    if config.training is not None:
        if kind == "torchvision" and config.training.fine_tune is None:
            return replace(config.training, fine_tune="classifier")
        return config.training
    if kind == "preset":
        return default_settings(dataset_name(config.dataset), kind, config.seed)
    return None


def check_folds(model: str, folds: int | None) -> None:
    """``--folds``: 0 (the model's own probabilities) or k >= 2 fold models, and fold models
    only for the model LayerScope trains."""
    if folds is None:
        return
    if folds < 0 or folds == 1:
        raise UserError(
            f"--folds {folds} is not a number of folds; pass 2 or more to train that many fold "
            "models, or 0 to rank labels with the model's own probabilities"
        )
    if folds >= 2 and model_kind(model) != "smallcnn":
        raise UserError(
            f"--folds {folds} trains fold models, which only smallcnn can have (they are trained "
            f"with its recipe); {model} is ranked with its own probabilities: leave out --folds "
            "or pass --folds 0"
        )


def fast_methods() -> list[str]:
    """The registered methods cheap enough to store for every sample."""
    return [name for name, explainer in EXPLAINERS.items() if not explainer.slow]


def check_stored_methods(names: Sequence[str]) -> None:
    """A UserError unless ``names`` is a non-empty list of registered, fast methods."""
    fast = ", ".join(fast_methods())
    if not names:
        raise UserError(f"--explain needs at least one method; choose from {fast}")
    for name in names:
        explainer = EXPLAINERS.get(name)
        if explainer is None:
            raise UserError(
                f"unknown explanation method {name!r} for --explain; choose from {fast} (a "
                "plugin's methods need --plugins DIR)"
            )
        if explainer.slow:
            raise UserError(
                f"{name} is slow (many passes per image), so it is not precomputed: slow methods "
                f"run on demand in the page; --explain takes the fast ones: {fast}"
            )


def stored_methods(settings: RunSettings) -> tuple[str, ...]:
    """The explanation methods a run stores for every sample; runs made before the list was
    recorded store ``STORED_METHODS``."""
    return settings.explain if settings.explain is not None else STORED_METHODS


def default_run_id(config: PrecomputeConfig) -> str:
    """Deterministic, so re-running the same command resumes the same run."""
    dataset = config.dataset
    if ":" in dataset:
        kind, path = dataset.split(":", 1)
        dataset = f"{kind}-{Path(path).name or 'root'}"
    model = config.model
    if ":" in model:
        model = Path(model.split(":", 1)[1]).stem
    parts = [dataset, model]
    if config.weights and config.weights != "imagenet":
        parts.append(Path(config.weights).stem)
    if config.samples:
        parts.append(str(config.samples))
    if config.seed:
        parts.append(f"seed{config.seed}")
    if config.training is not None:
        # Apart from the plain run of the same data and model; a digest of the settings when
        # they are not the model's defaults, so each set of settings gets a run of its own.
        parts.append("trained")
        defaults = default_settings(
            dataset_name(config.dataset), model_kind(config.model), config.seed
        )
        if replace(config.training, fine_tune=None) != replace(defaults, fine_tune=None):
            text = json.dumps(config.training.to_json(), sort_keys=True)
            parts.append(hashlib.sha1(text.encode()).hexdigest()[:6])
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", "-".join(parts)).strip("-.")


def validate_run_id(run_id: str) -> str:
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise UserError(f"--run-id {run_id!r} may only use letters, digits, '.', '_' and '-'")
    return run_id


def run_id_for(config: PrecomputeConfig, run_id: str | None) -> str:
    """The run's folder name: ``run_id`` if given (checked), else derived from the settings."""
    return validate_run_id(run_id or default_run_id(config))


def precompute_command(identity: Mapping[str, Any], run_id: str, data_dir: Path) -> str:
    """The shell command that resumes run ``run_id`` of ``data_dir``, whose settings are
    ``identity`` (``PrecomputeConfig.identity()``, as its manifest records it). Options left at
    their defaults are left out, so the command reads as a person would type it."""
    defaults = PrecomputeConfig(dataset="", model="").identity()
    parts = ["python main.py precompute"]
    for option, key in (("--dataset", "dataset"), ("--model", "model")):
        parts.append(f"{option} {shlex.quote(str(identity.get(key, '')))}")
    for option, key in (
        ("--weights", "weights"),
        ("--samples", "samples"),
        ("--seed", "seed"),
        ("--input-size", "input_size"),
    ):
        value = identity.get(key)
        if value is not None and value != defaults[key]:
            parts.append(f"{option} {shlex.quote(str(value))}")
    subsets = [str(size) for size in identity.get("subsets") or defaults["subsets"]]
    if subsets != defaults["subsets"]:
        parts.append(f"--subsets {shlex.quote(','.join(subsets))}")
    perplexities = [float(p) for p in identity.get("perplexities") or defaults["perplexities"]]
    if perplexities != defaults["perplexities"]:
        parts.append(f"--perplexities {','.join(f'{p:g}' for p in perplexities)}")
    training = identity.get("training")
    if training:
        settings = TrainingSettings.from_json(training)
        model = str(identity.get("model", ""))
        kind = model_kind(model) if model else "smallcnn"
        usual = default_settings(
            dataset_name(str(identity.get("dataset", ""))), kind, settings.seed
        )
        parts.extend(training_flags(settings, usual))
    parts.append(f"--data-dir {shlex.quote(str(data_dir))} --run-id {shlex.quote(run_id)}")
    return " ".join(parts)
