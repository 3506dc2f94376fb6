"""Per-layer reduction: pooled activations -> PCA (90% variance) -> 2-D PCA and t-SNE maps.

The precompute runs this once per layer, so it is the part whose cost is multiplied by the
number of layers. Its input is already pooled at capture time (``features.pool_activations``).
The module needs no torch, so the worker processes that run it start in about two seconds. Stages,
each a small pure function with an explicit seed:

1. ``pca_reduce``: principal component analysis (Pearson 1901; Hotelling 1933) keeping the
   fewest components that explain 90% of the variance, through the cheaper of the covariance or
   Gram eigenproblem, or a randomized SVD (Halko, Martinsson & Tropp 2011) when both are large.
2. ``embed_layer``: t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008)
   with openTSNE (Poličar, Stražar & Zupan, J. Stat. Softw. 2024) at several perplexities and
   nested subsets, plus the first two principal components as the 2-D PCA view.

Why t-SNE is fast here: openTSNE's defaults (250 early-exaggeration + 500 main iterations per
map) cost 3-5 s per map for 1,797 points on two cores, and a layer has eight maps. Instead
(every number measured in ``benchmarks/bench_reduce.py``):

- one kNN graph per (layer, subset) at the largest perplexity, re-weighted for the others
  (``PerplexityBasedNN.set_perplexity``), so the neighbour search runs once per subset;
- 75 + 125 iterations (75 + 75 at small perplexity / n) instead of 250 + 500: a stronger early
  exaggeration (learning rate 0.35 n instead of n/12, Barnes-Hut theta 0.8 while exaggerated)
  and a main phase at learning rate 3n with momentum chosen from perplexity / n
  (``TSNESchedule``) reach the KL divergence of the defaults: the learning-rate argument of
  Belkina et al. (Nat. Commun. 2019) pushed further, kept stable by openTSNE's step clipping;
- the maps of a layer are independent (each starts from its subset's PCA initialisation), so
  they run in parallel, one single-threaded map per core, which also keeps a busy machine from
  stalling OpenMP barriers (a 2-thread map ran 3x slower than a 1-thread one under load).

Also measured and rejected (numbers in ``benchmarks/README.md``): shorter schedules, coarser
Barnes-Hut, one early-exaggeration phase shared by a subset's perplexities, FFT repulsion at
these sizes. Warm starts were measured and rejected too: a perplexity started from another perplexity's map
needs ~125 iterations (little saved, and it serialises the maps), and a subset started from its
rows of the larger subset's map gets stuck 10-30% above the default KL at perplexity 90.

The quality bar (checked by tests and the benchmark): KL divergence within 5% of openTSNE's
default ``TSNE().fit`` and 10-nearest-neighbour preservation within 0.02 of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from openTSNE import TSNEEmbedding
from openTSNE.affinity import PerplexityBasedNN
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.extmath import randomized_svd

from pipelines.cores import available_cores
from pipelines.errors import UserError
from pipelines.subsets import (
    largest_perplexity,
    nested_subset_order,
    resolve_perplexities,
    resolve_subset_sizes,
)
from pipelines.types import FloatArray

__all__ = [
    "EmbeddingKey",
    "MapJob",
    "TSNESchedule",
    "embed_layer",
    "kl_divergence",
    "knn_preservation",
    "largest_perplexity",
    "map_jobs",
    "nested_subset_order",
    "optimise_map",
    "pca_reduce",
    "resolve_perplexities",
    "resolve_subset_sizes",
    "tsne_maps",
]

# (subset size, "pca" | "tsne", perplexity or None for PCA)
EmbeddingKey = tuple[int, str, float | None]

# ---------------------------------------------------------------------------------------------
# 1. PCA
# ---------------------------------------------------------------------------------------------

# Above this many rows *and* columns, an exact eigenproblem (cubic in min(N, D)) costs more than a
# randomized SVD that only needs the leading components.
RANDOMIZED_MIN_SIDE = 4096
RANDOMIZED_FIRST_RANK = 256
RANDOMIZED_POWER_ITERATIONS = 6
# The 2-D PCA view and the t-SNE initialisation need two components even when one would do.
MIN_COMPONENTS = 2
# Each PCA form returns all eigenvalues first (to find k), then the scores of the top k on demand,
# as a (N, k) float32 numpy array.
ScoresFor = Callable[[int], np.ndarray]


def pca_reduce(
    features: np.ndarray, variance: float = 0.9, seed: int = 0
) -> tuple[FloatArray, dict]:
    """Principal component scores keeping the fewest components explaining >= ``variance``.

    features: (N, D) float (float32 expected). Returns ``(scores, info)``: scores (N, k) float32,
    sorted by explained variance, k >= 2; info = {"kept_dims": k, "explained_variance": float
    (fraction of the total variance the k components explain), "input_dims": D, "method":
    "covariance" | "gram" | "randomized" | "constant", "total_variance": float}.

    Never a full SVD of the data matrix: the covariance form (D x D eigh) when D <= N, the Gram
    form (N x N eigh) when N < D, randomized SVD when both exceed ``RANDOMIZED_MIN_SIDE``.
    Constant features (a dead ReLU layer is all zeros) have no variance to explain: they give
    zero scores, method "constant", explained_variance 1.0 (nothing is lost), and no NaNs.
    Component signs are fixed (largest |score| positive) so the result does not depend on the
    method or the LAPACK build.
    """
    x = as_feature_matrix(features)
    check_variance(variance)
    centred = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    total = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    return pca_of_centred(centred, total, variance, seed, NUMPY_FORMS)


def check_variance(variance: float) -> None:
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")


@dataclass(frozen=True)
class PCAForms:
    """One backend's three PCA forms (numpy/LAPACK here, PyTorch in ``pca_torch``). Each takes
    the centred (N, D) data and returns (all eigenvalues (m,) float64 descending, ScoresFor)."""

    covariance: Callable[[Any], tuple[np.ndarray, ScoresFor]]
    gram: Callable[[Any], tuple[np.ndarray, ScoresFor]]
    # Also gets (total, variance, seed): it widens its rank until ``variance`` is explained.
    randomized: Callable[[Any, float, float, int], tuple[np.ndarray, ScoresFor]]


def pca_of_centred(
    centred: Any, total: float, variance: float, seed: int, forms: PCAForms
) -> tuple[FloatArray, dict]:
    """``pca_reduce`` from the centred (N, D) data (a numpy array or a tensor, as ``forms``
    take) and its sum of squares ``total``: picks the form, k, the signs and the info dict, the
    same way for every backend."""
    n, d = (int(side) for side in centred.shape)
    if n < 2 or total <= 0.0:
        return constant_result(n, d)
    method = pca_method(n, d)
    if method == "randomized":
        eigenvalues, scores_for = forms.randomized(centred, total, variance, seed)
    else:
        eigenvalues, scores_for = getattr(forms, method)(centred)
    k = components_for_variance(eigenvalues, total, variance)
    scores = fix_signs(scores_for(k))
    if scores.shape[1] < MIN_COMPONENTS:
        # D == 1 (or rank-1 randomized output): pad so the 2-D PCA view still has two axes.
        scores = np.pad(scores, ((0, 0), (0, MIN_COMPONENTS - scores.shape[1])))
    explained = min(1.0, float(np.sum(eigenvalues[:k]) / total))
    info = {
        "kept_dims": int(scores.shape[1]),
        "explained_variance": explained,
        "input_dims": int(d),
        "method": method,
        "total_variance": total / (n - 1),
    }
    return scores.astype(np.float32), info


def pca_method(n: int, d: int) -> str:
    """Which PCA form ``pca_reduce`` uses for an (n, d) matrix: the smaller eigenproblem."""
    if min(n, d) > RANDOMIZED_MIN_SIDE:
        return "randomized"
    return "covariance" if d <= n else "gram"


def components_for_variance(eigenvalues: np.ndarray, total: float, variance: float) -> int:
    """Fewest leading components whose eigenvalues sum to >= ``variance * total``, at least 2.

    eigenvalues: (m,) float64, descending (squared singular values of the centred data).
    """
    cumulative = np.cumsum(eigenvalues) / total
    # A tiny tolerance so that e.g. exactly 90.0% counts as reaching 90% despite rounding.
    k = int(np.searchsorted(cumulative, variance - 1e-12) + 1)
    return max(MIN_COMPONENTS, min(k, eigenvalues.shape[0]))


def as_feature_matrix(features: np.ndarray) -> FloatArray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserError(
            "a layer's activations contain NaN or infinity; check the model and its input "
            "normalisation (run it on one image to see where values blow up)"
        )
    return x


def constant_result(n: int, d: int) -> tuple[FloatArray, dict]:
    info = {
        "kept_dims": MIN_COMPONENTS,
        "explained_variance": 1.0,
        "input_dims": int(d),
        "method": "constant",
        "total_variance": 0.0,
    }
    return np.zeros((n, MIN_COMPONENTS), dtype=np.float32), info


def _descending_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix, largest first. matrix: (m, m) float32 ->
    (values (m,) float64, vectors (m, m) float32)."""
    # Divide-and-conquer ("evd") is LAPACK's fastest driver when all eigenpairs are needed; float32
    # halves its time, and the 90% cut it gives matched sklearn's float64 SVD to ~1e-7 (benchmark).
    values, vectors = scipy.linalg.eigh(matrix, driver="evd", overwrite_a=True, check_finite=False)
    values = np.clip(values[::-1].astype(np.float64), 0.0, None)  # negatives are rounding
    return values, np.ascontiguousarray(vectors[:, ::-1])


