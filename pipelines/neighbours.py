"""Each sample's most similar other samples in one layer's features (cosine), and how atypical
each sample is: what near-duplicate groups and the outlier view of the quality stage are made of.

One engine, the candidate search a parameter: up to ``EXACT_MAX_SAMPLES`` samples an exact search
(blocked matrix products, memory-bounded), beyond it a faiss inverted-file index (``IndexIVFFlat``,
inner product on unit vectors). Either way the candidates' similarities are then recomputed in
float64 and re-sorted (``refine``), so the numbers never depend on the backend's rounding: two
identical feature rows have similarity exactly 1.0 and each is the other's first neighbour,
whichever backend found them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.types import FloatArray, IntArray

# Up to this many samples the exact search is used: at 20,000 samples of 512 values it is one
# (20,000 x 20,000) product in blocks, seconds on two cores; beyond it the exact search grows
# with N^2 and the index's with about N^1.5.
EXACT_MAX_SAMPLES = 20_000
# The exact search's similarity block (rows x N float32) stays under this many bytes.
BLOCK_BYTES = 64 * 2**20
# faiss IVF: about 4 sqrt(N) cells, each query scanning NPROBE of them. IVF rather than HNSW:
# its search is exact within the scanned cells and its build (k-means, fixed seed) is the same
# from run to run, so a resumed precompute finds the same neighbours; an HNSW graph built on
# several threads is not. Near-duplicates (similarity near 1) share a cell or neighbouring
# cells, the ones a query scans first.
IVF_CELLS_PER_SQRT_N = 4
IVF_NPROBE = 32
IVF_SEED = 1234
IVF_TRAIN_PER_CELL = 64  # k-means training rows per cell (faiss warns below 39)


@dataclass(frozen=True)
class Neighbours:
    """neighbours: (N, K) int64 rows of the K most similar other samples, most similar first;
    similarities: (N, K) float32 cosine similarity in [-1, 1]; index: "exact" or the faiss index
    that found the candidates. K = min(requested, N - 1)."""

    neighbours: IntArray
    similarities: FloatArray
    index: str

    @property
    def outlier_score(self) -> FloatArray:
        """(N,) float32: mean cosine distance (1 - similarity) to the K neighbours; higher means
        less typical. Zero where there are no neighbours (a run of one sample)."""
        if self.similarities.shape[1] == 0:
            return np.zeros(len(self.similarities), dtype=np.float32)
        return (1.0 - self.similarities.astype(np.float64)).mean(axis=1).astype(np.float32)


def centred(features: npt.NDArray[np.floating]) -> FloatArray:
    """features: (N, D) float16/float32 -> (N, D) float32 minus the column mean.

    Centred because a layer's features after a ReLU are all non-negative, so every pair of
    samples points into the same orthant and raw cosines crowd near 1: on digits + smallcnn the
    median nearest-neighbour cosine of the last hidden layer (128 values) is 0.991 raw and 0.976
    centred, and 1,546 of 1,797 samples have a neighbour above 0.98 raw against 717 centred
    (features.8: 283 against 12). Identical rows stay identical.
    """
    x = np.asarray(features, dtype=np.float32)
    return x - x.mean(axis=0, dtype=np.float64).astype(np.float32)


def unit_rows(x: npt.NDArray[np.floating], dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to length 1 in ``dtype``; an all-zero row stays zero (similarity 0 to all)."""
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def nearest_neighbours(
    features: npt.NDArray[np.floating],
    k: int,
    exact_max: int = EXACT_MAX_SAMPLES,
    progress: Callable[[int], None] | None = None,
) -> Neighbours:
    """The ``k`` most similar other rows of each row of ``features`` (N, D), by cosine similarity
    of the centred features (``centred``). The exact search up to ``exact_max`` rows, faiss
    beyond; ``progress`` is called with the number of rows each block finishes."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = centred(features)
    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        empty = np.zeros((n, 0), dtype=np.int64)
        return Neighbours(empty, empty.astype(np.float32), "exact")
    unit = unit_rows(x)
    if n <= exact_max:
        candidates, index = exact_candidates(unit, k, progress), "exact"
    else:
        candidates, index = faiss_candidates(unit, k), "faiss IndexIVFFlat"
    neighbours, similarities = refine(x, candidates)
    return Neighbours(neighbours, similarities, index)


def block_rows(n: int, row_bytes: int) -> int:
    """Rows per block so that a block of ``row_bytes`` per row stays under ``BLOCK_BYTES``."""
    return max(1, min(n, BLOCK_BYTES // max(1, row_bytes)))


def exact_candidates(
    unit: FloatArray, k: int, progress: Callable[[int], None] | None = None
) -> IntArray:
    """unit: (N, D) float32 unit rows -> (N, k) int64, each row's k largest inner products with
    the other rows (unordered), by blocks of rows against all rows."""
    n = len(unit)
    candidates = np.empty((n, k), dtype=np.int64)
    step = block_rows(n, n * 4)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = unit[start:stop] @ unit.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        candidates[start:stop] = np.argpartition(-block, k - 1, axis=1)[:, :k]
        if progress is not None:
            progress(stop - start)
    return candidates


def faiss_candidates(unit: FloatArray, k: int) -> IntArray:
    """unit: (N, D) float32 unit rows -> (N, k) int64 candidates from a faiss ``IndexIVFFlat``
    with inner product (on unit rows, the cosine). Rows the index returns too few results for
    (-1 in faiss's answer) get them from an exact search of that row."""
    import faiss  # only the large runs need it

    n, d = unit.shape
    cells = max(1, min(n // IVF_TRAIN_PER_CELL, int(IVF_CELLS_PER_SQRT_N * np.sqrt(n))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = IVF_SEED
    training = np.random.default_rng(IVF_SEED).permutation(n)[: cells * IVF_TRAIN_PER_CELL]
    index.train(np.ascontiguousarray(unit[np.sort(training)]))
    index.add(unit)
    index.nprobe = min(IVF_NPROBE, cells)
    _, found = index.search(unit, k + 1)
    candidates = np.empty((n, k), dtype=np.int64)
    for row in range(n):
        others = found[row][(found[row] != row) & (found[row] >= 0)][:k]
        if len(others) < k:
            scores = unit @ unit[row]
            scores[row] = -np.inf
            others = np.argpartition(-scores, k - 1)[:k]
        candidates[row] = others
    return candidates


def refine(x: FloatArray, candidates: IntArray) -> tuple[IntArray, FloatArray]:
    """x: (N, D) float32 centred features; candidates: (N, k) int64 -> (neighbours, similarities)
    with the candidates' cosines recomputed in float64 from ``x`` and sorted, most similar first
    (ties by row). In float64 a row's cosine with an identical row is 1 to within 1e-16, which
    float32 stores as exactly 1.0; a float32 product can say 0.9999999."""
    n, k = candidates.shape
    neighbours = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    step = block_rows(n, (k + 1) * x.shape[1] * 8)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = unit_rows(x[start:stop], np.float64)
        others = unit_rows(x[candidates[start:stop]], np.float64)
        cosines = np.clip(np.einsum("bd,bkd->bk", rows, others), -1.0, 1.0)
        # Most similar first; among equals the lower row first, so the order is reproducible.
        order = np.lexsort((candidates[start:stop], -cosines), axis=1)
        neighbours[start:stop] = np.take_along_axis(candidates[start:stop], order, axis=1)
        similarities[start:stop] = np.take_along_axis(cosines, order, axis=1)
    return neighbours, similarities
