"""The openTSNE backend of ``tsne.fit``: the CPU path of the embeddings stage.

openTSNE (Poličar, Stražar & Zupan, J. Stat. Softw. 2024) computes the affinities (exact kNN up
to ``EXACT_KNN_MAX`` points, approximate (Annoy) beyond) and the gradient (Barnes-Hut, or FFT
interpolation from ``FFT_MIN_POINTS``); ``SizeMethods`` makes both choices from a map's size,
and the embeddings stage records them with each layer. The schedule and the starting layouts
are ``tsne``'s, shared with the torch backend. No torch here: the CPU worker processes that
import this start in about two seconds. openTSNE itself (with scikit-learn, 1.6 s of a core) is
imported by the functions that compute, so that a precompute's PCA phase, and with it the first
page (issue 13), does not wait for it.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipelines.tsne import SCHEDULE, StageTimes, SubsetMaps, TSNESchedule, timed

if TYPE_CHECKING:
    from openTSNE.affinity import PerplexityBasedNN

# kNN: exact search is deterministic and, on PCA scores, faster than openTSNE's Annoy up to far
# beyond the dashboard's sizes. Measured on one core (benchmarks/README.md, "Large runs"), 30-D
# clustered scores, k = 270 (perplexity 90, the graph every perplexity of a subset shares):
# 20,000 points 5.1 s exact / 32.6 s Annoy, 40,000 15.5 / 74.5 s, 60,000 37.9 / 133 s. Exact
# grows as n^2, Annoy as n, so they meet near 200,000 points: approximate search beyond that.
EXACT_KNN_MAX = 200_000
# openTSNE's own switch point: FFT-interpolated repulsion beats Barnes-Hut above ~10k points
# (measured, one thread: 36 vs 110 ms an iteration at 10,000 points, 154 vs 1,237 at 60,000).
FFT_MIN_POINTS = 10_000

KnnMethod = Literal["exact", "annoy"]
GradientMethod = Literal["bh", "fft"]


@dataclass(frozen=True)
class SizeMethods:
    """How a map of n points is made: its neighbour search and its repulsion.

    Parameters so that tests can take the large-n paths on a few thousand points; the
    precompute always uses ``SIZE_METHODS``.
    """

    exact_knn_max: int = EXACT_KNN_MAX
    fft_min_points: int = FFT_MIN_POINTS

    def knn(self, n: int) -> KnnMethod:
        """openTSNE's neighbour search for n points: exact, or approximate (Annoy) beyond
        ``exact_knn_max``."""
        return "exact" if n <= self.exact_knn_max else "annoy"

    def gradient(self, n: int, dims: int = 2) -> GradientMethod:
        """openTSNE's repulsion for a map of n points in ``dims`` dimensions: FFT interpolation
        from ``fft_min_points`` (it is for 1-2 dimensions only), else Barnes-Hut."""
        return "fft" if n >= self.fft_min_points and dims <= 2 else "bh"


SIZE_METHODS = SizeMethods()


@dataclass(frozen=True, eq=False)
class MapJob:
    """One t-SNE map to optimise: subset size, perplexity and its own affinity matrix."""

    n: int
    perplexity: float
    affinities: PerplexityBasedNN
    init: np.ndarray  # (n, 2) float64; (n, 3) for a 3-D map


def fit_subsets(
    x: np.ndarray,
    subsets: list[SubsetMaps],
    seed: int,
    cores: int,
    schedule: TSNESchedule = SCHEDULE,
    *,
    times: StageTimes | None = None,
    methods: SizeMethods = SIZE_METHODS,
) -> dict[tuple[int, float], np.ndarray]:
    """Every t-SNE map of a layer, optimised on a pool of ``cores`` threads, each map's neighbour
    search and repulsion chosen by ``methods`` from its size.

    x: (N, k) float32 in nested-subset order; subsets: as ``tsne.fit`` builds them; times: as
    ``tsne.fit``'s (stages in thread seconds). Returns {(n, perplexity): (n, 2) float64}. Deterministic for a given seed; below ``FFT_MIN_POINTS``
    also whatever ``cores`` (Barnes-Hut sums each point's forces on one thread).

    Each subset's kNN graph is built on the pool too, so the big subset's maps start while the
    smaller subsets' graphs are still being built; maps are queued biggest first. openTSNE's
    gradient code releases the GIL, and one single-threaded map per core avoids the OpenMP
    barriers that make a 2-thread map slower than a 1-thread one on a busy machine.
    """
    ordered = sorted(subsets, key=lambda subset: subset.n, reverse=True)
    total = sum(len(subset.perplexities) for subset in ordered)
    if not total:
        return {}
    workers = max(1, min(cores, total))
    threads = max(1, cores // workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsne")
    try:
        graphs = [
            pool.submit(map_jobs, x, subset, seed, threads, times, methods) for subset in ordered
        ]
        maps = {}
        for graph in graphs:
            # Highest perplexity first: its attraction term makes it the slowest map of a subset.
            for job in reversed(graph.result()):
                maps[(job.n, job.perplexity)] = pool.submit(
                    optimise_map, job, threads, schedule, times, methods
                )
        return {key: future.result() for key, future in maps.items()}
    finally:
        # On an error or Ctrl-C, maps not yet started are dropped instead of run to the end.
        pool.shutdown(wait=True, cancel_futures=True)


def map_jobs(
    x: np.ndarray,
    subset: SubsetMaps,
    seed: int,
    threads: int,
    times: StageTimes | None = None,
    methods: SizeMethods = SIZE_METHODS,
) -> list[MapJob]:
    """The t-SNE maps of one subset, sharing its kNN graph, ready to optimise.

    x: (N, k) float32 scores of the layer (the subset is rows [:subset.n]). Returns one
    ``MapJob`` per perplexity, in ascending order.
    """
    n, perplexities = subset.n, subset.perplexities
    jobs = []
    with timed(times, "knn + affinities"):
        shared = shared_affinities(x[:n], perplexities[-1], seed, threads, methods)
        # Largest first: the graph was built at that perplexity, so its P is reused as is.
        for p in reversed(perplexities):
            shared.set_perplexity(p)
            # set_perplexity assigns a fresh P matrix, so a shallow copy keeps this perplexity's
            # P (and shares the kNN graph); each map can then be optimised on its own thread.
            jobs.append(MapJob(n, p, copy.copy(shared), subset.init))
    return jobs[::-1]


def optimise_map(
    job: MapJob,
    threads: int,
    schedule: TSNESchedule = SCHEDULE,
    times: StageTimes | None = None,
    methods: SizeMethods = SIZE_METHODS,
) -> np.ndarray:
    """Early exaggeration then the main phase (van der Maaten & Hinton 2008; openTSNE's two
    ``optimize`` calls, which carry the gains and momentum over), with ``schedule``.
    Returns (n, d) float64, d the columns of ``job.init`` (2, or 3 for the dashboard's 3-D maps:
    openTSNE's FFT interpolation is for 1-2 dimensions only, so those use Barnes-Hut at any n)."""
    from openTSNE import TSNEEmbedding

    n = job.n
    embedding = TSNEEmbedding(
        job.init,
        job.affinities,
        negative_gradient_method=methods.gradient(n, job.init.shape[1]),
        theta=schedule.theta,
        n_jobs=threads,
    )
    with timed(times, "early exaggeration"):
        embedding.optimize(
            schedule.early_iter,
            exaggeration=schedule.early_exaggeration,
            momentum=schedule.early_momentum,
            learning_rate=schedule.early_learning_rate * n,
            theta=schedule.early_theta,
            inplace=True,
        )
    with timed(times, "main phase"):
        embedding.optimize(
            schedule.main_iterations(job.perplexity, n),
            momentum=schedule.momentum(job.perplexity, n),
            learning_rate=schedule.learning_rate * n,
            theta=schedule.theta,
            inplace=True,
        )
    return np.array(embedding, dtype=np.float64)


def shared_affinities(
    x: np.ndarray,
    perplexity: float,
    seed: int,
    n_jobs: int,
    methods: SizeMethods = SIZE_METHODS,
) -> PerplexityBasedNN:
    """One kNN graph (k = 3 * the largest perplexity) whose weights ``set_perplexity`` redoes for
    any smaller perplexity without a new neighbour search. x: (n, k) float32."""
    from openTSNE.affinity import PerplexityBasedNN

    n = x.shape[0]
    return PerplexityBasedNN(
        x,
        perplexity=perplexity,
        method=methods.knn(n),
        n_jobs=n_jobs,
        random_state=seed,
        k_neighbors=min(n - 1, int(3 * perplexity)),
    )
