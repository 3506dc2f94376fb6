"""Per-layer reduction: pooled activations -> PCA (90% variance) -> 2-D PCA and t-SNE maps.

The precompute runs this once per layer, so it is the part whose cost is multiplied by the
number of layers. Its input is already pooled at capture time (``features.pool_activations``).
The module needs no torch, so the worker processes that run it start in about two seconds. Stages,
each a small pure function with an explicit seed:

1. ``pca_fit``: principal component analysis (Pearson 1901; Hotelling 1933) keeping the
   fewest components that explain 90% of the variance, through the cheaper of the covariance or
   Gram eigenproblem, or a randomized SVD (Halko, Martinsson & Tropp 2011) when both are large.
   Its basis (mean and components) is kept with the scores, so a new image's pooled features
   ``project`` onto the very scores the maps were made from (``pipelines/placement.py``).
2. ``pca_maps``: the first two principal components as the 2-D PCA view; ``tsne_maps``: t-SNE
   maps at several perplexities and nested subsets through ``tsne.fit`` (its module docstring says why
   the schedule is fast and what the backend changes), openTSNE on the CPU by default.

The quality metrics the tests and benchmarks judge maps by (``knn_preservation``,
``kl_divergence``) live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from pipelines import tsne
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
    "embed_layer",
    "pca_maps",
    "tsne_maps",
    "kl_divergence",
    "knn_preservation",
    "largest_perplexity",
    "PCAFit",
    "nested_subset_order",
    "pca_fit",
    "pca_reduce",
    "project",
    "resolve_perplexities",
    "resolve_subset_sizes",
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
# Each PCA form returns all eigenvalues first (to find k), then, on demand, the top k components
# as (k, D) float32 numpy rows and the samples' scores on them, (N, k) float32 numpy.
ComponentsFor = Callable[[int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class PCAFit:
    """One layer's PCA: its samples' scores and the basis that gives them, so a new sample's
    pooled features project to the same space (``project``).

    scores: (N, k) float32, columns by descending variance, k >= 2; mean: (D,) float32, the
    features' mean; components: (k, D) float32, orthonormal rows (zero rows where a constant
    layer or D == 1 leaves fewer than two axes); info: as ``pca_reduce`` documents it.
    ``scores == project(features)`` up to float rounding, signs included.
    """

    scores: FloatArray
    mean: FloatArray
    components: FloatArray
    info: dict

    def project(self, features: np.ndarray) -> FloatArray:
        """features: (M, D) float pooled activations -> (M, k) float32 scores."""
        return project(features, self.mean, self.components)


def project(features: np.ndarray, mean: np.ndarray, components: np.ndarray) -> FloatArray:
    """PCA scores of new samples on a stored basis: ``(features - mean) @ components.T``, in
    float32 as the layer's own scores were computed. features: (M, D); mean: (D,); components:
    (k, D). Returns (M, k) float32."""
    x = as_feature_matrix(features)
    if x.shape[1] != mean.shape[0] or components.shape[1] != mean.shape[0]:
        raise ValueError(
            f"features have {x.shape[1]} dimensions but the PCA basis has {mean.shape[0]}"
        )
    centred = x - np.asarray(mean, dtype=np.float32)
    return np.asarray(centred @ np.asarray(components, dtype=np.float32).T, dtype=np.float32)


def pca_fit(features: np.ndarray, variance: float = 0.9, seed: int = 0) -> PCAFit:
    """Principal component analysis keeping the fewest components explaining >= ``variance``.

    features: (N, D) float (float32 expected). Returns a ``PCAFit``: the scores (N, k) float32,
    sorted by explained variance, k >= 2, with the mean and components that give them, and
    info = {"kept_dims": k, "explained_variance": float (fraction of the total variance the k
    components explain), "input_dims": D, "method": "covariance" | "gram" | "randomized" |
    "constant", "total_variance": float}.

    Never a full SVD of the data matrix: the covariance form (D x D eigh) when D <= N, the Gram
    form (N x N eigh) when N < D, randomized SVD when both exceed ``RANDOMIZED_MIN_SIDE``.
    Constant features (a dead ReLU layer is all zeros) have no variance to explain: they give
    zero scores and components, method "constant", explained_variance 1.0 (nothing is lost),
    and no NaNs. Component signs are fixed (largest |score| positive) so the result does not
    depend on the method or the LAPACK build.
    """
    x = as_feature_matrix(features)
    check_variance(variance)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = x - mean
    total = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    return pca_of_centred(centred, mean, total, variance, seed, NUMPY_FORMS)


def pca_reduce(
    features: np.ndarray, variance: float = 0.9, seed: int = 0
) -> tuple[FloatArray, dict]:
    """``pca_fit``'s scores (N, k) float32 and info, for callers that need no basis."""
    fit = pca_fit(features, variance, seed)
    return fit.scores, fit.info


def check_variance(variance: float) -> None:
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")