def _covariance_eig(centred: FloatArray) -> tuple[np.ndarray, ScoresFor]:
    """D x D eigenproblem of X^T X; scores = X V. centred: (N, D) float32."""
    values, vectors = _descending_eigh(centred.T @ centred)

    def scores_for(k: int) -> np.ndarray:
        return centred @ vectors[:, :k]

    return values, scores_for


def _gram_eig(centred: FloatArray) -> tuple[np.ndarray, ScoresFor]:
    """N x N eigenproblem of X X^T; scores = U S (the same scores as X V). centred: (N, D)."""
    values, vectors = _descending_eigh(centred @ centred.T)

    def scores_for(k: int) -> np.ndarray:
        return vectors[:, :k] * np.sqrt(values[:k]).astype(np.float32)

    return values, scores_for


def _randomized_eig(
    centred: FloatArray, total: float, variance: float, seed: int
) -> tuple[np.ndarray, ScoresFor]:
    """Leading singular triplets by randomized SVD, widening the rank until ``variance`` is
    explained. If 90% needs (almost) every component, the rank grows to full and this degrades to
    an SVD, which only happens for nearly white data. centred: (N, D) float32."""
    rank, full = RANDOMIZED_FIRST_RANK, min(centred.shape)
    while True:
        rank = min(rank, full)
        u, s, _ = randomized_svd(
            centred,
            n_components=rank,
            n_iter=RANDOMIZED_POWER_ITERATIONS,
            random_state=seed,
        )
        values = s.astype(np.float64) ** 2
        if values.sum() >= variance * total or rank == full:
            break
        rank *= 2

    def scores_for(k: int) -> np.ndarray:
        return u[:, :k] * s[:k]

    return values, scores_for


