"""3-D maps of one layer for the dashboard's optional 3-D view, from its stored PCA scores.

Neither is precomputed: 3-D PCA is the first three columns of the layer's ``pca_scores``, and
3-D t-SNE is computed on demand (a background job of the dashboard) and then stored as the
``embedding3d`` artifact, once per (layer, subset, perplexity).

3-D t-SNE is the embeddings stage's own openTSNE map (``tsne_opentsne.optimise_map``: the same
affinities, schedule and PCA start, ``tsne.initial_layout`` with three columns) with Barnes-Hut
repulsion, which openTSNE runs in any dimension (its FFT interpolation is 1-2-D only). Measured
against scikit-learn's ``TSNE(n_components=3)`` (Barnes-Hut, its defaults) on digits (1,797
points, PCA 21, perplexity 30, 2 cores): 3.5 s against 83 s, 10-NN accuracy 0.969 against 0.975
(``benchmarks/README.md``). The torch backend (``tsne_torch``) is 2-D only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.tsne import SCHEDULE, initial_layout
from pipelines.types import FloatArray

DIMS = 3


@dataclass(frozen=True)
class Map3D:
    """A 3-D map: ``coords`` (n, 3) float32, row i = sample row i; ``pca_dims`` the PCA
    dimensions it came from (below 3: the missing axes are zeros)."""

    coords: FloatArray
    pca_dims: int

    @property
    def padded(self) -> bool:
        return self.pca_dims < DIMS


def pca_3d(scores: np.ndarray) -> Map3D:
    """scores: (n, k) float32 PCA scores, columns by descending variance (a layer's stored
    ``pca_scores``, rows of the subset). Returns their first three columns as a (n, 3) float32
    map; k < 3 pads with zero columns."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n, k), got shape {scores.shape}")
    k = scores.shape[1]
    coords = np.zeros((scores.shape[0], DIMS), dtype=np.float32)
    coords[:, : min(k, DIMS)] = scores[:, :DIMS]
    return Map3D(coords, k)


def tsne_3d(scores: np.ndarray, perplexity: float, seed: int, threads: int = 1) -> FloatArray:
    """A 3-D t-SNE map of ``scores``: (n, k) float32 PCA scores (rows of the subset).

    perplexity: below n / 3 (k = 3 * perplexity neighbours must exist); seed: seeds the starting
    layout and the neighbour search (same seed, same map); threads: openTSNE's threads (the
    dashboard runs one map on one thread, beside the page's requests).
    Returns (n, 3) float32. Judge it by neighbourhoods, not coordinates.
    """
    data = np.ascontiguousarray(scores, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"scores must be (n, k) with n > 0, got shape {data.shape}")
    n = data.shape[0]
    if not 0 < perplexity < n / 3:
        raise ValueError(
            f"perplexity must be above 0 and below n / 3 = {n / 3:g} for {n} points, "
            f"got {perplexity:g}; pass a smaller perplexity or more points"
        )
    # Imported here: the dashboard imports this module, and openTSNE only when a map is made.
    from pipelines.tsne_opentsne import MapJob, optimise_map, shared_affinities

    affinities = shared_affinities(data, float(perplexity), seed, threads)
    job = MapJob(n, float(perplexity), affinities, initial_layout(data, seed, dims=DIMS))
    return optimise_map(job, threads, SCHEDULE).astype(np.float32)
