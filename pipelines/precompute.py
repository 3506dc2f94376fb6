"""The precompute: dataset x model -> a complete, resumable run.

Stages, each recorded in the manifest and skipped when already done:

1. **index**: nested class-balanced sample order, the sample table, subsets and perplexities.
2. **model**: build (or train) the model, discover its layers, map its classes.
3. **forward**: per chunk of samples — thumbnails, one forward pass capturing every layer
   (pooled on the device), top-10 predictions, and Grad-CAM / guided backprop / guided Grad-CAM.
   A chunk's file is written last, so its presence means the whole chunk is on disk.
4. **embeddings**: per layer — PCA to 90% variance, then 2D PCA and t-SNE per subset/perplexity.

Killing the process at any point loses at most the chunk or layer in flight.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipelines import reduce, report
from pipelines.cores import available_cores, idle_cores
from pipelines.datasets import Dataset, open_dataset
from pipelines.errors import UserError
from pipelines.explain import STORED_METHODS, FeatureCapture, explain, last_spatial_conv_layer
from pipelines.features import (
    PASS_THROUGH_TYPES,
    capture_layers,
    discover_layers,
    pool_activations,
    pooled_shape,
)
from pipelines.fingerprint import (
    Fingerprint,
    change_since,
    changed_source_error,
    dataset_fingerprint,
)
from pipelines.labels import UNMAPPED, ClassMapping, map_classes
from pipelines.layer_jobs import LayerJob, LayerWorkers
from pipelines.models import (
    ModelAdapter,
    build_python,
    build_torchscript,
    build_torchvision,
    check_weights_option,
    model_kind,
    resolve_device,
    smallcnn_adapter,
    train_or_load_smallcnn,
)
from pipelines.store import RunStore, runs_dir

THUMBNAIL_SIZE = 64
MAX_EXPLANATION_SIZE = 112
MAX_POOLED_DIMS = 2048
# Long enough to average over a few scheduler ticks; paid once per run, before training.
FREE_CORES_SAMPLE_SECONDS = 0.2
CHUNK_SAMPLES = 512
# bfloat16 keeps float32's range with an 8-bit mantissa, and a GPU's tensor cores run it several
# times faster. The forward stage uses it (on CUDA only: most CPUs run it slower than float32,
# VGG16 took 44.7 s instead of 8.4 s on this project's 2-core VM) where, on the run's first batch,
# it changes results by no more than this, measured against a float32 pass:
BF16_MIN_TOP1_AGREEMENT = 0.99  # share of images whose predicted class stays the same
BF16_MAX_FEATURE_ERROR = 0.05  # relative error of every layer's pooled features (Frobenius)
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
TOP_K = 10
STAGES = ("index", "model", "forward", "embeddings")
DEFAULT_PERPLEXITIES = (10.0, 30.0, 90.0)
# The sample table's ``model_split``: whether the model was fitted on a sample.
TRAIN, HELD_OUT = "train", "held-out"


@dataclass(frozen=True)
class PrecomputeConfig:
    """Everything that defines a run. ``device`` and ``batch_size`` are not part of its identity
    (a run may resume on another device). ``batch_size`` changes speed, and results only by float
    rounding. ``device`` changes results within a measured bound, not their quality: on CUDA the
    forward pass may run in bfloat16 (within the ``BF16_*`` bounds) and the t-SNE maps come from
    the torch backend, whose coordinates differ from openTSNE's at the same neighbourhood quality
    (measured in ``pipelines/tsne.py``); each layer's ``reduction`` record names its
    ``tsne_backend``."""

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

    def identity(self) -> dict[str, Any]:
        fields = asdict(self)
        for speed_only in ("device", "batch_size"):
            fields.pop(speed_only)
        fields["subsets"] = list(self.subsets)
        fields["perplexities"] = list(self.perplexities or DEFAULT_PERPLEXITIES)
        return fields


def use_threads_for(config: PrecomputeConfig, stage: str) -> None:
    """Torch threads for the small built-in CNN on a CPU (other models keep torch's default).

    Training ("model") uses the cores that are free now: 5.0 s on two idle cores against 7.8 s
    on one, but on a busy machine a second OpenMP thread spin-waits for a core and made it 3x
    slower. The forward pass ("forward") always uses one thread: its layers are too small to
    split, and a fixed thread count keeps the features identical from run to run, so a resumed
    run equals an uninterrupted one.
    """
    if config.model != "smallcnn" or resolve_device(config.device).type != "cpu":
        return
    torch.set_num_threads(idle_cores(FREE_CORES_SAMPLE_SECONDS) if stage == "model" else 1)


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
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", "-".join(parts)).strip("-.")


def validate_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", run_id):
        raise UserError(f"--run-id {run_id!r} may only use letters, digits, '.', '_' and '-'")
    return run_id


def check_model_options(config: PrecomputeConfig) -> None:
    """Options that make no sense, refused before anything is written."""
    model_kind(config.model)  # unknown model names fail here
    check_weights_option(config.model, config.weights)
    if not 0 <= config.seed < 2**32:
        # numpy's and scikit-learn's seeds are unsigned 32-bit numbers
        raise UserError(f"--seed {config.seed} is out of range; use a whole number 0..4294967295")
    if config.input_size is not None and config.input_size <= 0:
        raise UserError(
            f"--input-size {config.input_size} is not a size; give the model's input side in "
            "pixels, e.g. --input-size 224"
        )


# ---- stage 1: index -------------------------------------------------------------------------


def build_sample_table(
    dataset: Dataset,
    order: np.ndarray,
    mapping: ClassMapping | None,
    trained_on: np.ndarray | None = None,
) -> dict[str, list]:
    """Columns of the sample index, rows in nested-subset order. ``trained_on``: (len(dataset),)
    bool, the samples the model was fitted on (None: a model trained elsewhere, all held out)."""
    records = [dataset.samples[i] for i in order]
    to_model = mapping.dataset_to_model if mapping else None
    fitted = trained_on[order] if trained_on is not None else np.zeros(len(order), dtype=bool)
    return {
        "uid": [r.uid for r in records],
        "source": [r.source for r in records],
        "dataset_index": [int(i) for i in order],
        "label": [int(r.label) for r in records],
        "label_name": [dataset.class_names[r.label] for r in records],
        "model_label": [int(to_model[r.label]) if to_model else UNMAPPED for r in records],
        "split": [r.split for r in records],
        "model_split": [TRAIN if f else HELD_OUT for f in fitted],
    }


def resolve_perplexities(
    requested: tuple[float, ...] | None, subset_sizes: list[int]
) -> tuple[dict[int, list[float]], str | None]:
    """Perplexities per subset, and a warning when defaults had to be dropped.

    Explicit values (``requested``) must all fit the data (a UserError names --perplexities
    otherwise); the defaults adapt: those too large are dropped, and if none is left the
    largest perplexity the data allows is used.
    """
    if requested is not None:
        return reduce.resolve_perplexities(list(requested), subset_sizes), None
    largest = max(subset_sizes)
    usable = [p for p in DEFAULT_PERPLEXITIES if p <= reduce.largest_perplexity(largest)]
    if not usable and reduce.largest_perplexity(largest) >= 1:
        usable = [float(reduce.largest_perplexity(largest))]
    dropped = [p for p in DEFAULT_PERPLEXITIES if p not in usable]
    if not usable:
        raise UserError(
            f"{largest} samples are too few for t-SNE (it needs perplexity < n/3 and at least "
            "4 samples); use more --samples"
        )
    warning = None
    if dropped:
        warning = (
            f"{largest} samples are too few for the default perplexities "
            f"{', '.join(f'{p:g}' for p in dropped)} (t-SNE needs perplexity < n/3); using "
            f"{', '.join(f'{p:g}' for p in usable)}; pass --perplexities to choose"
        )
    return reduce.resolve_perplexities(usable, subset_sizes), warning


# ---- stage 2: model -------------------------------------------------------------------------


def smallcnn_checkpoint(data_dir: Path, dataset: Dataset, seed: int, content: Fingerprint) -> Path:
    """One trained smallcnn per dataset (and seed), reused by every run on that dataset. A
    folder's key includes its content, so a model is never reused on a folder that changed."""
    identity = dataset.spec if content.kind == "samples" else f"{dataset.spec}@{content.digest}"
    key = hashlib.sha1(identity.encode()).hexdigest()[:8]
    return Path(data_dir) / "models" / f"smallcnn-{dataset.name}-{key}-seed{seed}.pt"


def training_split(dataset: Dataset, seed: int) -> np.ndarray:
    """Held-out rows: the dataset's own val/test split, else a seeded 20%."""
    splits = np.array([record.split for record in dataset.samples])
    held_out = np.isin(splits, ["val", "test"])
    if held_out.any() and not held_out.all():
        return held_out
    rng = np.random.default_rng(seed)
    return rng.random(len(splits)) < 0.2


def build_adapter(
    config: PrecomputeConfig,
    dataset: Dataset,
    data_dir: Path,
    progress: bool,
    content: Fingerprint,
) -> tuple[ModelAdapter, dict[str, Any]]:
    device = resolve_device(config.device)
    kind = model_kind(config.model)
    if kind == "smallcnn":
        adapter = smallcnn_adapter(
            dataset.native_channels, dataset.class_names, device, config.seed
        )

        def load_inputs() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
            images = load_views(
                adapter, dataset, range(len(dataset.samples)), progress, "load training images"
            )
            labels = torch.tensor([r.label for r in dataset.samples], device=device)
            return adapter.to_tensor(images), labels, training_split(dataset, config.seed)

        checkpoint = smallcnn_checkpoint(data_dir, dataset, config.seed, content)
        info = train_or_load_smallcnn(adapter, checkpoint, load_inputs, config.seed, progress)
        return adapter, info
    with torch.random.fork_rng(devices=[]):
        # Seeded so random-weight models can be rebuilt identically by the dashboard.
        torch.manual_seed(config.seed)
        if kind == "torchvision":
            return build_torchvision(config.model, config.weights, device, progress), {}
        if kind == "torchscript":
            return build_torchscript(config.model, device, config.input_size), {}
        return build_python(config.model, device, config.input_size), {}


def load_views(
    adapter: ModelAdapter, dataset: Dataset, indices: Any, progress: bool = False, desc: str = ""
) -> list:
    indices = list(indices)
    bar = tqdm(indices, desc=desc, unit="img", disable=not progress or len(indices) < 2000)
    return [adapter.view(dataset.load_image(int(i))) for i in bar]


def describe_layers(adapter: ModelAdapter, example: torch.Tensor) -> list[dict[str, Any]]:
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
    num_outputs = logits.shape[1]
    if not adapter.class_names:
        adapter.class_names = [f"class {i}" for i in range(num_outputs)]
    if len(adapter.class_names) != num_outputs:
        raise UserError(
            f"model {adapter.spec} has {num_outputs} outputs but {len(adapter.class_names)} "
            "class names; make class_names match the model's last layer"
        )
    by_id = {layer["id"]: layer for layer in layers}
    for layer in layers:
        layer["pooled_shape"] = list(pooled_shape(tuple(layer["output_shape"]), MAX_POOLED_DIMS))
        passes = layer["type"] in PASS_THROUGH_TYPES and len(layer["parents"]) == 1
        parent = by_id.get(layer["parents"][0]) if passes else None
        # Reshape-only layers hold the same values as their parent: reuse its embedding.
        layer["same_as"] = (parent["same_as"] or parent["id"]) if parent else None
    return layers


def gradcam_layer_or_none(layers: list[dict[str, Any]]) -> str | None:
    try:
        return last_spatial_conv_layer(layers)
    except UserError as exc:
        report.warn(f"{exc}; explanations are skipped for this model")
        return None


# ---- stage 3: forward -----------------------------------------------------------------------


def chunk_ranges(total: int, size: int) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def thumbnails_of(views: list) -> np.ndarray:
    """views: PIL images -> (B, T, T, 3) uint8."""
    return np.stack(
        [np.asarray(view.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE))) for view in views]
    )