NUMPY_FORMS = PCAForms(covariance=_covariance_eig, gram=_gram_eig, randomized=_randomized_eig)


def fix_signs(scores: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude score is positive. scores: (N, k)."""
    if scores.size == 0:
        return scores
    rows = np.argmax(np.abs(scores), axis=0)
    signs = np.sign(scores[rows, np.arange(scores.shape[1])])
    signs[signs == 0] = 1.0
    return scores * signs


# ---------------------------------------------------------------------------------------------
# 2. 2-D maps: PCA and t-SNE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TSNESchedule:
    """The optimisation schedule of every t-SNE map (see the module docstring for why).

    Learning rates are multiples of the number of points n, as in openTSNE's ``"auto"`` (n /
    exaggeration). Momentum in the main phase is ``1 - momentum_ratio * perplexity / n`` clipped
    to [min_momentum, max_momentum]: measured on digits, high momentum is what makes 125
    iterations enough at small perplexity / n, while at large perplexity / n (k = 3 * perplexity
    neighbours reach across clusters) it oscillates and a lower value converges faster. Where the
    momentum is at its maximum (perplexity 10 on 1,000 points or more), the map is within 1% of
    its 125-iteration KL after ``fast_main_iter`` iterations, so it stops there: 12% less t-SNE
    time for the embedded default, the same worst-case KL against openTSNE's defaults (measured
    on five smallcnn layers, ``benchmarks/bench_reduce.py``).
    """

    early_iter: int = 75
    early_exaggeration: float = 12.0
    early_learning_rate: float = 0.35  # x n; openTSNE's default is n / 12
    early_momentum: float = 0.5
    main_iter: int = 125
    fast_main_iter: int = 75  # where the momentum is at max_momentum
    learning_rate: float = 3.0  # x n; openTSNE's default is n
    momentum_ratio: float = 4.0
    min_momentum: float = 0.5
    max_momentum: float = 0.95
    theta: float = 0.5  # Barnes-Hut accuracy (openTSNE's default)
    early_theta: float = 0.8  # coarser while exaggerated: ~10% faster, same final KL (benchmark)

    def momentum(self, perplexity: float, n: int) -> float:
        """Main-phase momentum for ``n`` points at ``perplexity``."""
        wanted = 1.0 - self.momentum_ratio * perplexity / n
        return min(self.max_momentum, max(self.min_momentum, wanted))

    def main_iterations(self, perplexity: float, n: int) -> int:
        """Main-phase iterations for ``n`` points at ``perplexity``."""
        if self.momentum(perplexity, n) >= self.max_momentum:
            return min(self.main_iter, self.fast_main_iter)
        return self.main_iter


SCHEDULE = TSNESchedule()
# kNN: exact search is deterministic and, on PCA scores, faster than building Annoy trees (13,000
# x 28: 1.8 s exact vs 7-9 s Annoy on two cores); approximate search only beyond this size.
EXACT_KNN_MAX = 20_000
# openTSNE's own switch point: FFT-interpolated repulsion beats Barnes-Hut above ~10k points.
FFT_MIN_POINTS = 10_000
INIT_STD = 1e-4  # openTSNE's PCA initialisation scale: small, so early steps shape the map
INIT_JITTER = 0.01


@dataclass(frozen=True, eq=False)
class MapJob:
    """One t-SNE map to optimise: subset size, perplexity and its own affinity matrix."""

    n: int
    perplexity: float
    affinities: PerplexityBasedNN
    init: np.ndarray  # (n, 2) float64


def embed_layer(
    scores: np.ndarray,
    subset_sizes: list[int],
    perplexities: dict[int, list[float]],
    seed: int,
    n_jobs: int = -1,
) -> dict[EmbeddingKey, FloatArray]:
    """All 2-D maps of one layer.

    scores: (N, k) float32 PCA scores whose rows are ALREADY in nested-subset order (subset n =
    rows [:n]). subset_sizes: sizes <= N. perplexities: {n: perplexities for subset n} as from
    ``resolve_perplexities`` (a missing size means no t-SNE for it).
    Returns {(n, "pca", None): (n, 2) float32, (n, "tsne", p): (n, 2) float32 for each subset n
    and each of its perplexities}.

    The PCA map is the first two principal components of the whole layer, so a sample sits at
    the same place in every subset. Each t-SNE map starts from the subset's PCA initialisation;
    one kNN graph per subset serves all its perplexities; the maps are independent, so they are
    optimised in parallel, one per core (``tsne_maps``). Deterministic for a given seed; below
    ``FFT_MIN_POINTS`` also whatever ``n_jobs`` (Barnes-Hut sums each point's forces on one thread).
    """
    x = np.ascontiguousarray(scores, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (N, k) with N > 0, got shape {x.shape}")
    sizes = sorted({int(n) for n in subset_sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > x.shape[0]:
        raise ValueError(f"subset sizes {subset_sizes} must lie in 1..{x.shape[0]}")
    cores = _cores(n_jobs)
    pca_2d = _pad_columns(x[:, :2], 2)
    result: dict[EmbeddingKey, FloatArray] = {
        (n, "pca", None): np.ascontiguousarray(pca_2d[:n]) for n in sizes
    }
    wanted = {n: sorted({float(p) for p in perplexities.get(n, [])}) for n in sizes}
    for n, values in wanted.items():
        for p in values:
            if not p < n / 3:
                raise ValueError(
                    f"perplexity {p:g} needs more than {3 * p:g} points; subset has {n}"
                )
    for (n, p), coords in tsne_maps(x, wanted, seed, cores).items():
        result[(n, "tsne", p)] = coords.astype(np.float32)
    return result


def tsne_maps(
    x: np.ndarray,
    perplexities: dict[int, list[float]],
    seed: int,
    cores: int,
    schedule: TSNESchedule = SCHEDULE,
) -> dict[tuple[int, float], np.ndarray]:
    """Every t-SNE map of a layer, optimised on a pool of ``cores`` threads.

    x: (N, k) float32 in nested-subset order; perplexities: {subset size n: ascending
    perplexities, each < n / 3}. Returns {(n, perplexity): (n, 2) float64}.

    Each subset's kNN graph is built on the pool too, so the big subset's maps start while the
    smaller subsets' graphs are still being built; maps are queued biggest first. openTSNE's
    gradient code releases the GIL, and one single-threaded map per core avoids the OpenMP
    barriers that make a 2-thread map slower than a 1-thread one on a busy machine.
    """
    sizes = sorted((n for n, values in perplexities.items() if values), reverse=True)
    total = sum(len(perplexities[n]) for n in sizes)
    if not total:
        return {}
    workers = min(cores, total)
    threads = max(1, cores // workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsne")
    try:
        graphs = [pool.submit(map_jobs, x[:n], perplexities[n], seed, threads) for n in sizes]
        maps = {}
        for graph in graphs:
            # Highest perplexity first: its attraction term makes it the slowest map of a subset.
            for job in reversed(graph.result()):
                maps[(job.n, job.perplexity)] = pool.submit(optimise_map, job, threads, schedule)
        return {key: future.result() for key, future in maps.items()}
    finally:
        # On an error or Ctrl-C, maps not yet started are dropped instead of run to the end.
        pool.shutdown(wait=True, cancel_futures=True)


def map_jobs(x: np.ndarray, perplexities: list[float], seed: int, threads: int) -> list[MapJob]:
    """The t-SNE maps of one subset, sharing its kNN graph, ready to optimise.

    x: (n, k) float32 scores of the subset; perplexities: ascending, each < n / 3. Returns one
    ``MapJob`` per perplexity, in that order.
    """
    n = x.shape[0]
    shared = shared_affinities(x, perplexities[-1], seed, threads)
    init = pca_initialisation(x, seed)
    jobs = []
    # Largest first: the graph was built at that perplexity, so its P is reused as is.
    for p in reversed(perplexities):
        shared.set_perplexity(p)
        # set_perplexity assigns a fresh P matrix, so a shallow copy keeps this perplexity's P
        # (and shares the kNN graph); each map can then be optimised on its own thread.
        jobs.append(MapJob(n, p, copy.copy(shared), init))
    return jobs[::-1]


def optimise_map(job: MapJob, threads: int, schedule: TSNESchedule = SCHEDULE) -> np.ndarray:
    """Early exaggeration then the main phase (van der Maaten & Hinton 2008; openTSNE's two
    ``optimize`` calls), with the accelerated ``schedule``. Returns (n, 2) float64."""
    n = job.n
    embedding = TSNEEmbedding(
        job.init,
        job.affinities,
        negative_gradient_method="fft" if n >= FFT_MIN_POINTS else "bh",
        theta=schedule.theta,
        n_jobs=threads,
    )
    embedding.optimize(
        schedule.early_iter,
        exaggeration=schedule.early_exaggeration,
        momentum=schedule.early_momentum,
        learning_rate=schedule.early_learning_rate * n,
        theta=schedule.early_theta,
        inplace=True,
    )
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


def pca_initialisation(x: np.ndarray, seed: int) -> np.ndarray:
    """openTSNE's PCA initialisation, from PCA scores: the first two columns, centred, scaled so
    the first has std 1e-4, plus 1% jitter. A layer with no spread (all points equal) gets a
    seeded random start instead of a division by zero. x: (n, k) float32 -> (n, 2) float64."""
    rng = np.random.default_rng(seed)
    init = _pad_columns(x[:, :2], 2).astype(np.float64)
    init -= init.mean(axis=0)
    spread = init[:, 0].std()
    if not spread > 0:
        return rng.normal(0.0, INIT_STD, size=init.shape)
    init *= INIT_STD / spread
    init += rng.normal(0.0, INIT_STD * INIT_JITTER, size=init.shape)
    return init


def _cores(n_jobs: int) -> int:
    """scikit-learn's convention: -1 is all cores, -2 all but one, ..."""
    available = available_cores()
    wanted = available + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, min(wanted, available))


