"""Stage "forward": per chunk of samples — thumbnails, one forward pass capturing every layer
(pooled on the device), top-10 predictions, and the run's stored explanations (``--explain``;
by default Grad-CAM / guided backprop / guided Grad-CAM) unless the explanations stage is to
compute them after the maps (``--maps-first``, ``stages/explanations.py``).

A chunk's file (``forward_chunk``) is written last, so its presence means the whole chunk is on
disk; once every chunk is, they are consolidated into ``thumbnails``, ``explanation``,
``predictions`` (with the metrics of ``pipelines/metrics.py``) and ``class_probabilities``.
A chunk is a unit (``pipelines/units.py``): ``compute_chunk`` and ``save_chunk`` need only what
the store holds (``chunk_work``), so Celery workers can do chunks too (``run``'s ``remote``).
``capture_features`` redoes only the pooled features, for a finished run whose layers need them
again (``embeddings``, ``quality``); ``recompute_class_probabilities`` only the probabilities,
for a run whose forward stage finished before they were stored (``quality``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from pipelines import report
from pipelines.datasets import Dataset
from pipelines.explain import STORED_METHODS, FeatureCapture, explain
from pipelines.features import capture_layers, pooled_features
from pipelines.labels import class_probabilities
from pipelines.metrics import HELD_OUT, accuracy_by_split, confusion_matrix, prediction_columns
from pipelines.models import ModelAdapter, load_inputs
from pipelines.precision import AUTOCAST_DTYPES, bf16_available, choose_precision, compare_bf16
from pipelines.records import ForwardPrecision, Manifest
from pipelines.run_config import check_stored_methods, stored_methods
from pipelines.store import RunStore

THUMBNAIL_SIZE = 64
MAX_EXPLANATION_SIZE = 112
CHUNK_SAMPLES = 512
TOP_K = 10


def chunk_ranges(total: int, size: int = CHUNK_SAMPLES) -> list[range]:
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def thumbnails_of(views: list) -> np.ndarray:
    """views: PIL images -> (B, T, T, 3) uint8."""
    return np.stack(
        [np.asarray(view.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE))) for view in views]
    )


def forward_chunk(
    adapter: ModelAdapter,
    inputs: torch.Tensor,
    feature_layers: list[str],
    gradcam_layer: str | None,
    explanation_size: int,
    batch_size: int,
    precision: str = "float32",
    methods: Sequence[str] = STORED_METHODS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """inputs: (B, C, S, S) model-ready; precision: a key of AUTOCAST_DTYPES; methods: the
    explanations to store (registry names; none without a Grad-CAM layer). Returns
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
        if target is None or not methods:
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
                methods,
                explanation_size,
                features=FeatureCapture(feature_layers, pool),
                autocast_dtype=autocast_dtype,
                decode=adapter.decode,
            )
            assert result.logits is not None  # classes=None: the engine ran its forward pass
            logits, pooled, explained = result.logits, result.features, result.maps
        for layer, values in pooled.items():
            features[layer].append(values.cpu())
        # The model file's own decode where it has one, else the softmax.
        probabilities = adapter.decode(logits)
        k = min(TOP_K, probabilities.shape[1])
        top_prob, top_index = probabilities.topk(k, dim=1)
        batch_out = {
            "top10_index": top_index.cpu().numpy(),
            "top10_prob": top_prob.cpu().numpy(),
            "log_prob": adapter.log_probabilities(logits, probabilities).cpu().numpy(),
            **explained,
        }
        for name, value in batch_out.items():
            outputs.setdefault(name, []).append(value)
    merged = {name: np.concatenate(parts) for name, parts in outputs.items()}
    return merged, {layer: torch.cat(parts).numpy() for layer, parts in features.items()}