@dataclass(frozen=True)
class PCAForms:
    """One backend's three PCA forms (numpy/LAPACK here, PyTorch in ``pca_torch``). Each takes
    the centred (N, D) data and returns (all eigenvalues (m,) float64 descending,
    ComponentsFor)."""

    covariance: Callable[[Any], tuple[np.ndarray, ComponentsFor]]
    gram: Callable[[Any], tuple[np.ndarray, ComponentsFor]]
    # Also gets (total, variance, seed): it widens its rank until ``variance`` is explained.
    randomized: Callable[[Any, float, float, int], tuple[np.ndarray, ComponentsFor]]


def pca_of_centred(
    centred: Any, mean: np.ndarray, total: float, variance: float, seed: int, forms: PCAForms
) -> PCAFit:
    """``pca_fit`` from the centred (N, D) data (a numpy array or a tensor, as ``forms``
    take), its mean (D,) float32 numpy and its sum of squares ``total``: picks the form, k, the
    signs and the info dict, the same way for every backend."""
    n, d = (int(side) for side in centred.shape)
    if n < 2 or total <= 0.0:
        return constant_result(n, mean)
    method = pca_method(n, d)
    if method == "randomized":
        eigenvalues, components_for = forms.randomized(centred, total, variance, seed)
    else:
        eigenvalues, components_for = getattr(forms, method)(centred)
    k = components_for_variance(eigenvalues, total, variance)
    components, scores = components_for(k)
    # One sign per component, applied to its scores and its axis alike, so projecting a
    # sample reproduces its signed scores.
    signs = component_signs(scores)
    scores, components = scores * signs, components * signs[:, None]
    if scores.shape[1] < MIN_COMPONENTS:
        # D == 1 (or rank-1 randomized output): pad so the 2-D PCA view still has two axes.
        missing = MIN_COMPONENTS - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, missing)))
        components = np.pad(components, ((0, missing), (0, 0)))
    explained = min(1.0, float(np.sum(eigenvalues[:k]) / total))
    info = {
        "kept_dims": int(scores.shape[1]),
        "explained_variance": explained,
        "input_dims": int(d),
        "method": method,
        "total_variance": total / (n - 1),
    }
    return PCAFit(
        scores=np.ascontiguousarray(scores, dtype=np.float32),
        mean=np.ascontiguousarray(mean, dtype=np.float32),
        components=np.ascontiguousarray(components, dtype=np.float32),
        info=info,
    )


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


def constant_result(n: int, mean: np.ndarray) -> PCAFit:
    d = int(mean.shape[0])
    info = {
        "kept_dims": MIN_COMPONENTS,
        "explained_variance": 1.0,
        "input_dims": d,
        "method": "constant",
        "total_variance": 0.0,
    }
    return PCAFit(
        scores=np.zeros((n, MIN_COMPONENTS), dtype=np.float32),
        mean=np.ascontiguousarray(mean, dtype=np.float32),
        components=np.zeros((MIN_COMPONENTS, d), dtype=np.float32),
        info=info,
    )


