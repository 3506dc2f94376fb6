"""Stage "model": build (or train) the model, discover its layers, map its classes.

Writes the manifest's ``model``, ``layers``, ``class_mapping`` and ``explanation_size``, and for
a model LayerScope trained the run's own copy of its weights (``model_checkpoint``).

Two ways to train. The embedded default, ``smallcnn`` without training settings, trains once per
dataset on every sample of it (``train_or_load_smallcnn``) into a checkpoint shared by every run
(``data/models/``). A run with training settings (``PrecomputeConfig.training``), or of a preset,
trains its model on the run's own samples (``--samples`` included; held out: ``training_split``)
with ``pipelines.training.train_model``, writing ``training_curves`` at every point. Training is
not resumable: a killed run trains again from the start when its command is run again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines import reduce, report
from pipelines.datasets import Dataset
from pipelines.errors import UserError
from pipelines.explain import last_spatial_conv_layer
from pipelines.features import PASS_THROUGH_TYPES, discover_layers, pooled_shape
from pipelines.fingerprint import Fingerprint
from pipelines.labels import map_classes
from pipelines.models import (
    ModelAdapter,
    build_adapter,
    fine_tune_adapter,
    load_inputs,
    model_kind,
    resolve_device,
    train_or_load_smallcnn,
)
from pipelines.presets import preset_input_size
from pipelines.records import LayerSpec, ModelInfo
from pipelines.run_config import PrecomputeConfig, dataset_name, run_training
from pipelines.stages.forward import MAX_EXPLANATION_SIZE
from pipelines.store import RunStore, models_dir
from pipelines.training import TrainingCurves, TrainingSettings, flips_for, train_model
from pipelines.types import LayerId


def smallcnn_checkpoint(data_dir: Path, dataset: Dataset, seed: int, content: Fingerprint) -> Path:
    """One trained smallcnn per dataset (and seed), reused by every run on that dataset. A
    folder's key includes its content, so a model is never reused on a folder that changed."""
    identity = dataset.spec if content.kind == "samples" else f"{dataset.spec}@{content.digest}"
    key = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return models_dir(data_dir) / f"smallcnn-{dataset.name}-{key}-seed{seed}.pt"


def training_split(dataset: Dataset, seed: int) -> np.ndarray:
    """Held-out rows: the dataset's own val/test split, else a seeded 20%."""
    splits = np.array([record.split for record in dataset.samples])
    held_out = np.isin(splits, ["val", "test"])
    if held_out.any() and not held_out.all():
        return held_out
    rng = np.random.default_rng(seed)
    return rng.random(len(splits)) < 0.2


def run_rows(dataset: Dataset, seed: int, samples: int | None) -> np.ndarray:
    """(n,) int64: the dataset rows of the run's samples, in the sample table's order."""
    labels = np.array([record.label for record in dataset.samples], dtype=np.int64)
    return reduce.nested_subset_order(labels, seed)[: samples or len(labels)]


def build_model(
    config: PrecomputeConfig,
    dataset: Dataset,
    data_dir: Path,
    progress: bool,
    content: Fingerprint,
    on_point: Callable[[TrainingCurves], None] | None = None,
    before_epoch: Callable[[], None] | None = None,
) -> tuple[ModelAdapter, dict[str, Any]]:
    """The run's model, and what to record about how it was made (its training).
    ``on_point``: called with the curves at every point of a training in the run;
    ``before_epoch``: before each epoch of the smallcnn's first training on a dataset."""
    device = resolve_device(config.device)
    kind = model_kind(config.model)
    input_size = config.input_size
    if kind == "preset" and input_size is None:
        input_size = preset_input_size(min(dataset.load_image(0).size))
    adapter = build_adapter(
        config.model,
        device,
        # A model the run trains in full starts from seeded random weights; a classifier alone
        # is trained over torchvision's ImageNet weights unless --weights says otherwise.
        weights=config.weights,
        # Seeded so random-weight models can be rebuilt identically by the dashboard.
        seed=config.seed,
        input_size=input_size,
        smallcnn=(dataset.native_channels, dataset.class_names),
        progress=progress,
    )
    training = run_training(config)
    if training is not None:
        info = train_in_run(adapter, dataset, config, training, progress, on_point)
        return adapter, info
    if kind != "smallcnn":
        return adapter, {}

    def training_inputs() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        _, inputs = load_inputs(
            adapter, dataset, range(len(dataset.samples)), progress, "load training images"
        )
        labels = torch.tensor([r.label for r in dataset.samples], device=device)
        return inputs, labels, training_split(dataset, config.seed)

    checkpoint = smallcnn_checkpoint(data_dir, dataset, config.seed, content)
    info = train_or_load_smallcnn(
        adapter, checkpoint, training_inputs, config.seed, progress, before_epoch
    )
    return adapter, info