def forward_precision(
    store: RunStore,
    adapter: ModelAdapter,
    dataset: Dataset,
    indices: np.ndarray,
    layers: list[str],
    batch_size: int,
) -> str:
    """The run's forward precision: chosen on its first batch, then read from the manifest."""
    record = store.read_record()
    if record.forward_precision is None:
        check = None
        if bf16_available(adapter.device):
            _, inputs = load_inputs(adapter, dataset, indices[:batch_size])
            check = compare_bf16(adapter, inputs, layers)
        choice = ForwardPrecision.from_json(choose_precision(check))
        store.write_record(replace(record, forward_precision=choice))
        if check is not None:
            report.note(f"forward pass in {choice.dtype}: {choice.reason}")
        return choice.dtype
    return record.forward_precision.dtype


def consolidate(
    store: RunStore,
    num_chunks: int,
    labels: np.ndarray,
    model_labels: np.ndarray,
    held_out: np.ndarray,
    methods: Sequence[str],
) -> None:
    """Merge the chunks into the run's per-sample artifacts and metrics, then drop them;
    ``methods``: the stored explanations' names, merged where every chunk has them (a run begun
    ``--maps-first`` and resumed without it has them in some chunks only: the explanations stage
    computes them all).

    The pictures (thumbnails, explanations) are copied chunk by chunk into memory-mapped files,
    so memory holds one chunk's, whatever the run's size: merged in memory, a 60,000-sample run
    of 32 px pictures held its 1.2 GB of them twice (737 MB of thumbnails, 490 MB of
    explanations; the chunks, then their concatenation). The small per-sample columns
    (log-probabilities, top-10) are merged in memory."""
    names = store.array_names("forward_chunk", chunk=0)
    in_every_chunk = set(names).intersection(
        *(store.array_names("forward_chunk", chunk=i) for i in range(1, num_chunks))
    )
    pictures = [
        name
        for name in names
        if (name == "thumbnails" or name in methods) and name in in_every_chunk
    ]
    for name in pictures:
        kind, params = (
            ("thumbnails", {}) if name == "thumbnails" else ("explanation", {"method": name})
        )
        stream_chunks(store, num_chunks, name, len(labels), kind, params)
    columns_of = [name for name in names if name not in methods and name != "thumbnails"]
    parts = [store.load_members("forward_chunk", columns_of, chunk=i) for i in range(num_chunks)]
    merged = {name: np.concatenate([part[name] for part in parts]) for name in columns_of}
    columns = prediction_columns(merged["log_prob"], model_labels)
    record = store.read_record()
    dataset_to_model = list(record.require_class_mapping().dataset_to_model)
    # Every dataset class's probability, for the quality stage's label issues (the top-10 above
    # can miss the given class).
    store.save_array(
        "class_probabilities", class_probabilities(merged["log_prob"], dataset_to_model)
    )
    confusion = confusion_matrix(labels, columns["predicted"], dataset_to_model)
    store.save_arrays(
        "predictions",
        {
            "top10_index": merged["top10_index"],
            "top10_prob": merged["top10_prob"],
            **columns,
            "confusion": confusion,
        },
    )
    by_split = accuracy_by_split(columns["correct"], held_out)
    store.write_record(
        replace(
            record,
            accuracy_by_split=by_split,
            # The one accuracy shown wherever there is room for one: on data the model never saw.
            accuracy=by_split[HELD_OUT].accuracy,
        )
    )
    store.delete_kind("forward_chunk")


def stream_chunks(
    store: RunStore,
    num_chunks: int,
    name: str,
    rows: int,
    kind: str,
    params: dict[str, str],
    source: str = "forward_chunk",
) -> None:
    """The array ``name`` of the ``source`` chunks, one chunk in memory at a time, into the
    ``rows``-row artifact ``kind`` with ``params``."""
    first = store.load_members(source, [name], chunk=0)[name]
    with store.array_writer(kind, (rows, *first.shape[1:]), first.dtype, **params) as out:
        start = 0
        for i in range(num_chunks):
            part = first if i == 0 else store.load_members(source, [name], chunk=i)[name]
            out[start : start + len(part)] = part
            start += len(part)
        if start != rows:
            raise ValueError(f"the {source} files hold {start} rows of {name}, expected {rows}")


