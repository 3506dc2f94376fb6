"""The embeddings stage's unit of work: reduce one layer (PCA, then every 2-D map) and store it.

On a CPU the layers are reduced in parallel worker processes, one per core, at a lower priority
(``TSNE_NICENESS``). They are spawned when the forward stage starts, so their start-up (about two
seconds of imports each) uses the cores the forward pass and a page that is opening leave idle,
instead of delaying the first layer. The one map a page waits for is reduced in the precompute's
own process, at its priority. This module is what a worker imports, so it stays light: numpy,
the store and ``reduce`` (openTSNE), no torch or torchvision.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import threadpoolctl

from pipelines import reduce, tsne
from pipelines.lifetime import die_with_parent
from pipelines.store import RunStore, embedding_key
from pipelines.tsne_opentsne import SIZE_METHODS

# How far a recomputed PCA may stray from a stored PCA map, relative to the map's extent, for
# the map to count as the same one (and its t-SNE maps, made from the same scores, to stand).
# Measured on digits + smallcnn on the CPU, the second forward pass gave bit-identical scores;
# the margin is for passes whose float16-rounded features differ in the odd last bit (another
# batch size or device). Beyond it, the layer's maps are recomputed.
SAME_MAP_TOLERANCE = 1e-3

# The niceness of the worker processes, whose work nobody waits for yet: the t-SNE maps, the long
# tail of a run (a minute or more for the embedded default on 2 cores) that a page may already be
# showing, the PCA maps of layers other than the page's first, and their own imports. The page's
# server and browser, and the first map, get the cores first; on an idle machine it changes
# nothing. Measured with `python main.py` on 2 cores, the workers' start at normal priority
# (about 3 s of one core each, during the forward pass and the page's load) delayed the page.
TSNE_NICENESS = 10

# A layer's two phases (``LayerJob.phase``): its PCA maps and placement data, then its t-SNE maps.
LayerPhase = Literal["pca", "tsne"]
LAYER_PHASES: tuple[LayerPhase, ...] = ("pca", "tsne")


def pca_phase_done(store: RunStore, layer_id: str) -> bool:
    """The layer's PCA maps and placement data are on disk (``projection`` is written last)."""
    return store.has("projection", layer=layer_id) and store.has("pca_info", layer=layer_id)


def tsne_phase_done(store: RunStore, layer_id: str) -> bool:
    """The layer is complete: its ``reduction`` (written last) and its placement data, which
    runs computed before image placement lack."""
    return store.has("reduction", layer=layer_id) and store.has("projection", layer=layer_id)


