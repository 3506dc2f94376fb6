"""Stage "explanations": the run's stored explanations (``--explain``; by default Grad-CAM /
guided backprop / guided Grad-CAM, each sample's predicted class), one ``explanation`` artifact
per method.

Usually the forward stage computes them in its own pass (one forward pass serves the features,
the predictions and the explanations' backward passes), and this stage only records that they
are there. A precompute with ``--maps-first`` (runs started from the page) leaves them out of
the forward pass and computes them here, after the layers' PCA maps, while the worker processes
compute the t-SNE maps: a page watching the run shows its maps that much sooner (on 2 cores the
explanations are 60 % of the embedded default's forward pass), for one more forward pass over
the samples. Until they are stored the inspector computes a clicked sample's explanations on
demand.

Per chunk of samples (the forward stage's chunks and batches, so the same maps as in its pass);
a chunk's ``explanation_chunk`` file is its commit marker, so a killed precompute resumes from
the chunks on disk; once every chunk is, they are consolidated into ``explanation`` and dropped.
Always computed in the precompute's own process, with ``--workers celery`` too (whose forward
units compute them in their pass, so only a run begun ``--maps-first`` here comes this way).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from pipelines.datasets import Dataset
from pipelines.models import ModelAdapter, load_inputs
from pipelines.stages import forward
from pipelines.store import RunStore


def stored(store: RunStore, work: forward.ChunkWork) -> bool:
    """Every method's ``explanation`` is on disk (the forward pass computed them), or the run
    has none to store: a model without a spatial conv layer has no Grad-CAM layer."""
    if work.gradcam_layer is None:
        return True
    return all(store.has("explanation", method=method) for method in work.methods)


def compute_chunk(
    dataset: Dataset,
    adapter: ModelAdapter,
    work: forward.ChunkWork,
    chunk_index: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """One chunk's explanations, method -> (n_chunk, S, S) float16 or (n_chunk, S, S, 3) uint8:
    the forward stage's own pass (``forward.forward_chunk``) without the features."""
    rows = work.chunks[chunk_index]
    _, inputs = load_inputs(adapter, dataset, work.indices[rows.start : rows.stop])
    per_sample, _ = forward.forward_chunk(
        adapter,
        inputs,
        [],
        work.gradcam_layer,
        work.explanation_size,
        batch_size,
        work.precision,
        work.methods,
    )
    return {method: per_sample[method] for method in work.methods}


def run(
    store: RunStore,
    dataset: Dataset,
    run_model: Callable[[], ModelAdapter],
    batch_size: int,
    progress: bool,
) -> None:
    """Every chunk not on disk yet, then the consolidation; only the stage's record when the
    forward pass stored them. ``run_model``: the run's model, asked for only when needed."""
    start = time.perf_counter()
    work = forward.chunk_work(store)
    chunks = len(work.chunks)
    if stored(store, work):
        store.update_stage("explanations", state="done", seconds=0.0, done=chunks, total=chunks)
        return
    pending = [i for i in range(chunks) if not store.has("explanation_chunk", chunk=i)]
    store.update_stage("explanations", state="running", done=chunks - len(pending), total=chunks)
    adapter = run_model() if pending else None
    bar = tqdm(
        total=len(work.indices),
        initial=len(work.indices) - sum(len(work.chunks[i]) for i in pending),
        desc="explanations",
        unit="img",
        disable=not progress,
    )
    try:
        for done, chunk_index in enumerate(pending, start=chunks - len(pending) + 1):
            assert adapter is not None
            arrays = compute_chunk(dataset, adapter, work, chunk_index, batch_size)
            store.save_arrays("explanation_chunk", arrays, chunk=chunk_index)
            store.update_stage("explanations", state="running", done=done, total=chunks)
            bar.update(len(work.chunks[chunk_index]))
    finally:
        bar.close()  # also on Ctrl-C: no bar redrawn after the "interrupted" line
    for method in work.methods:
        forward.stream_chunks(
            store,
            chunks,
            method,
            len(work.indices),
            "explanation",
            {"method": method},
            source="explanation_chunk",
        )
    store.delete_kind("explanation_chunk")
    store.update_stage(
        "explanations",
        state="done",
        seconds=round(time.perf_counter() - start, 3),
        done=chunks,
        total=chunks,
    )