def train_in_run(
    adapter: ModelAdapter,
    dataset: Dataset,
    config: PrecomputeConfig,
    settings: TrainingSettings,
    progress: bool,
    on_point: Callable[[TrainingCurves], None] | None,
) -> dict[str, Any]:
    """Train the adapter's model on the run's samples (a torchvision model first gets a new
    last layer for the dataset's classes); what the manifest records about it."""
    info: dict[str, Any] = {"trained": True}
    if model_kind(config.model) == "torchvision":
        info["replaced_head"] = fine_tune_adapter(
            adapter, dataset.class_names, settings.fine_tune or "classifier", config.seed
        )
    rows = run_rows(dataset, config.seed, config.samples)
    _, inputs = load_inputs(adapter, dataset, rows, progress, "load training images")
    labels = torch.tensor([dataset.samples[i].label for i in rows], device=adapter.device)
    is_test = training_split(dataset, config.seed)[rows]
    curves = train_model(
        adapter.module,
        inputs,
        labels,
        is_test,
        settings,
        on_point,
        flip=flips_for(dataset_name(config.dataset)),
    )
    adapter.module.requires_grad_(True)  # explanations need gradients through every layer
    adapter.module.eval()
    best = curves.best_held_out_accuracy()
    info["training"] = {
        "epochs": len(curves.epoch_points()),
        "state": curves.state,
        "best_epoch": curves.best_epoch,
        "best_held_out_accuracy": best,
        "train_samples": curves.train_samples,
        "held_out_samples": curves.held_out_samples,
        "seconds": curves.points[-1].seconds if curves.points else 0.0,
    }
    return info


def describe_layers(adapter: ModelAdapter, example: torch.Tensor) -> list[LayerSpec]:
    """The manifest's layer list, or a UserError when the model cannot take the data."""
    try:
        layers = discover_layers(adapter.module, example)
        with torch.no_grad():
            logits = adapter.module(example)
    except Exception as exc:  # noqa: BLE001 - any failure here means the model does not fit
        raise UserError(
            f"model {adapter.spec} failed on an input of shape {tuple(example.shape)}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "check it takes this many channels and pass --input-size if it needs another size"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError(
            f"model {adapter.spec} returned {type(logits).__name__} of shape "
            f"{tuple(getattr(logits, 'shape', ()))}; a classifier must return (batch, classes) logits"
        )
    adapter.decode(logits)  # a model file's own decode fails here, before any other work
    num_outputs = logits.shape[1]
    if not adapter.class_names:
        adapter.class_names = [f"class {i}" for i in range(num_outputs)]
    if len(adapter.class_names) != num_outputs:
        raise UserError(
            f"model {adapter.spec} has {num_outputs} outputs but {len(adapter.class_names)} "
            "class names; make class_names match the model's last layer"
        )
    described: dict[LayerId, LayerSpec] = {}
    for layer in layers:
        passes = layer.type in PASS_THROUGH_TYPES and len(layer.parents) == 1
        parent = described.get(layer.parents[0]) if passes else None
        # Reshape-only layers hold the same values as their parent: reuse its embedding.
        described[layer.id] = replace(
            layer,
            pooled_shape=pooled_shape(layer.output_shape),
            same_as=(parent.same_as or parent.id) if parent else None,
        )
    return list(described.values())


def gradcam_layer_or_none(layers: list[LayerSpec]) -> str | None:
    try:
        return last_spatial_conv_layer(layers)
    except UserError as exc:
        report.warn(f"{exc}; explanations are skipped for this model")
        return None


def run(
    store: RunStore, dataset: Dataset, adapter: ModelAdapter, model_info: dict[str, Any]
) -> None:
    """Describe the built model into the manifest (its layers found on the dataset's first
    image: layer shapes depend on the input size, never on the picture)."""
    if "checkpoint" in model_info or model_info.get("trained"):
        # The run keeps its own copy so it stays viewable if data/models is cleaned.
        store.save_state_dict("model_checkpoint", adapter.module.state_dict())
    example = adapter.preprocess([dataset.load_image(0)])
    layers = describe_layers(adapter, example)
    mapping = map_classes(
        dataset.class_names, dataset.class_wnids, adapter.class_names, adapter.is_imagenet
    )
    if mapping.warning:
        report.warn(mapping.warning)
    described = {**adapter.describe(), **model_info, "gradcam_layer": gradcam_layer_or_none(layers)}
    store.write_record(
        replace(
            store.read_record(),
            model=ModelInfo.from_json(described),
            class_mapping=mapping,
            layers=tuple(layers),
            explanation_size=min(adapter.input_size, MAX_EXPLANATION_SIZE),
        )
    )


def outdated(store: RunStore) -> bool:
    """True if the manifest says this stage is done but lacks what it writes: an older
    precompute recorded the stage done before describing the model, and could be killed in
    between. The stage is then simply run again."""
    record = store.read_record()
    if record.model is None or not record.layers or record.class_mapping is None:
        return True
    return record.model.trained_here and not store.has("model_checkpoint")