@dataclass(frozen=True)
class LayerJob:
    """Everything a worker process needs to reduce one layer; picklable."""

    run_dir: str
    num_chunks: int
    subsets: list[int]
    perplexities: dict[int, list[float]]
    seed: int
    n_jobs: int
    # A torch device ("cuda") runs the PCA and t-SNE in PyTorch there; None runs numpy/LAPACK and
    # openTSNE on the CPU.
    torch_device: str | None = None

    def features(self, store: RunStore, layer_id: str) -> np.ndarray:
        """(N, D) float32 pooled activations of ``layer_id``, from the forward stage's chunks."""
        parts = [
            store.load_array("features", layer=layer_id, chunk=i) for i in range(self.num_chunks)
        ]
        return np.concatenate(parts).astype(np.float32)

    def __call__(self, layer_id: str) -> str:
        """Both phases of one layer, one after the other."""
        self.pca_phase(layer_id)
        return self.tsne_phase(layer_id)

    def phase(self, name: LayerPhase) -> Callable[[str], str]:
        """The phase called ``name``, a picklable function of a layer id."""
        return {"pca": self.pca_phase, "tsne": self.tsne_phase}[name]

    def pca_phase(self, layer_id: str) -> str:
        """The layer's PCA, its 2-D PCA maps and its placement data (``projection`` written
        last). The stage runs this for every layer before any t-SNE: a page can show every
        layer's PCA map seconds after the forward pass, while the t-SNE maps fill in."""
        store = RunStore(Path(self.run_dir))
        if pca_phase_done(store, layer_id):
            return layer_id
        started = time.perf_counter()
        fit = self.pca(self.features(store, layer_id))
        if store.has("reduction", layer=layer_id) and same_pca_map(store, layer_id, fit.scores):
            # A layer of a run computed before image placement: its maps stand (the same PCA,
            # as its PCA map shows), only its placement data is added.
            store.save_json("pca_info", fit.info, layer=layer_id)
            save_placement(store, layer_id, fit)
            return layer_id
        # Another PCA than the one its maps were made from: every map is made again.
        store.delete("reduction", layer=layer_id)
        for (size, method, perplexity), coords in reduce.pca_maps(fit.scores, self.subsets).items():
            store.save_array(
                "embedding",
                coords.astype(np.float32),
                **embedding_key(layer_id, size, method, perplexity),
            )
        info = {**fit.info, "pca_seconds": round(time.perf_counter() - started, 3)}
        store.save_json("pca_info", info, layer=layer_id)
        save_placement(store, layer_id, fit)
        return layer_id

    def tsne_phase(self, layer_id: str) -> str:
        """The layer's t-SNE maps from its stored PCA scores, then its ``reduction`` record."""
        store = RunStore(Path(self.run_dir))
        if tsne_phase_done(store, layer_id):
            return layer_id
        if not pca_phase_done(store, layer_id):
            self.pca_phase(layer_id)
        started = time.perf_counter()
        scores = store.load_array("pca_scores", mmap=False, layer=layer_id)
        for (size, method, perplexity), coords in self.tsne_maps(scores).items():
            store.save_array(
                "embedding",
                coords.astype(np.float32),
                **embedding_key(layer_id, size, method, perplexity),
            )
        pca_info = dict(store.load_json("pca_info", layer=layer_id))
        pca_seconds = float(pca_info.pop("pca_seconds", 0.0))
        # Written last: its presence marks the layer complete. The backend is recorded because
        # it changes the maps' coordinates (not their quality), and a run resumed on another
        # device mixes backends across layers.
        info = {
            **pca_info,
            "tsne_backend": self.tsne_backend,
            "tsne_device": self.torch_device or "cpu",
            **self.tsne_methods(),
            "seconds": round(pca_seconds + time.perf_counter() - started, 3),
        }
        store.save_json("reduction", info, layer=layer_id)
        return layer_id

    @property
    def tsne_backend(self) -> tsne.Backend:
        """The t-SNE backend of this job: PyTorch on ``torch_device``, else openTSNE."""
        return "opentsne" if self.torch_device is None else "torch"

    def tsne_methods(self) -> dict[str, str]:
        """How the layer's largest t-SNE maps are made, recorded with them ({} without t-SNE):
        the neighbour search and the repulsion, which the openTSNE backend chooses by size
        (``tsne_opentsne.SizeMethods``) and the torch backend does exactly."""
        sizes = [n for n in self.subsets if self.perplexities.get(n)]
        if not sizes:
            return {}
        if self.tsne_backend == "torch":
            return {"tsne_knn": "exact", "tsne_gradient": "exact"}
        largest = max(sizes)
        return {
            "tsne_knn": SIZE_METHODS.knn(largest),
            "tsne_gradient": SIZE_METHODS.gradient(largest),
        }

    def pca(self, features: np.ndarray) -> reduce.PCAFit:
        """features: (N, D) float32 -> PCA keeping 90% of the variance: scores and basis."""
        if self.torch_device is None:
            return reduce.pca_fit(features, variance=0.9, seed=self.seed)
        # Imported here for the same reason as in ``maps``.
        from pipelines import pca_torch

        return pca_torch.pca_fit_torch(features, 0.9, self.seed, self.torch_device)

    def maps(self, scores: np.ndarray) -> dict[tuple[int, str, float | None], np.ndarray]:
        """scores: (N, k) float32 -> every 2D map of the layer, keyed (n, method, perplexity)."""
        return {**reduce.pca_maps(scores, self.subsets), **self.tsne_maps(scores)}

    def tsne_maps(self, scores: np.ndarray) -> dict[tuple[int, str, float | None], np.ndarray]:
        """scores: (N, k) float32 -> the layer's t-SNE maps, keyed (n, "tsne", perplexity)."""
        return reduce.tsne_maps(
            scores,
            self.subsets,
            self.perplexities,
            self.seed,
            self.n_jobs,
            backend=self.tsne_backend,
            device=self.torch_device,
        )

    def map_keys(self, methods: tuple[str, ...]) -> list[tuple[int, str, float | None]]:
        """(subset, method, perplexity) of every map of ``methods`` a layer has."""
        keys: list[tuple[int, str, float | None]] = []
        for size in self.subsets:
            if "pca" in methods:
                keys.append((size, "pca", None))
            if "tsne" in methods:
                keys.extend((size, "tsne", p) for p in self.perplexities[size])
        return keys

    def copy_pca(self, source: str, layer_id: str) -> None:
        """A reshape-only layer gets its parent's PCA maps and placement data under its own id."""
        store = RunStore(Path(self.run_dir))
        self.copy_maps(store, source, layer_id, ("pca",))
        # A parent reduced before the two phases existed has only its reduction record.
        info_kind = "pca_info" if store.has("pca_info", layer=source) else "reduction"
        store.save_json("pca_info", store.load_json(info_kind, layer=source), layer=layer_id)
        store.save_array(
            "pca_scores", store.load_array("pca_scores", mmap=False, layer=source), layer=layer_id
        )
        store.save_arrays(
            "projection", store.load_arrays("projection", layer=source), layer=layer_id
        )

    def copy_tsne(self, source: str, layer_id: str) -> None:
        """... then its parent's t-SNE maps and reduction record (written last)."""
        store = RunStore(Path(self.run_dir))
        if not store.has("projection", layer=layer_id):
            self.copy_pca(source, layer_id)
        self.copy_maps(store, source, layer_id, ("tsne",))
        store.save_json(
            "reduction",
            {**store.load_json("reduction", layer=source), "same_as": source},
            layer=layer_id,
        )

    def copy_maps(
        self, store: RunStore, source: str, layer_id: str, methods: tuple[str, ...]
    ) -> None:
        for size, method, perplexity in self.map_keys(methods):
            coords = store.load_array(
                "embedding", mmap=False, **embedding_key(source, size, method, perplexity)
            )
            store.save_array(
                "embedding", coords, **embedding_key(layer_id, size, method, perplexity)
            )


