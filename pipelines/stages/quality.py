"""Stage "quality": likely label errors, near-duplicates and outliers (``pipelines/quality.py``).

1. **Out-of-sample probabilities** of each sample's dataset classes. For the smallcnn (``--folds
   K``, 5 by default): its training rows get out-of-fold probabilities from K fold models
   (``pipelines/folds.py``), each fold's saved as it finishes (``quality_fold``), so a resumed
   run trains only the folds it lacks; its held-out rows get the run's model's own, which never
   trained on them. Any other model (or ``--folds 0``): the model's own probabilities, which the
   forward stage stored (``class_probabilities``).
2. **Label issues**: cleanlab on those probabilities (``pipelines/label_issues.py``).
3. **Neighbours**: each sample's ``NEIGHBOURS`` most similar others in one layer's features
   (``pipelines/neighbours.py``), by default the last hidden layer, and the outlier score.

Writes ``quality_probabilities``, then ``quality`` and ``quality_info`` (last: they mark the
results complete), and the manifest's ``quality`` entry (``QualityInfo``), which the page and
``runs`` show. The pooled ``features`` the forward stage captured are deleted once this stage
is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipelines import report
from pipelines.cores import idle_cores
from pipelines.datasets import Dataset
from pipelines.errors import UserError
from pipelines.folds import (
    DEFAULT_FOLDS,
    FOLD_EPOCHS,
    FoldJob,
    FoldResult,
    assign_folds,
    train_folds,
)
from pipelines.label_issues import find_label_issues
from pipelines.labels import class_probabilities
from pipelines.metrics import HELD_OUT, TRAIN
from pipelines.models import ModelAdapter, build_adapter, load_inputs, model_kind, resolve_device
from pipelines.neighbours import nearest_neighbours
from pipelines.quality import QualityInfo, SampleQuality, recorded_info, save_quality
from pipelines.records import LayerSpec, Manifest, RunSettings, StageState
from pipelines.run_config import PrecomputeConfig
from pipelines.smallcnn import TRAINING_EPOCHS, SmallCNN
from pipelines.stages.forward import capture_features, chunk_ranges, recompute_class_probabilities
from pipelines.stages.model import training_split
from pipelines.store import RunStore
from pipelines.types import LayerId

NEIGHBOURS = 10  # K, per sample
# Long enough to average over a few scheduler ticks (as the model stage's training).
FREE_CORES_SAMPLE_SECONDS = 0.2


def folds_for(config: PrecomputeConfig, settings: RunSettings | None = None) -> int:
    """K of the k-fold training: ``--folds``, else what the run was made with (``settings``),
    else 5 for the smallcnn and 0 (the model's own probabilities) for a model trained elsewhere."""
    if config.folds is not None:
        return config.folds
    if settings is not None and settings.folds is not None:
        return settings.folds
    return DEFAULT_FOLDS if model_kind(config.model) == "smallcnn" else 0


def layer_request(config: PrecomputeConfig, settings: RunSettings | None = None) -> str | None:
    """``--quality-layer``, else what the run was made with; None: the default layer."""
    if config.quality_layer is not None:
        return config.quality_layer
    return settings.quality_layer if settings is not None else None


def default_layer(layers: Sequence[LayerSpec]) -> LayerSpec:
    """The last hidden layer: the last layer before the model's output (its last layer in
    execution order), e.g. the smallcnn's ``classifier.2``, resnet's ``avgpool``."""
    return layers[-2] if len(layers) >= 2 else layers[-1]


def quality_layer(layers: Sequence[LayerSpec], requested: str | None) -> LayerSpec:
    """The layer whose features the neighbours are found in: ``--quality-layer`` or the default."""
    if not layers:
        raise ValueError("the model stage has not described the layers yet")
    if requested is None:
        return default_layer(layers)
    for layer in layers:
        if layer.id == requested:
            return layer
    raise UserError(
        f"unknown layer {requested!r} for --quality-layer; its layers are "
        f"{', '.join(layer.id for layer in layers)} (`python main.py runs` lists them)"
    )


def check_settings(manifest: dict[str, Any], config: PrecomputeConfig) -> None:
    """Refuse options that contradict what the run's finished quality stage used (as ``--explain``
    does): the results stay those of the recorded settings."""
    info = recorded_info(manifest)
    if info is None:
        return
    if config.folds is not None and config.folds != (info.folds or 0):
        raise UserError(
            f"run '{manifest.get('run_id')}' ranked its labels with --folds {info.folds or 0}, "
            f"not {config.folds}; leave out --folds to resume or open it, or pass a new "
            "--run-id to rank them another way"
        )
    if config.quality_layer is not None and config.quality_layer != info.layer:
        raise UserError(
            f"run '{manifest.get('run_id')}' found its neighbours in layer {info.layer}, not "
            f"{config.quality_layer}; leave out --quality-layer to resume or open it, or pass a "
            "new --run-id to use another layer"
        )


# ---- 1. out-of-sample probabilities -----------------------------------------------------------


def model_probabilities(
    store: RunStore,
    dataset: Dataset,
    model: Callable[[], ModelAdapter],
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    """(N, C) float32: the run's model's probability of each dataset class, by sample row."""
    if not store.has("class_probabilities"):  # a forward stage finished before they were kept
        recompute_class_probabilities(store, dataset, model(), batch_size, progress)
    return store.load_array("class_probabilities", mmap=False)


def fold_probabilities(
    store: RunStore,
    dataset: Dataset,
    config: PrecomputeConfig,
    folds: int,
    progress: bool,
    on_fold: Callable[[int], None],
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Each fold's ``{"rows": (m,) int64 sample rows, "probabilities": (m, C) float32}``: the
    run's training rows of that fold, predicted by a smallcnn trained on the dataset's other
    training samples; and how many folds were read from disk. Folds already on disk (a resumed
    run's) are read; the rest are trained (in parallel) and saved one by one; ``on_fold`` is
    called with the count of folds done after each."""
    record = store.read_record()
    dataset_to_model = list(store.read_record().require_class_mapping().dataset_to_model)
    trained = ~training_split(dataset, config.seed)  # what the run's model was fitted on
    labels = np.array([sample.label for sample in dataset.samples], dtype=np.int64)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    fold_of[trained] = assign_folds(labels[trained], folds, config.seed)
    dataset_index = np.array(store.load_json("samples")["dataset_index"], dtype=np.int64)
    row_fold = fold_of[dataset_index]
    key = {"folds": folds, "epochs": FOLD_EPOCHS}
    pending = [f for f in range(folds) if not store.has("quality_fold", fold=f, **key)]
    done = from_disk = folds - len(pending)
    num_classes = len(dataset_to_model)

    def save(fold: int, probabilities: np.ndarray) -> None:
        nonlocal done
        rows = np.flatnonzero(row_fold == fold)
        store.save_arrays(
            "quality_fold", {"rows": rows, "probabilities": probabilities}, fold=fold, **key
        )
        done += 1
        on_fold(done)

    for fold in [f for f in pending if not (row_fold == f).any()]:
        # None of the run's rows is in this fold (a small run): no model to train for it.
        save(fold, np.zeros((0, num_classes), dtype=np.float32))
        pending.remove(fold)
    if pending:
        model_info = record.require_model()
        device = resolve_device(config.device)

        def fresh_smallcnn() -> ModelAdapter:
            # The run's model's starting point: the same seeded initial weights.
            return build_adapter(
                "smallcnn",
                device,
                seed=config.seed,
                smallcnn=(model_info.in_channels, list(model_info.class_names)),
            )

        def fresh_module() -> SmallCNN:
            module = fresh_smallcnn().module
            assert isinstance(module, SmallCNN)
            return module

        _, inputs = load_inputs(
            fresh_smallcnn(), dataset, range(len(labels)), progress, "load training images"
        )
        jobs = [
            FoldJob(
                fold=f,
                module=fresh_module(),
                is_test=~trained | (fold_of == f),
                predict=dataset_index[row_fold == f],
            )
            for f in pending
        ]

        def finished(result: FoldResult) -> None:
            save(result.fold, class_probabilities(result.log_prob, dataset_to_model))

        # One core each; in parallel on the idle ones (one at a time on a GPU).
        workers = idle_cores(FREE_CORES_SAMPLE_SECONDS) if device.type == "cpu" else 1
        train_folds(
            jobs,
            inputs,
            torch.as_tensor(labels, device=device),
            config.seed,
            FOLD_EPOCHS,
            min(workers, len(jobs)),
            finished,
        )
    return [store.load_arrays("quality_fold", fold=f, **key) for f in range(folds)], from_disk


def describe_out_of_fold(folds: int, train_rows: int, held_out_rows: int) -> str:
    """QualityInfo.probabilities for k-fold probabilities, in words for the page."""
    text = (
        f"out-of-fold: each of the {train_rows:,} training samples predicted by one of {folds} "
        f"smallcnn models trained without its fold ({FOLD_EPOCHS} epochs each; the run's model "
        f"had {TRAINING_EPOCHS})"
    )
    if held_out_rows:
        text += f"; the {held_out_rows:,} held-out samples by the run's model, which never trained on them"
    return text


def describe_own(trained_here: bool, train_rows: int) -> str:
    """QualityInfo.probabilities for a model's own probabilities (``trained_here``: a model
    LayerScope trained, on the run's training rows)."""
    if trained_here and train_rows:
        return (
            "the run's model's own probabilities (--folds 0): in-sample for the "
            f"{train_rows:,} samples it trained on, so their label errors rank too low"
        )
    if trained_here:
        return "the run's model's own probabilities, on samples it never trained on"
    return (
        "the model's own probabilities (it was trained elsewhere: out-of-sample unless these "
        "images were in its training set)"
    )


# ---- 3. neighbours ------------------------------------------------------------------------------


def layer_features(
    store: RunStore,
    dataset: Dataset,
    model: Callable[[], ModelAdapter],
    layer: LayerSpec,
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    """(N, D) float16: the layer's pooled features from the forward stage, by sample row.

    The full pooled features, not the embeddings stage's ``pca_scores``: PCA to 90% of the
    variance keeps 7 of the last hidden layer's 128 values on digits + smallcnn, and in those 7
    most samples look alike (1,255 of 1,797 have a neighbour above 0.98 there, 717 in the
    centred features). Runs whose features were deleted get them captured again."""
    source: LayerId = layer.same_as or layer.id  # a reshape-only layer holds its parent's values
    num_chunks = len(chunk_ranges(store.read_record().require_dataset().num_samples))
    if not all(store.has("features", layer=source, chunk=i) for i in range(num_chunks)):
        capture_features(store, dataset, model(), [source], batch_size, progress)
    return np.concatenate(
        [store.load_array("features", layer=source, chunk=i) for i in range(num_chunks)]
    )


# ---- the stage ------------------------------------------------------------------------------------


def run(
    store: RunStore,
    dataset: Dataset,
    config: PrecomputeConfig,
    model: Callable[[], ModelAdapter],
    progress: bool,
) -> None:
    """The stage's missing work, then its results. ``model``: the run's model, built on first
    call (only a run computed before this stage existed needs it)."""
    record: Manifest = store.read_record()
    started = time.perf_counter() - (record.stage("quality").seconds or 0.0)
    samples = store.load_json("samples")
    labels = np.array(samples["label"], dtype=np.int64)
    split = np.array(samples["model_split"])
    settings = record.require_config()
    folds = folds_for(config, settings)
    layer = quality_layer(record.layers, layer_request(config, settings))
    total = folds + 1  # the folds, then the neighbours and the ranking
    store.update_stage("quality", state="running", done=0, total=total)

    probabilities = model_probabilities(store, dataset, model, config.batch_size, progress)
    # Trained by LayerScope (smallcnn, a preset, a fine-tuned model): its training rows are known.
    trained_here = record.require_model().trained_here
    train_rows, held_out_rows = int((split == TRAIN).sum()), int((split == HELD_OUT).sum())
    fold_started = time.perf_counter()
    if folds:
        bar = tqdm(
            total=folds,
            desc=f"label issues: {folds} fold models",
            unit="fold",
            disable=not progress,
        )

        def fold_done(done: int) -> None:
            bar.update(done - bar.n)
            store.update_stage("quality", state="running", done=done, total=total)

        try:
            parts, from_disk = fold_probabilities(
                store, dataset, config, folds, progress, fold_done
            )
            for part in parts:
                probabilities[part["rows"]] = part["probabilities"]
        finally:
            bar.close()  # also on Ctrl-C: no bar redrawn after the "interrupted" line
        description = describe_out_of_fold(folds, train_rows, held_out_rows)
    else:
        description, from_disk = describe_own(trained_here, train_rows), 0
    fold_seconds = time.perf_counter() - fold_started

    neighbour_started = time.perf_counter()
    features = layer_features(store, dataset, model, layer, config.batch_size, progress)
    with tqdm(
        total=len(features), desc=f"neighbours in {layer.id}", unit="img", disable=not progress
    ) as bar:
        found = nearest_neighbours(features, NEIGHBOURS, progress=bar.update)
    neighbour_seconds = time.perf_counter() - neighbour_started

    rank_started = time.perf_counter()
    issues = find_label_issues(labels, probabilities)
    warn_unranked(record, issues.few, probabilities, labels)
    rank_seconds = time.perf_counter() - rank_started

    info = QualityInfo(
        probabilities=description,
        probabilities_kind="out-of-fold" if folds else "model",
        folds=folds or None,
        layer=layer.id,
        neighbour_index=found.index,
        neighbours=found.neighbours.shape[1],
        label_issues=int(issues.is_issue.sum()),
        fold_epochs=FOLD_EPOCHS if folds else None,
    )
    store.save_array("quality_probabilities", probabilities)
    save_quality(
        store,
        SampleQuality(
            label_issue_score=issues.score,
            is_label_issue=issues.is_issue,
            suggested_label=issues.suggested,
            neighbours=found.neighbours,
            similarities=found.similarities,
            outlier_score=found.outlier_score,
            info=info,
        ),
    )
    # Typed, like every other stage's write: the stage's own timings ride in its record's raw
    # JSON, the QualityInfo in the manifest's (the page and `runs` read it with recorded_info).
    record = store.read_record()
    previous = record.stage("quality")
    stage = StageState(
        state="done",
        done=total,
        total=total,
        seconds=round(time.perf_counter() - started, 3),
        raw={
            **previous.raw,
            # This process's share: a resumed run read ``folds_from_disk`` folds an earlier one made.
            "fold_seconds": round(fold_seconds, 3),
            "folds_from_disk": from_disk,
            "neighbour_seconds": round(neighbour_seconds, 3),
            "rank_seconds": round(rank_seconds, 3),
        },
    )
    store.write_record(
        replace(
            record,
            stages={**record.stages, "quality": stage},
            raw={**record.raw, "quality": info.to_json()},
        )
    )
    # Intermediate files: the folds are in quality_probabilities, and this was the last stage to
    # read the pooled features.
    store.delete_kind("quality_fold")
    store.delete_kind("features")


def warn_unranked(
    record: Manifest, few: Sequence[int], probabilities: np.ndarray, labels: np.ndarray
) -> None:
    """Say which samples cleanlab could not judge, and why."""
    names = record.require_dataset().class_names
    covered = np.isfinite(probabilities).all(axis=0)
    if covered.sum() < 2:
        report.warn(
            "label issues are not ranked: the model's outputs match fewer than two of the "
            "dataset's classes"
        )
        return
    uncovered = sorted({int(label) for label in labels if not covered[label]})
    if uncovered:
        report.warn(
            f"{len(uncovered)} classes have no matching model output "
            f"(e.g. {', '.join(names[c] for c in uncovered[:3])}); their samples get no "
            "label-issue score"
        )
    if few:
        report.warn(
            f"cleanlab cannot judge the labels of classes with fewer than two samples "
            f"({', '.join(names[c] for c in few[:3])}{', ...' if len(few) > 3 else ''}); "
            "use more --samples"
        )