def pooled_features(tensor: torch.Tensor) -> torch.Tensor:
    """A captured layer output (B, ...) -> (B, D) float32 pooled to at most MAX_POOLED_DIMS."""
    return pool_activations(tensor.detach().float(), MAX_POOLED_DIMS)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius); 0 when both are zero, inf when only exact is."""
    difference = float(torch.linalg.vector_norm(approx.float() - exact.float()))
    scale = float(torch.linalg.vector_norm(exact.float()))
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def compare_bf16(
    adapter: ModelAdapter, images: torch.Tensor, feature_layers: list[str]
) -> dict[str, Any]:
    """Run ``images`` (B, C, S, S) through the model in float32 and under bfloat16 autocast.

    Returns {"top1_agreement": share of images with the same predicted class, "worst_layer",
    "worst_feature_error": the largest ``relative_error`` of a layer's pooled features,
    "accepted": whether both are within BF16_MIN_TOP1_AGREEMENT / BF16_MAX_FEATURE_ERROR}.
    """
    module = adapter.module
    exact_logits, exact = capture_layers(module, images, feature_layers, pooled_features)
    bf16_logits, bf16 = capture_layers(
        module, images, feature_layers, pooled_features, torch.bfloat16
    )
    same = exact_logits.float().argmax(dim=1) == bf16_logits.float().argmax(dim=1)
    agreement = float(same.float().mean())
    errors = {layer: relative_error(bf16[layer], exact[layer]) for layer in exact}
    worst_layer = max(errors, key=errors.__getitem__) if errors else None
    worst_error = errors[worst_layer] if worst_layer else 0.0
    return {
        "top1_agreement": round(agreement, 4),
        "worst_layer": worst_layer,
        "worst_feature_error": round(worst_error, 5),
        "accepted": agreement >= BF16_MIN_TOP1_AGREEMENT and worst_error <= BF16_MAX_FEATURE_ERROR,
    }


def bf16_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def choose_precision(check: dict[str, Any] | None) -> dict[str, Any]:
    """The forward stage's precision for a run, from ``compare_bf16``'s result (None: bfloat16
    is not available here): {"dtype": "bfloat16" | "float32", "reason", ...the check}. Decided
    once per run and kept in its manifest, so a resumed run goes on in the same precision."""
    if check is None:
        return {"dtype": "float32", "reason": "bfloat16 is used on CUDA GPUs only"}
    reason = (
        f"on the first batch, bfloat16 kept the top-1 class of {check['top1_agreement']:.1%} of "
        f"the images (needs {BF16_MIN_TOP1_AGREEMENT:.0%}) and changed the features by at most "
        f"{check['worst_feature_error']:.1%} (layer {check['worst_layer']}; allows "
        f"{BF16_MAX_FEATURE_ERROR:.0%})"
    )
    return {"dtype": "bfloat16" if check["accepted"] else "float32", "reason": reason, **check}


def forward_chunk(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    feature_layers: list[str],
    gradcam_layer: str | None,
    explanation_size: int,
    batch_size: int,
    precision: str = "float32",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """inputs: (B, C, S, S) model-ready; precision: a key of AUTOCAST_DTYPES. Returns
    (per-sample arrays, pooled features per layer)."""
    autocast_dtype = AUTOCAST_DTYPES[precision]

    def pool(tensor: torch.Tensor) -> torch.Tensor:
        return pooled_features(tensor).to(torch.float16)  # stored in half precision

    outputs: dict[str, list[np.ndarray]] = {}
    features: dict[str, list[torch.Tensor]] = {layer: [] for layer in feature_layers}
    target = dict(adapter.module.named_modules())[gradcam_layer] if gradcam_layer else None
    # channels_last: measured on 2 CPU cores, VGG16's forward + explanations 1.22x faster and
    # smallcnn's 1.5x (oneDNN's convolutions are written for it); same values up to rounding.
    adapter.module.to(memory_format=torch.channels_last)
    for batch in inputs.split(batch_size):
        batch = batch.contiguous(memory_format=torch.channels_last)
        if target is None:
            logits, pooled = capture_layers(
                adapter.module, batch, feature_layers, pool, autocast_dtype
            )
            explained = {}
        else:
            # One forward pass for the features, the prediction and its explanations.
            result = explain(
                adapter.module,
                target,
                batch,
                None,  # each sample's predicted class
                STORED_METHODS,
                explanation_size,
                features=FeatureCapture(feature_layers, pool),
                autocast_dtype=autocast_dtype,
            )
            logits, pooled, explained = result.logits, result.features, result.maps
        for layer, values in pooled.items():
            features[layer].append(values.cpu())
        probabilities = torch.softmax(logits.float(), dim=1)
        k = min(TOP_K, probabilities.shape[1])
        top_prob, top_index = probabilities.topk(k, dim=1)
        batch_out = {
            "top10_index": top_index.cpu().numpy(),
            "top10_prob": top_prob.cpu().numpy(),
            "log_prob": torch.log_softmax(logits.float(), dim=1).cpu().numpy(),
            **explained,
        }
        for name, value in batch_out.items():
            outputs.setdefault(name, []).append(value)
    merged = {name: np.concatenate(parts) for name, parts in outputs.items()}
    return merged, {layer: torch.cat(parts).numpy() for layer, parts in features.items()}


def prediction_columns(log_prob: np.ndarray, model_labels: np.ndarray) -> dict[str, np.ndarray]:
    """log_prob: (N, K) float32; model_labels: (N,) int64 with UNMAPPED where unknown."""
    predicted = log_prob.argmax(axis=1)
    known = model_labels != UNMAPPED
    loss = np.full(len(predicted), np.nan, dtype=np.float32)
    loss[known] = -log_prob[known, model_labels[known]]
    correct = np.where(known, (predicted == model_labels).astype(np.int8), np.int8(-1))
    return {
        "predicted": predicted.astype(np.int64),
        "loss": loss,
        "correct": correct.astype(np.int8),
    }


def accuracy_by_split(correct: np.ndarray, held_out: np.ndarray) -> dict[str, dict[str, Any]]:
    """correct: (N,) int8, 1 / 0 / -1 (class not mapped); held_out: (N,) bool.

    {"held-out": {"accuracy": float or None, "samples": int}, "train": {...}}: accuracy over the
    split's rows whose class is known (None when there are none).
    """
    result = {}
    for name, rows in ((HELD_OUT, held_out), (TRAIN, ~held_out)):
        known = correct[rows][correct[rows] >= 0]
        result[name] = {
            "accuracy": float(known.mean()) if len(known) else None,
            "samples": int(rows.sum()),
        }
    return result


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, dataset_to_model: list[int]
) -> np.ndarray:
    """(C, C+1) counts: rows true dataset class, columns predicted dataset class, last column
    a model output that is no dataset class."""
    num_classes = len(dataset_to_model)
    model_to_dataset = {m: d for d, m in enumerate(dataset_to_model) if m != UNMAPPED}
    columns = np.array(
        [model_to_dataset.get(int(p), num_classes) for p in predicted], dtype=np.int64
    )
    matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(matrix, (labels, columns), 1)
    return matrix


# ---- orchestration --------------------------------------------------------------------------


class Precompute:
    """Runs the stages of one run; construct, then call ``run()``."""

    def __init__(
        self, config: PrecomputeConfig, data_dir: Path, run_id: str | None, progress: bool = True
    ):
        self.config = config
        self.data_dir = Path(data_dir)
        self.run_id = validate_run_id(run_id or default_run_id(config))
        self.store = RunStore(runs_dir(self.data_dir) / self.run_id)
        self.progress = progress

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def run(self) -> RunStore:
        """Compute what is missing. Everything the user can get wrong is checked before the
        run folder is made; a failure after that is recorded in the manifest; a finished run
        is only read, so re-running its command works on a read-only data dir."""
        if self.config.samples is not None and self.config.samples <= 0:
            raise UserError(
                "--samples must be a positive number of images (or leave it out for all)"
            )
        check_model_options(self.config)
        if self.store.exists():
            self.check_same_settings()
        dataset = open_dataset(self.config.dataset, self.data_dir / "datasets", self.progress)
        content = dataset_fingerprint(dataset)
        if self.store.exists():
            self.check_same_source(content)
            if self.finished():
                self.log(f"run '{self.run_id}' is already complete in {self.store.run_dir}")
                return self.store
        n_total = min(self.config.samples or len(dataset.samples), len(dataset.samples))
        subset_sizes = reduce.resolve_subset_sizes(list(self.config.subsets), n_total)
        perplexities, warning = resolve_perplexities(self.config.perplexities, subset_sizes)
        if warning:
            report.warn(warning)
        processes = self.embedding_workers()
        blas_threads = max(1, available_cores() // processes)
        with self.store.writer_lock(), LayerWorkers(processes, blas_threads) as workers:
            self.check_or_create_manifest(content)
            try:
                self.compute(dataset, content, n_total, subset_sizes, perplexities, workers)
            except Exception as exc:
                self.record_failure(exc)
                raise
            return self.store

    def compute(
        self,
        dataset: Dataset,
        content: Fingerprint,
        n_total: int,
        subset_sizes: list[int],
        perplexities: dict[int, list[float]],
        workers: LayerWorkers,
    ) -> None:
        """The stages, in order, each skipping what is already on disk."""
        use_threads_for(self.config, "model")
        adapter, model_info = self.timed(
            "model",
            lambda: build_adapter(self.config, dataset, self.data_dir, self.progress, content),
        )
        use_threads_for(self.config, "forward")
        if self.store.read_manifest()["stages"]["embeddings"].get("state") != "done":
            # Started now so their imports overlap the forward pass, not training (which
            # may use every core) or the first layer.
            workers.start()
        if "checkpoint" in model_info:
            # The run keeps its own copy so it stays viewable if data/models is cleaned.
            self.store.save_state_dict("model_checkpoint", adapter.module.state_dict())
        self.index_and_describe(dataset, adapter, model_info, n_total, subset_sizes, perplexities)
        self.forward(dataset, adapter)
        self.embeddings(workers)
        self.clear_failure()

    def timed(self, stage: str, work: Any) -> Any:
        start = time.perf_counter()
        result = work()
        self.store.update_stage(
            stage, state="done", seconds=round(time.perf_counter() - start, 3), done=1, total=1
        )
        return result

    def check_same_settings(self) -> None:
        manifest = self.store.read_manifest()
        if manifest["config"]["identity"] != self.config.identity():
            raise UserError(
                f"run '{self.run_id}' already exists with different settings; pass a new "
                "--run-id, or delete the run folder to start over"
            )

    def check_same_source(self, content: Fingerprint) -> None:
        """Refuse to resume (or call complete) a run whose dataset changed since it began."""
        manifest = self.store.read_manifest()
        recorded_files = (
            self.store.load_json("dataset_files") if self.store.has("dataset_files") else None
        )
        change = change_since(manifest.get("source_fingerprint"), recorded_files, content)
        if change:
            raise changed_source_error(self.run_id, self.config.dataset, change)

    def finished(self) -> bool:
        manifest = self.store.read_manifest()
        stages = manifest.get("stages", {})
        return all(stages.get(name, {}).get("state") == "done" for name in STAGES)

    def check_or_create_manifest(self, content: Fingerprint) -> None:
        if self.store.exists():
            # Again under the lock: another precompute may have changed the run meanwhile.
            self.check_same_settings()
            self.check_same_source(content)
            manifest = self.store.read_manifest()
            if "source_fingerprint" not in manifest:  # a run begun before fingerprints
                self.record_source(content, manifest)
            self.clear_failure()
            self.log(f"resuming run '{self.run_id}' in {self.store.run_dir}")
            return
        manifest = {
            "run_id": self.run_id,
            "created": time.time(),
            "config": {**asdict(self.config), "identity": self.config.identity()},
            "stages": {name: {"state": "pending"} for name in STAGES},
            "versions": library_versions(),
        }
        self.record_source(content, manifest)

    def record_source(self, content: Fingerprint, manifest: dict[str, Any]) -> None:
        """Store the dataset's file table (first: the manifest names it), then the manifest
        with the fingerprint."""
        if content.files is not None:
            self.store.save_json("dataset_files", content.files)
        self.store.write_manifest({**manifest, "source_fingerprint": content.to_json()})

    def record_failure(self, exc: Exception) -> None:
        """Mark the run failed with its one-line error, so `runs` and the dashboard show why
        (a resume clears it). Best effort: the original error is what the user must see."""
        if isinstance(exc, UserError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            manifest = self.store.read_manifest()
            manifest["failure"] = {"error": message, "time": time.time()}
            self.store.write_manifest(manifest)
        except (OSError, UserError):
            pass

    def clear_failure(self) -> None:
        manifest = self.store.read_manifest()
        if manifest.pop("failure", None) is not None:
            self.store.write_manifest(manifest)

    def index_and_describe(
        self,
        dataset: Dataset,
        adapter: ModelAdapter,
        model_info: dict[str, Any],
        n_total: int,
        subset_sizes: list[int],
        perplexities: dict[int, list[float]],
    ) -> None:
        start = time.perf_counter()
        labels = np.array([record.label for record in dataset.samples], dtype=np.int64)
        order = reduce.nested_subset_order(labels, self.config.seed)[:n_total]
        example = adapter.preprocess([dataset.load_image(int(order[0]))])
        layers = describe_layers(adapter, example)
        mapping = map_classes(
            dataset.class_names, dataset.class_wnids, adapter.class_names, adapter.is_imagenet
        )
        if mapping.warning:
            report.warn(mapping.warning)
        # A sample table written before it had ``model_split`` is rebuilt: same rows.
        if not self.store.has("samples") or "model_split" not in self.store.load_json("samples"):
            trained_on = None
            if model_kind(self.config.model) == "smallcnn":
                trained_on = ~training_split(dataset, self.config.seed)
            self.store.save_json("samples", build_sample_table(dataset, order, mapping, trained_on))
        manifest = self.store.read_manifest()
        manifest.update(
            dataset={
                "name": dataset.name,
                "spec": dataset.spec,
                "description": dataset.description,
                "num_samples": n_total,
                "dataset_size": len(dataset.samples),
                "class_names": dataset.class_names,
                "class_wnids": dataset.class_wnids,
                "native_channels": dataset.native_channels,
            },
            model={
                **adapter.describe(),
                **model_info,
                "gradcam_layer": gradcam_layer_or_none(layers),
            },
            class_mapping=mapping.to_json(),
            layers=layers,
            subsets=subset_sizes,
            perplexities={str(n): values for n, values in perplexities.items()},
            thumbnail_size=THUMBNAIL_SIZE,
            explanation_size=min(adapter.input_size, MAX_EXPLANATION_SIZE),
        )
        manifest["stages"]["index"] = {
            "state": "done",
            "seconds": round(time.perf_counter() - start, 3),
            "done": 1,
            "total": 1,
        }
        self.store.write_manifest(manifest)

    def forward(self, dataset: Dataset, adapter: ModelAdapter) -> None:
        manifest = self.store.read_manifest()
        if manifest["stages"]["forward"].get("state") == "done":
            return
        start = time.perf_counter()
        samples = self.store.load_json("samples")
        indices = np.array(samples["dataset_index"])
        chunks = chunk_ranges(len(indices), CHUNK_SAMPLES)
        feature_layers = [layer["id"] for layer in manifest["layers"] if not layer["same_as"]]
        gradcam_layer = manifest["model"]["gradcam_layer"]
        pending = [
            i for i, rows in enumerate(chunks) if not self.store.has("forward_chunk", chunk=i)
        ]
        bar = tqdm(
            total=len(indices),
            initial=len(indices) - sum(len(chunks[i]) for i in pending),
            desc="forward + explanations",
            unit="img",
            disable=not self.progress,
        )
        self.store.update_stage(
            "forward", state="running", done=len(chunks) - len(pending), total=len(chunks)
        )
        precision = self.forward_precision(adapter, dataset, indices, feature_layers)
        try:
            for chunk_index in pending:
                rows = chunks[chunk_index]
                views = load_views(adapter, dataset, indices[rows.start : rows.stop])
                per_sample, features = forward_chunk(
                    adapter,
                    adapter.to_tensor(views),
                    feature_layers,
                    gradcam_layer,
                    manifest["explanation_size"],
                    self.config.batch_size,
                    precision,
                )
                for layer, values in features.items():
                    self.store.save_array("features", values, layer=layer, chunk=chunk_index)
                per_sample["thumbnails"] = thumbnails_of(views)
                self.store.save_arrays(
                    "forward_chunk", per_sample, chunk=chunk_index
                )  # commit marker
                bar.update(len(rows))
        finally:
            bar.close()  # also on Ctrl-C: no bar redrawn after the "interrupted" line
        self.consolidate_forward(
            len(chunks),
            np.array(samples["label"]),
            np.array(samples["model_label"]),
            np.array(samples["model_split"]) == HELD_OUT,
        )
        self.store.update_stage(
            "forward",
            state="done",
            seconds=round(time.perf_counter() - start, 3),
            done=len(chunks),
            total=len(chunks),
        )

    def forward_precision(
        self, adapter: ModelAdapter, dataset: Dataset, indices: np.ndarray, layers: list[str]
    ) -> str:
        """The run's forward precision: chosen on its first batch, then read from the manifest."""
        manifest = self.store.read_manifest()
        if "forward_precision" not in manifest:
            check = None
            if bf16_available(adapter.device):
                views = load_views(adapter, dataset, indices[: self.config.batch_size])
                check = compare_bf16(adapter, adapter.to_tensor(views), layers)
            manifest["forward_precision"] = choose_precision(check)
            self.store.write_manifest(manifest)
            if check is not None:
                choice = manifest["forward_precision"]
                report.note(f"forward pass in {choice['dtype']}: {choice['reason']}")
        return manifest["forward_precision"]["dtype"]

    def consolidate_forward(
        self, num_chunks: int, labels: np.ndarray, model_labels: np.ndarray, held_out: np.ndarray
    ) -> None:
        parts = [self.store.load_arrays("forward_chunk", chunk=i) for i in range(num_chunks)]
        merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        self.store.save_array("thumbnails", merged["thumbnails"])
        for method in ("gradcam", "guided_backprop", "guided_gradcam"):
            if method in merged:
                self.store.save_array("explanation", merged[method], method=method)
        columns = prediction_columns(merged["log_prob"], model_labels)
        manifest = self.store.read_manifest()
        confusion = confusion_matrix(
            labels, columns["predicted"], manifest["class_mapping"]["dataset_to_model"]
        )
        self.store.save_arrays(
            "predictions",
            {
                "top10_index": merged["top10_index"],
                "top10_prob": merged["top10_prob"],
                **columns,
                "confusion": confusion,
            },
        )
        by_split = accuracy_by_split(columns["correct"], held_out)
        manifest["accuracy_by_split"] = by_split
        # The one accuracy shown wherever there is room for one: on data the model never saw.
        manifest["accuracy"] = by_split[HELD_OUT]["accuracy"]
        self.store.write_manifest(manifest)
        self.store.delete_kind("forward_chunk")

    def embeddings(self, workers: LayerWorkers) -> None:
        """Reduce every layer; independent layers run in parallel worker processes on a CPU
        (openTSNE on small data uses a core far better alone than split over threads)."""
        manifest = self.store.read_manifest()
        layers = manifest["layers"]
        done = {layer["id"] for layer in layers if self.store.has("reduction", layer=layer["id"])}
        pending = [
            layer["id"] for layer in layers if layer["id"] not in done and not layer["same_as"]
        ]
        aliases = [layer for layer in layers if layer["id"] not in done and layer["same_as"]]
        job = LayerJob(
            run_dir=str(self.store.run_dir),
            num_chunks=len(chunk_ranges(manifest["dataset"]["num_samples"], CHUNK_SAMPLES)),
            subsets=manifest["subsets"],
            perplexities={int(n): values for n, values in manifest["perplexities"].items()},
            seed=self.config.seed,
            # Every worker may thread its maps over all cores: when the other workers run out of
            # layers, the last ones still use the whole machine (the OS shares the cores).
            n_jobs=available_cores(),
            torch_device="cuda" if resolve_device(self.config.device).type == "cuda" else None,
        )
        start = time.perf_counter() - manifest["stages"]["embeddings"].get("seconds", 0.0)
        bar = tqdm(
            total=len(layers),
            initial=len(done),
            desc="embeddings (PCA + t-SNE)",
            unit="layer",
            disable=not self.progress,
        )

        def finished(layer_id: str) -> None:
            done.add(layer_id)
            bar.update(1)
            bar.set_postfix_str(layer_id)
            self.store.update_stage(
                "embeddings",
                state="running",
                done=len(done),
                total=len(layers),
                seconds=round(time.perf_counter() - start, 3),
            )

        try:
            for layer_id in workers.run(job, pending):
                finished(layer_id)
            for layer in aliases:
                job.copy(layer["same_as"], layer["id"])
                finished(layer["id"])
        finally:
            # Also on Ctrl-C: left open, the bar is drawn once more, after the "interrupted" line.
            bar.close()
        self.store.update_stage(
            "embeddings",
            state="done",
            done=len(layers),
            total=len(layers),
            seconds=round(time.perf_counter() - start, 3),
        )
        self.store.delete_kind("features")

    def embedding_workers(self) -> int:
        if resolve_device(self.config.device).type == "cuda":
            return 1  # the GPU path runs in this process
        return available_cores()


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for package in (
        "torch",
        "torchvision",
        "numpy",
        "openTSNE",
        "grad-cam",
        "scikit-learn",
        "dash",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def iter_stage_states(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name in STAGES:
        stage = manifest.get("stages", {}).get(name, {})
        state = stage.get("state", "pending")
        if state != "done" and stage.get("total"):
            state = f"{state} {stage.get('done', 0)}/{stage['total']}"
        yield name, state