def save_placement(store: RunStore, layer_id: str, fit: reduce.PCAFit) -> None:
    """What placing a new image in the layer's maps needs (``pipelines/placement.py``): the
    samples' PCA scores, then the basis, whose file marks the placement data complete."""
    store.save_array("pca_scores", fit.scores, layer=layer_id)
    store.save_arrays(
        "projection", {"mean": fit.mean, "components": fit.components}, layer=layer_id
    )


def same_pca_map(store: RunStore, layer_id: str, scores: np.ndarray) -> bool:
    """True if ``scores`` (N, k) give the layer's stored PCA map (its first two columns, the
    largest subset's rows) to within ``SAME_MAP_TOLERANCE`` of the map's extent."""
    size = max(store.read_record().subsets)
    stored = store.load_array("embedding", mmap=False, **embedding_key(layer_id, size, "pca", None))
    if stored.shape != (size, 2) or scores.shape[0] < size:
        return False
    extent = float(np.abs(stored).max())
    error = float(np.abs(scores[:size, :2] - stored).max())
    return error <= SAME_MAP_TOLERANCE * max(extent, float(np.finfo(np.float32).tiny))


def prepare_worker(threads: int, precompute: int) -> None:
    """Worker initializer: die with the precompute (pid ``precompute``: killed, even with
    kill -9, its workers do not live on as orphans that keep writing into the run), run at
    ``TSNE_NICENESS`` (every thread, also any its imports started before ``LayerWorkers.start``
    reniced it), and use ``threads`` BLAS threads.

    The BLAS limit matters: by default every worker's OpenBLAS starts a thread per core, and two
    workers doing PCA at once then spin-wait for each other's cores. Measured on 2 cores, one
    (1797, 2048) PCA took 10.4 s that way instead of 0.8 s with one thread per worker.
    """
    die_with_parent(precompute)
    lower_priority(TSNE_NICENESS)
    # Applies to the BLAS and OpenMP libraries loaded so far: this module's imports (numpy,
    # scipy, scikit-learn, openTSNE) are all of those the layer jobs use.
    threadpoolctl.threadpool_limits(limits=threads)


def lower_priority(niceness: int) -> None:
    """Every thread of this process at ``niceness`` at least. Linux keeps a nice value per
    thread, and BLAS or OpenMP threads may exist already; threads started later inherit it."""
    try:
        threads = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: this thread, which the pools' threads are started from
    for thread in threads:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                os.setpriority(os.PRIO_PROCESS, thread, niceness)


def _ready() -> None:
    """A no-op task: submitting it makes the pool start its processes now."""


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C off for the block: a SIGINT that arrives meanwhile is raised when it ends.

    For the two steps that an interruption would leave half done. Starting the workers:
    processes started in the block keep SIGINT blocked for life (the mask survives fork and
    exec; multiprocessing starts its resource tracker the same way), so the terminal's Ctrl-C
    reaches the precompute only, which decides. Before, the workers took it too, and a second
    one hung the precompute for good. Stopping them: a second Ctrl-C cannot cut the kill short.
    """
    held: list[int] = []
    # Handlers can only be set in the main thread; Python runs them there, too, so elsewhere a
    # Ctrl-C cannot interrupt the block anyway.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
            if held:
                signal.raise_signal(signal.SIGINT)


def interrupt_once(_signum: int, _frame: object) -> None:
    """SIGINT handler: the first Ctrl-C raises KeyboardInterrupt, the ones after it are ignored.

    A second Ctrl-C, even a burst of them, then cannot interrupt the way out halfway, before
    the workers are stopped.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