def _descending_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix, largest first. matrix: (m, m) float32 ->
    (values (m,) float64, vectors (m, m) float32)."""
    # Divide-and-conquer ("evd") is LAPACK's fastest driver when all eigenpairs are needed; float32
    # halves its time, and the 90% cut it gives matched sklearn's float64 SVD to ~1e-7 (benchmark).
    values, vectors = scipy.linalg.eigh(matrix, driver="evd", overwrite_a=True, check_finite=False)
    values = np.clip(values[::-1].astype(np.float64), 0.0, None)  # negatives are rounding
    return values, np.ascontiguousarray(vectors[:, ::-1])


def _covariance_eig(centred: FloatArray) -> tuple[np.ndarray, ComponentsFor]:
    """D x D eigenproblem of X^T X; components V^T, scores X V. centred: (N, D) float32."""
    values, vectors = _descending_eigh(centred.T @ centred)

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ascontiguousarray(vectors[:, :k].T), centred @ vectors[:, :k]

    return values, components_for


def _gram_eig(centred: FloatArray) -> tuple[np.ndarray, ComponentsFor]:
    """N x N eigenproblem of X X^T = U S^2 U^T; components V^T = S^-1 U^T X, scores X V (= U S).
    centred: (N, D)."""
    values, vectors = _descending_eigh(centred @ centred.T)

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        components = scaled_rows(vectors[:, :k].T @ centred, values[:k])
        # X V rather than U S: the scores are then exactly what projecting a sample gives.
        return components, centred @ components.T

    return values, components_for


def scaled_rows(rows: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """rows (k, D) divided by the singular values sqrt(eigenvalues) (k,); rows of a zero
    singular value (a rank below k) become zero instead of NaN."""
    singular = np.sqrt(eigenvalues)
    inverse = np.divide(1.0, singular, out=np.zeros_like(singular), where=singular > 0)
    return (rows * inverse[:, None].astype(np.float32)).astype(np.float32)


def _randomized_eig(
    centred: FloatArray, total: float, variance: float, seed: int
) -> tuple[np.ndarray, ComponentsFor]:
    """Leading singular triplets by randomized SVD, widening the rank until ``variance`` is
    explained. If 90% needs (almost) every component, the rank grows to full and this degrades to
    an SVD, which only happens for nearly white data. centred: (N, D) float32."""
    # Imported here, like openTSNE below: scikit-learn is 1.5 s of a core, and a precompute's
    # first page (issue 13) needs none of it.
    from sklearn.utils.extmath import randomized_svd

    rank, full = RANDOMIZED_FIRST_RANK, min(centred.shape)
    while True:
        rank = min(rank, full)
        _, s, vt = randomized_svd(
            centred,
            n_components=rank,
            n_iter=RANDOMIZED_POWER_ITERATIONS,
            random_state=seed,
        )
        values = s.astype(np.float64) ** 2
        if values.sum() >= variance * total or rank == full:
            break
        rank *= 2

    def components_for(k: int) -> tuple[np.ndarray, np.ndarray]:
        components = np.ascontiguousarray(vt[:k], dtype=np.float32)
        return components, centred @ components.T

    return values, components_for


NUMPY_FORMS = PCAForms(covariance=_covariance_eig, gram=_gram_eig, randomized=_randomized_eig)


def component_signs(scores: np.ndarray) -> np.ndarray:
    """(k,) float32 +-1: the sign that makes each component's largest-magnitude score positive.
    scores: (N, k)."""
    if scores.size == 0:
        return np.ones(scores.shape[1], dtype=np.float32)
    rows = np.argmax(np.abs(scores), axis=0)
    signs = np.sign(scores[rows, np.arange(scores.shape[1])]).astype(np.float32)
    signs[signs == 0] = 1.0
    return signs


# ---------------------------------------------------------------------------------------------
# 2. 2-D maps: PCA and t-SNE
# ---------------------------------------------------------------------------------------------


def embed_layer(
    scores: np.ndarray,
    subset_sizes: list[int],
    perplexities: dict[int, list[float]],
    seed: int,
    n_jobs: int = -1,
    backend: tsne.Backend = "opentsne",
    device: str | None = None,
) -> dict[EmbeddingKey, FloatArray]:
    """All 2-D maps of one layer: ``pca_maps`` and ``tsne_maps`` together.

    scores: (N, k) float32 PCA scores whose rows are ALREADY in nested-subset order (subset n =
    rows [:n]). subset_sizes: sizes <= N. perplexities: {n: perplexities for subset n} as from
    ``resolve_perplexities`` (a missing size means no t-SNE for it).
    Returns {(n, "pca", None): (n, 2) float32, (n, "tsne", p): (n, 2) float32 for each subset n
    and each of its perplexities}.
    """
    return {
        **pca_maps(scores, subset_sizes),
        **tsne_maps(scores, subset_sizes, perplexities, seed, n_jobs, backend, device),
    }


def pca_maps(scores: np.ndarray, subset_sizes: list[int]) -> dict[EmbeddingKey, FloatArray]:
    """{(n, "pca", None): (n, 2) float32} per subset n: the first two principal components of
    the whole layer, so a sample sits at the same place in every subset. Instant: the
    precompute stores these for every layer before any t-SNE, so the page can open early."""
    x, sizes = _checked(scores, subset_sizes)
    pca_2d = _pad_columns(x[:, :2], 2)
    return {(n, "pca", None): np.ascontiguousarray(pca_2d[:n]) for n in sizes}


def tsne_maps(
    scores: np.ndarray,
    subset_sizes: list[int],
    perplexities: dict[int, list[float]],
    seed: int,
    n_jobs: int = -1,
    backend: tsne.Backend = "opentsne",
    device: str | None = None,
) -> dict[EmbeddingKey, FloatArray]:
    """{(n, "tsne", p): (n, 2) float32} per subset n and each of its perplexities: ``tsne.fit``'s
    maps, with ``backend`` (and ``device``, for the torch backend); the openTSNE backend optimises
    them in parallel on ``n_jobs`` cores (scikit-learn's convention: -1 is all). Deterministic for
    a given seed and backend; with openTSNE below ``tsne_opentsne.FFT_MIN_POINTS`` also whatever
    ``n_jobs``."""
    x, sizes = _checked(scores, subset_sizes)
    wanted = {n: perplexities.get(n, []) for n in sizes}
    # The openTSNE backend threads over cores; the torch one runs on its device.
    cores: dict[str, Any] = {"cores": _cores(n_jobs)} if backend == "opentsne" else {}
    return {
        (n, "tsne", p): coords
        for (n, p), coords in tsne.fit(x, wanted, seed, backend, device=device, **cores).items()
    }


def _checked(scores: np.ndarray, subset_sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """scores as contiguous float32 (N, k) and the sorted distinct subset sizes, checked."""
    x = np.ascontiguousarray(scores, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (N, k) with N > 0, got shape {x.shape}")
    sizes = sorted({int(n) for n in subset_sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > x.shape[0]:
        raise ValueError(f"subset sizes {subset_sizes} must lie in 1..{x.shape[0]}")
    return x, sizes


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
    from sklearn.neighbors import NearestNeighbors

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
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN

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