@dataclass(frozen=True)
class ChunkWork:
    """What computing any chunk of a run takes besides the dataset and the model, all read from
    the run's store (``chunk_work``), so a chunk can be computed on any machine that shares it."""

    indices: np.ndarray  # (N,) int: the dataset index of each sample row
    chunks: list[range]  # sample rows of each chunk
    feature_layers: list[str]  # layers whose pooled features are stored (not reshape-only ones)
    gradcam_layer: str | None
    methods: tuple[str, ...]  # the stored explanations
    explanation_size: int
    precision: str  # a key of AUTOCAST_DTYPES, decided once per run (``forward_precision``)


def feature_layers_of(record: Manifest) -> list[str]:
    """The layers whose pooled features the forward pass stores: all but reshape-only ones
    (whose maps are their source layer's)."""
    return [layer.id for layer in record.layers if not layer.same_as]


def chunk_work(store: RunStore) -> ChunkWork:
    """The run's ``ChunkWork``; its forward precision must be recorded already."""
    record = store.read_record()
    if record.forward_precision is None:
        raise ValueError("the forward precision is chosen (forward_precision) before any chunk")
    indices = np.array(store.load_json("samples")["dataset_index"])
    methods = stored_methods(record.require_config())
    check_stored_methods(methods)  # a plugin's method needs its --plugins again on resume
    return ChunkWork(
        indices=indices,
        chunks=chunk_ranges(len(indices)),
        feature_layers=feature_layers_of(record),
        gradcam_layer=record.require_model().gradcam_layer,
        methods=methods,
        explanation_size=record.require_explanation_size(),
        precision=record.forward_precision.dtype,
    )


def chunk_done(store: RunStore, chunk_index: int) -> bool:
    """The chunk is on disk: its ``forward_chunk`` file is written last."""
    return store.has("forward_chunk", chunk=chunk_index)


@dataclass(frozen=True)
class ChunkOutput:
    """One chunk's results, as ``compute_chunk`` returns them and ``save_chunk`` stores them."""

    per_sample: dict[str, np.ndarray]  # top-10, log-probabilities, explanations, thumbnails
    features: dict[str, np.ndarray]  # layer id -> (n_chunk, D) float16 pooled activations


def compute_chunk(
    dataset: Dataset, adapter: ModelAdapter, work: ChunkWork, chunk_index: int, batch_size: int
) -> ChunkOutput:
    """One chunk through the model: its layers' pooled features and per-sample outputs."""
    rows = work.chunks[chunk_index]
    views, inputs = load_inputs(adapter, dataset, work.indices[rows.start : rows.stop])
    per_sample, features = forward_chunk(
        adapter,
        inputs,
        work.feature_layers,
        work.gradcam_layer,
        work.explanation_size,
        batch_size,
        work.precision,
        work.methods,
    )
    per_sample["thumbnails"] = thumbnails_of(views)
    return ChunkOutput(per_sample, features)


def save_chunk(store: RunStore, chunk_index: int, output: ChunkOutput) -> None:
    """The chunk's features, then its per-sample outputs: the commit marker (``chunk_done``)."""
    for layer, values in output.features.items():
        store.save_array("features", values, layer=layer, chunk=chunk_index)
    store.save_arrays("forward_chunk", output.per_sample, chunk=chunk_index)


class ChunkRunner(Protocol):
    """Computes chunks elsewhere than in this process (``pipelines.precompute_celery``)."""

    def run_chunks(self, store: RunStore, chunk_indices: Sequence[int]) -> Iterator[int]:
        """Yield each chunk index as its chunk is on disk, in the order they finish."""
        ...