class LayerRunner(Protocol):
    """Runs a phase of the embeddings stage for many layers: ``LayerWorkers`` on this machine,
    ``pipelines.precompute_celery.CeleryUnits`` on Celery workers. A context manager: leaving
    it on an error or Ctrl-C stops the layers still in progress."""

    def __enter__(self) -> LayerRunner: ...

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None: ...

    def start(self) -> None:
        """Get ready early (start worker processes), before the layers' features exist."""
        ...

    def run_phase(
        self,
        job: LayerJob,
        phase: LayerPhase,
        layer_ids: Iterable[str],
        background: bool = False,
    ) -> Iterator[str]:
        """Yield each layer id as ``job``'s ``phase`` is done for it, in the order they finish.
        ``background``: work nobody waits for yet, which may run at a lower priority; otherwise
        a page waits for it, and it runs as soon as possible."""
        ...


class LayerWorkers:
    """A pool of worker processes for layer jobs, or none (``workers <= 1``: run in-process).

    Use as a context manager; ``start()`` early, ``run_phase()`` once the features are on disk.
    Leaving it on an error or Ctrl-C kills the workers at once (``stop()``); inside it, only
    the first Ctrl-C counts (``interrupt_once``).
    """

    def __init__(self, workers: int, blas_threads: int = 1):
        self.workers = workers
        self.blas_threads = blas_threads
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.previous_sigint: Any = None

    def __enter__(self) -> LayerWorkers:
        # Only where Ctrl-C raises KeyboardInterrupt now: not where it is ignored (nohup) or
        # handled otherwise, nor outside the main thread, where no handler can be set.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous_sigint = signal.signal(signal.SIGINT, interrupt_once)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is not None:
                self.stop()
            elif self.pool is not None:
                self.pool.shutdown(wait=True)  # every job is done: the workers are idle
                self.pool = None
        finally:
            if self.previous_sigint is not None:
                signal.signal(signal.SIGINT, self.previous_sigint)
                self.previous_sigint = None

    def stop(self) -> None:
        """Kill the workers now, with the layers they are reducing; idempotent.

        Waiting for those layers instead kept a Ctrl-C waiting for up to tens of seconds (a layer
        takes seconds, and the pool also runs the jobs already queued to its workers). A killed
        layer is simply redone on resume: its ``reduction`` file, written last, is missing.
        """
        with sigint_held():
            pool, self.pool = self.pool, None
            if pool is None:
                return
            # Python < 3.14 has no public way to kill a pool's workers (3.14 adds kill_workers()).
            for process in list(pool._processes.values()):
                process.kill()
            # Returns at once: the pool sees its workers gone and closes its pipes. Left to the
            # interpreter's exit, that clean-up raced Python's own (an OSError traceback).
            pool.shutdown(wait=True, cancel_futures=True)

    def start(self) -> None:
        """Spawn the worker processes (in the background) if not yet done."""
        if self.workers <= 1 or self.pool is not None:
            return
        # spawn, not fork: forking a process that has run torch's thread pools can deadlock.
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=prepare_worker,
            initargs=(self.blas_threads, os.getpid()),
        )
        # A spawning pool starts a process per submit until one is idle: one no-op each starts
        # them all now, and only here, where they are started with Ctrl-C held off.
        with sigint_held():
            for _ in range(self.workers):
                self.pool.submit(_ready)
        # At once, so that their imports run at it too (``prepare_worker`` comes after those).
        for pid in [process.pid for process in list(self.pool._processes.values())]:
            if pid is not None:
                with contextlib.suppress(OSError):  # one that died already
                    os.setpriority(os.PRIO_PROCESS, pid, TSNE_NICENESS)

    def run_phase(
        self,
        job: LayerJob,
        phase: LayerPhase,
        layer_ids: Iterable[str],
        background: bool = False,
    ) -> Iterator[str]:
        """Yield each layer id as ``job``'s ``phase`` completes for it. ``background``: in the
        worker processes (at ``TSNE_NICENESS``), queued at once (before the first ``next``), so
        work queued by a later call runs beside it on a free worker. Otherwise, and always with
        ``workers <= 1``, in this process at its priority, one layer after the other as they
        are asked for: the map a page waits for, which a worker would start later and compute
        at the niceness that leaves the cores to the page."""
        work = job.phase(phase)
        if self.workers <= 1 or not background:
            return self.here(work, layer_ids)
        self.start()
        assert self.pool is not None
        futures = [self.pool.submit(work, layer_id) for layer_id in layer_ids]
        return (future.result() for future in concurrent.futures.as_completed(futures))

    def here(self, work: Callable[[str], str], layer_ids: Iterable[str]) -> Iterator[str]:
        """``work`` of each layer in this process, with a worker's BLAS threads: the same maps
        as a worker would make (``blas_threads`` says why they are fixed)."""
        for layer_id in layer_ids:
            with threadpoolctl.threadpool_limits(limits=self.blas_threads):
                done = work(layer_id)
            yield done