def _pad_columns(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] >= width:
        return x
    return np.pad(x, ((0, 0), (0, width - x.shape[1])))


# ---------------------------------------------------------------------------------------------
# Quality metrics (used by tests and the benchmark)
# ---------------------------------------------------------------------------------------------


def knn_preservation(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each point's k nearest neighbours in ``x`` that are also among its k
    nearest neighbours in ``y``. x: (n, d) float, y: (n, 2) float; exact Euclidean kNN."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    k = min(k, x.shape[0] - 1)
    in_x = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(return_distance=False)
    in_y = NearestNeighbors(n_neighbors=k).fit(y).kneighbors(return_distance=False)
    # Row-wise set intersection by broadcasting: (n, k, 1) == (n, 1, k).
    shared = (in_x[:, :, None] == in_y[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / k)


def kl_divergence(x: np.ndarray, y: np.ndarray, perplexity: float, n_jobs: int = 1) -> float:
    """KL(P || Q) of embedding y for data x, as openTSNE reports it.

    x: (n, d) float, y: (n, 2) float. P uses exact kNN at ``perplexity`` and Q is evaluated with
    Barnes-Hut at theta = 0 (exact), so two embeddings of the same x are compared under the same
    P, whatever kNN method or approximation produced them.
    """
    affinities = PerplexityBasedNN(
        np.asarray(x, dtype=np.float32),
        perplexity=perplexity,
        method="exact",
        n_jobs=n_jobs,
        k_neighbors=min(x.shape[0] - 1, int(3 * perplexity)),
    )
    embedding = TSNEEmbedding(
        np.asarray(y, dtype=np.float64),
        affinities,
        negative_gradient_method="bh",
        theta=0.0,
        n_jobs=n_jobs,
    )
    # Zero iterations: openTSNE only evaluates the objective at the given positions.
    return float(embedding.optimize(0, inplace=True).kl_divergence)
