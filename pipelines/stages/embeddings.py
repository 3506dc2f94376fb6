"""Stage "embeddings": reduce every layer (``pipelines/layer_jobs.py`` does one layer), then give
each reshape-only layer its parent's maps. Two phases: every layer's PCA maps first, then the
t-SNE maps, so the page is useful seconds after the forward pass (``pca_maps_done``). Independent layers run in parallel worker processes
on a CPU (openTSNE on small data uses a core far better alone than split over threads).

A layer is complete with its ``reduction`` (written last) and its placement data (``projection``,
the PCA basis that places a new image in its maps). Runs computed before image placement existed
lack the latter: their layers are pending again (``outdated``), and need their features captured
once more (``layers_without_features``), since they are deleted once this stage and the quality
stage (which reads one layer's) are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from pipelines.cores import available_cores
from pipelines.layer_jobs import LayerJob, LayerRunner, tsne_phase_done
from pipelines.models import resolve_device
from pipelines.stages.forward import chunk_ranges
from pipelines.store import RunStore


def worker_processes(device: str) -> int:
    """Layer workers for the ``--device`` choice: on CUDA the layers run in this process."""
    if resolve_device(device).type == "cuda":
        return 1  # the GPU path runs in this process
    return available_cores()


def blas_threads(device: str) -> int:
    """BLAS threads for each layer worker: the cores shared between them (``prepare_worker``
    says why). Fixed by the machine, so a layer's PCA, and the t-SNE maps made from it, are
    the same whichever process of the machine reduces it, a Celery worker included."""
    return max(1, available_cores() // worker_processes(device))


def layer_done(store: RunStore, layer_id: str) -> bool:
    """The layer's maps are complete (``reduction``, written last) and so is its placement
    data (``projection``, which runs computed before image placement lack)."""
    return tsne_phase_done(store, layer_id)


def layer_job(store: RunStore, device: str) -> LayerJob:
    """The run's layer job as this machine runs it for the ``--device`` choice ``device``: on
    a CUDA GPU in PyTorch, else with numpy and openTSNE. Everything else comes from the run's
    manifest, so every machine that shares the run makes the same maps of a layer."""
    record = store.read_record()
    return LayerJob(
        run_dir=str(store.run_dir),
        num_chunks=len(chunk_ranges(record.require_dataset().num_samples)),
        subsets=list(record.subsets),
        perplexities={n: list(values) for n, values in record.perplexities.items()},
        seed=record.require_config().seed,
        # Every worker may thread its maps over all cores: when the other workers run out of
        # layers, the last ones still use the whole machine (the OS shares the cores).
        n_jobs=available_cores(),
        torch_device="cuda" if resolve_device(device).type == "cuda" else None,
    )


def outdated(store: RunStore) -> bool:
    """True if some layer lacks its placement data although its maps are done: a run computed
    before image placement existed. The stage then runs again to add it."""
    return any(
        store.has("reduction", layer=layer.id) and not store.has("projection", layer=layer.id)
        for layer in store.read_record().layers
    )


def pca_maps_done(store: RunStore) -> bool:
    """Every layer has its PCA maps and placement data (the first phase of this stage)."""
    layers = store.read_record().layers
    return bool(layers) and all(store.has("projection", layer=layer.id) for layer in layers)


def layers_without_features(store: RunStore) -> list[str]:
    """The pending layers that lack some chunk of their pooled features (deleted when the stage
    last finished): the forward pass must capture them again (``forward.capture_features``)."""
    record = store.read_record()
    num_chunks = len(chunk_ranges(record.require_dataset().num_samples))
    return [
        layer.id
        for layer in record.layers
        if not layer.same_as
        and not layer_done(store, layer.id)
        and not all(store.has("features", layer=layer.id, chunk=i) for i in range(num_chunks))
    ]


def first_view_first(layer_ids: list[str], first: str | None, same_as: dict[str, str]) -> list[str]:
    """``layer_ids`` in the order to reduce them: the page's first view (``first``, or the
    layer whose maps it reuses) at the front, so a page opened while the run is built shows a
    map as soon as possible; the rest keep their order (the workers take them in turn)."""
    front = same_as.get(first, first) if first is not None else None
    return sorted(layer_ids, key=lambda layer_id: layer_id != front)


def run(
    store: RunStore,
    workers: LayerRunner,
    device: str,
    progress: bool,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Every layer not ``layer_done`` yet, each phase by ``workers``. ``meanwhile``: work for
    this process while the workers make the t-SNE maps (called once they have them all)."""
    record = store.read_record()
    layers = record.layers
    done = {layer.id for layer in layers if layer_done(store, layer.id)}
    pending = first_view_first(
        [layer.id for layer in layers if layer.id not in done and not layer.same_as],
        record.first_layer(),
        {layer.id: layer.same_as for layer in layers if layer.same_as},
    )
    aliases = [
        (layer.id, source) for layer in layers if layer.id not in done and (source := layer.same_as)
    ]
    if pending or aliases:
        # The dashboard's 3-D maps are made from the PCA scores about to be (re)written.
        store.delete_kind("embedding3d")
    job = layer_job(store, device)
    start = time.perf_counter() - (record.stage("embeddings").seconds or 0.0)
    bar = tqdm(
        total=len(layers),
        initial=len(done),
        desc="embeddings (PCA + t-SNE)",
        unit="layer",
        disable=not progress,
    )

    def finished(layer_id: str | None) -> None:
        """Record a layer's maps complete (None: only the PCA maps of every layer)."""
        if layer_id is not None:
            done.add(layer_id)
            bar.update(1)
            bar.set_postfix_str(layer_id)
        # Each write changes the manifest, which a page watching the run reloads its maps on.
        store.update_stage(
            "embeddings",
            state="running",
            done=len(done),
            total=len(layers),
            seconds=round(time.perf_counter() - start, 3),
        )

    try:
        # Every layer's PCA maps first (a second or two in all), then the t-SNE maps layer by
        # layer: a page opened meanwhile shows each layer's PCA map until its t-SNE is done.
        # The first view's PCA map is announced in the manifest as it lands: a page waiting for
        # it draws it then, not once every layer has one. Only that map is urgent (made in this
        # process, while the workers start on the others); the others, and every t-SNE map,
        # leave the cores to the page that draws it (and are announced together: a page redraws
        # its panels on each announcement).
        first_map = workers.run_phase(job, "pca", pending[:1])
        other_maps = workers.run_phase(job, "pca", pending[1:], background=True)
        for _ in first_map:
            finished(None)
        for _ in other_maps:
            pass
        for layer_id, source in aliases:
            job.copy_pca(source, layer_id)
        finished(None)
        tsne_maps = workers.run_phase(job, "tsne", pending, background=True)
        if meanwhile is not None:
            meanwhile()
        for layer_id in tsne_maps:
            finished(layer_id)
        for layer_id, source in aliases:
            job.copy_tsne(source, layer_id)
            finished(layer_id)
    finally:
        # Also on Ctrl-C: left open, the bar is drawn once more, after the "interrupted" line.
        bar.close()
    store.update_stage(
        "embeddings",
        state="done",
        done=len(layers),
        total=len(layers),
        seconds=round(time.perf_counter() - start, 3),
    )
    if not store.pending_stages(["quality"]):
        # The quality stage, which reads them too, deletes them when it is done; a run whose
        # quality stage is done already has no other reader left.
        store.delete_kind("features")
