"""The openTSNE backend of ``tsne.fit``: the CPU path of the embeddings stage.

openTSNE (Poličar, Stražar & Zupan, J. Stat. Softw. 2024) computes the affinities (exact kNN up
to ``EXACT_KNN_MAX`` points) and the gradient (Barnes-Hut, or FFT interpolation from
``FFT_MIN_POINTS``); the schedule and the starting layouts are ``tsne``'s, shared with the torch
backend. No torch here: the CPU worker processes that import this start in about two seconds.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from openTSNE import TSNEEmbedding
from openTSNE.affinity import PerplexityBasedNN

from pipelines.tsne import SCHEDULE, StageTimes, SubsetMaps, TSNESchedule, timed

# kNN: exact search is deterministic and, on PCA scores, faster than building Annoy trees (13,000
# x 28: 1.8 s exact vs 7-9 s Annoy on two cores); approximate search only beyond this size.
EXACT_KNN_MAX = 20_000
# openTSNE's own switch point: FFT-interpolated repulsion beats Barnes-Hut above ~10k points.
FFT_MIN_POINTS = 10_000


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
) -> dict[tuple[int, float], np.ndarray]:
    """Every t-SNE map of a layer, optimised on a pool of ``cores`` threads.

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
        graphs = [pool.submit(map_jobs, x, subset, seed, threads, times) for subset in ordered]
        maps = {}
        for graph in graphs:
            # Highest perplexity first: its attraction term makes it the slowest map of a subset.
            for job in reversed(graph.result()):
                maps[(job.n, job.perplexity)] = pool.submit(
                    optimise_map, job, threads, schedule, times
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
) -> list[MapJob]:
    """The t-SNE maps of one subset, sharing its kNN graph, ready to optimise.

    x: (N, k) float32 scores of the layer (the subset is rows [:subset.n]). Returns one
    ``MapJob`` per perplexity, in ascending order.
    """
    n, perplexities = subset.n, subset.perplexities
    jobs = []
    with timed(times, "knn + affinities"):
        shared = shared_affinities(x[:n], perplexities[-1], seed, threads)
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
) -> np.ndarray:
    """Early exaggeration then the main phase (van der Maaten & Hinton 2008; openTSNE's two
    ``optimize`` calls, which carry the gains and momentum over), with ``schedule``.
    Returns (n, d) float64, d the columns of ``job.init`` (2, or 3 for the dashboard's 3-D maps:
    openTSNE's FFT interpolation is for 1-2 dimensions only, so those use Barnes-Hut at any n)."""
    n = job.n
    embedding = TSNEEmbedding(
        job.init,
        job.affinities,
        negative_gradient_method="fft" if n >= FFT_MIN_POINTS and job.init.shape[1] <= 2 else "bh",
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
    x: np.ndarray, perplexity: float, seed: int, n_jobs: int
) -> PerplexityBasedNN:
    """One kNN graph (k = 3 * the largest perplexity) whose weights ``set_perplexity`` redoes for
    any smaller perplexity without a new neighbour search. x: (n, k) float32."""
    n = x.shape[0]
    return PerplexityBasedNN(
        x,
        perplexity=perplexity,
        method="exact" if n <= EXACT_KNN_MAX else "annoy",
        n_jobs=n_jobs,
        random_state=seed,
        k_neighbors=min(n - 1, int(3 * perplexity)),
    )