def run(
    store: RunStore,
    dataset: Dataset,
    adapter: ModelAdapter,
    batch_size: int,
    progress: bool,
    remote: ChunkRunner | None = None,
    explanations: bool = True,
) -> None:
    """Every chunk not on disk yet (in this process, or by ``remote``), then the consolidation.
    The precision is chosen here either way, with this process's model, on its device.
    ``explanations``: the stored explanations in this pass; False leaves them to the
    explanations stage (``--maps-first``; ``remote`` units compute them either way)."""
    start = time.perf_counter()
    samples = store.load_json("samples")
    indices = np.array(samples["dataset_index"])
    layers = feature_layers_of(store.read_record())
    forward_precision(store, adapter, dataset, indices, layers, batch_size)
    work = chunk_work(store)
    stored_methods = work.methods  # merged where every chunk has them, whoever computed them
    if not explanations:
        work = replace(work, methods=())
    pending = [i for i in range(len(work.chunks)) if not chunk_done(store, i)]
    bar = tqdm(
        total=len(indices),
        initial=len(indices) - sum(len(work.chunks[i]) for i in pending),
        desc="forward + explanations" if work.methods else "forward",
        unit="img",
        disable=not progress,
    )
    store.update_stage(
        "forward", state="running", done=len(work.chunks) - len(pending), total=len(work.chunks)
    )

    def here() -> Iterator[int]:
        for chunk_index in pending:
            output = compute_chunk(dataset, adapter, work, chunk_index, batch_size)
            save_chunk(store, chunk_index, output)
            yield chunk_index

    try:
        for chunk_index in remote.run_chunks(store, pending) if remote else here():
            bar.update(len(work.chunks[chunk_index]))
    finally:
        bar.close()  # also on Ctrl-C: no bar redrawn after the "interrupted" line
    consolidate(
        store,
        len(work.chunks),
        np.array(samples["label"]),
        np.array(samples["model_label"]),
        np.array(samples["model_split"]) == HELD_OUT,
        stored_methods,
    )
    store.update_stage(
        "forward",
        state="done",
        seconds=round(time.perf_counter() - start, 3),
        done=len(work.chunks),
        total=len(work.chunks),
    )


def capture_features(
    store: RunStore,
    dataset: Dataset,
    adapter: ModelAdapter,
    layer_ids: list[str],
    batch_size: int,
    progress: bool,
) -> None:
    """The pooled ``features`` of ``layer_ids`` again, for every chunk that lacks them.

    The embeddings stage deletes the features when it finishes; a run computed before image
    placement existed needs them once more to add its layers' PCA bases. Same inputs, chunks,
    pooling and precision as ``run``, so the same features; nothing else is written.
    """
    record = store.read_record()
    indices = np.array(store.load_json("samples")["dataset_index"])
    chunks = chunk_ranges(len(indices))
    precision = record.forward_precision.dtype if record.forward_precision else "float32"
    pending = [
        i
        for i in range(len(chunks))
        if not all(store.has("features", layer=layer, chunk=i) for layer in layer_ids)
    ]
    bar = tqdm(
        total=sum(len(chunks[i]) for i in pending),
        desc="features for image placement",
        unit="img",
        disable=not progress,
    )
    try:
        for chunk_index in pending:
            rows = chunks[chunk_index]
            _, inputs = load_inputs(adapter, dataset, indices[rows.start : rows.stop])
            _, features = forward_chunk(
                adapter,
                inputs,
                layer_ids,
                None,
                record.require_explanation_size(),
                batch_size,
                precision,
            )
            for layer, values in features.items():
                store.save_array("features", values, layer=layer, chunk=chunk_index)
            bar.update(len(rows))
    finally:
        bar.close()


def recompute_class_probabilities(
    store: RunStore, dataset: Dataset, adapter: ModelAdapter, batch_size: int, progress: bool
) -> None:
    """The ``class_probabilities`` of a run whose forward stage finished before they were stored:
    the samples through the model once more (same inputs, chunks and precision as ``run``, no
    features or explanations)."""
    manifest = store.read_manifest()
    indices = np.array(store.load_json("samples")["dataset_index"])
    precision = manifest.get("forward_precision", {}).get("dtype", "float32")
    parts = []
    for rows in tqdm(
        chunk_ranges(len(indices)),
        desc="class probabilities",
        unit="chunk",
        disable=not progress,
    ):
        _, inputs = load_inputs(adapter, dataset, indices[rows.start : rows.stop])
        per_sample, _ = forward_chunk(
            adapter, inputs, [], None, manifest["explanation_size"], batch_size, precision
        )
        parts.append(per_sample["log_prob"])
    dataset_to_model = manifest["class_mapping"]["dataset_to_model"]
    store.save_array(
        "class_probabilities", class_probabilities(np.concatenate(parts), dataset_to_model)
    )
