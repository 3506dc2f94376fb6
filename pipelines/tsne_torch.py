"""The PyTorch backend of ``tsne.fit``: t-SNE on any torch device, the GPU path of the precompute.

t-SNE is van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008). This
implementation follows the conventions of openTSNE (Poličar, Stražar & Zupan, "openTSNE: A
Modular Python Library for t-SNE Dimensionality Reduction and Embedding", J. Stat. Softw. 109,
2024) and FIt-SNE (Linderman et al., "Fast interpolation-based t-SNE for improved visualization
of single-cell RNA-seq data", Nat. Methods 16, 2019), and takes its schedule and starting layout
from ``tsne`` (``TSNESchedule``, ``initial_layout``), the ones the openTSNE backend uses, so the
two backends give embeddings of the same quality (``tsne``'s docstring has the measurements):

- affinities from the ``k = 3 * perplexity`` nearest neighbours, with a per-point bandwidth
  found by binary search on the perplexity, then symmetrised and normalised to sum to 1;
- initialisation from the first two principal components (``tsne.initial_layout``);
- the schedule's early exaggeration, learning rates (multiples of N, after Belkina et al.,
  "Automated optimized parameters for t-SNE improve visualization and analysis of large
  datasets", Nat. Commun. 10, 2019) and momenta, with openTSNE's optimiser: delta-bar-delta
  gains (Jacobs, "Increased rates of convergence through learning rate adaptation", Neural
  Networks 1, 1988) carried over between the phases, and per-point step clipping at 5;
- the gradient without the constant factor 4, as openTSNE and FIt-SNE write it.

Where openTSNE approximates the repulsive forces (Barnes-Hut or FFT interpolation), this
computes them exactly, tile by tile: O(N^2) work per iteration, in memory bounded by the tile
size. On a GPU that is fast for the dashboard's sizes (up to ~50k points), and on CUDA the tile
is compiled into one fused kernel by ``torch.compile``. The attractive forces use the sparse
affinity matrix. Several perplexities are optimised together as one batched problem.

Every stage is a small pure function with an explicit seed; the whole run is deterministic for a
given seed on a given device (and, on the CPU, number of threads, which changes summation
order).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipelines import report
from pipelines.errors import UserError
from pipelines.tsne import SCHEDULE, StageTimes, SubsetMaps, TSNESchedule, initial_layout, timed

# Optimiser constants of openTSNE's gradient descent (its defaults; not part of the schedule).
MIN_GAIN = 0.01
GAIN_INCREASE = 0.2
GAIN_DECAY = 0.8
MAX_STEP_NORM = 5.0
# The perplexity search stops when |entropy - log(perplexity)| is below this (openTSNE's value).
PERPLEXITY_TOL = 1e-8
PERPLEXITY_MAX_ITER = 200
# Checking convergence forces a device sync, so the vectorised search checks only this often.
PERPLEXITY_CHECK_EVERY = 10
# Up to this many dimensions the PCA initialisation diagonalises the covariance exactly;
# beyond it a randomised range finder keeps the cost O(N D) instead of O(D^3).
EXACT_PCA_MAX_DIM = 2048
# Memory for one tile of pairwise work (kNN distances, eager repulsion temporaries): bounding it
# is what keeps 50k x 50k off the device, and tiles much bigger do not run faster.
# On the CPU a tile that stays in cache is fastest.
TILE_BYTES = {"cuda": 1 << 30, "cpu": 1 << 21}
# The eager repulsion tile holds about this many float32 (B, rows, N) temporaries at once.
EAGER_TILE_TEMPORARIES = 4

TileFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AffinityGraph:
    """Symmetric affinities P of B problems over the same N points, as one block-diagonal
    (B*N, B*N) sparse matrix in CSR layout (rows sorted, columns sorted within a row).

    crow: (B*N + 1,) int64 row pointers. rows, cols: (E,) int64 row and column of every entry.
    p: (E,) float32 values; each problem's block sums to 1.
    """

    n_points: int
    n_problems: int
    crow: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    p: torch.Tensor


def tsne_torch(
    x: torch.Tensor,
    perplexities: list[float],
    seed: int,
    init: torch.Tensor | None = None,
    schedule: TSNESchedule = SCHEDULE,
    knn: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    block_size: int | None = None,
    compile: bool | None = None,
    times: StageTimes | None = None,
) -> dict[float, tuple[torch.Tensor, float]]:
    """Embed ``x`` in 2-D with t-SNE once per perplexity, on ``x``'s device (CPU or CUDA).

    x: (N, D) float32 on any device.
    perplexities: one embedding per distinct value; each must be > 0.
    seed: seeds the PCA jitter, the randomised PCA and nothing else; same seed, same output.
    init: (N, 2) starting layout for every perplexity (should have std ~1e-4, as openTSNE's);
        default ``pca_init(x, seed)``.
    schedule: iterations, exaggeration, learning rates and momenta (``tsne.SCHEDULE``; pass
        ``tsne.OPENTSNE_DEFAULTS`` for openTSNE's default 250 + 500 iterations).
    knn: precomputed neighbours as (indices (N, k) int64, Euclidean distances (N, k) float32),
        ascending per row, self excluded; default: exact neighbours computed here, k =
        min(N - 1, 3 * max perplexity), one graph shared by all perplexities.
    block_size: rows per repulsion tile (default: from a memory budget). Changes speed and
        memory, not results beyond float rounding.
    compile: fuse the repulsion tile with ``torch.compile`` (default: on CUDA only). Falls back
        to eager PyTorch, with a warning, if compilation fails.
    times: receives each stage's seconds (``tsne.StageTimes``; CUDA synchronised around each
        stage), or None.

    Returns {perplexity: ((N, 2) float32 embedding on x.device, KL(P || Q) of that embedding)}.
    """
    _check_inputs(x, perplexities)
    n = x.shape[0]
    wanted = list(dict.fromkeys(float(p) for p in perplexities))
    x = x.detach().float()
    sync = synchroniser(x.device)
    if knn is None:
        with timed(times, "knn", sync):
            knn = knn_blocked(x, min(n - 1, int(3 * max(wanted))))
    indices, distances = _check_knn(knn, n, x.device)

    with timed(times, "affinities", sync):
        graph = affinity_graph(indices, distances, wanted)
    if init is None:
        with timed(times, "initial layout", sync):
            start = pca_init(x, seed)
    else:
        start = _check_init(init, n, x.device)
    y0 = start.unsqueeze(0).repeat(len(wanted), 1, 1)

    with timed(times, "compile", sync):
        tile = repulsion_tile_function(x.device, compile)
    if block_size is None:
        block_size = repulsion_block_rows(tile, len(wanted), n, x.device)
    y = optimise(y0, graph, wanted, schedule, block_size=block_size, tile=tile, times=times)
    with timed(times, "kl", sync):
        kl = kl_divergence(y, graph, block_size=block_size, tile=tile)
    return {p: (y[b].contiguous(), float(kl[b])) for b, p in enumerate(wanted)}


def _check_inputs(x: torch.Tensor, perplexities: list[float]) -> None:
    """Fail loudly, before any work, on arguments that cannot give an embedding."""
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] < 3:
        raise UserError(
            f"t-SNE needs at least 3 samples, got {x.shape[0]}; use a bigger subset or PCA"
        )
    if not bool(torch.isfinite(x).all()):
        raise UserError(
            "the features to embed contain NaN or infinite values; check the model's outputs "
            "for this layer (a diverged or mis-normalised model produces them)"
        )
    if not perplexities:
        raise UserError("no perplexity given; pass at least one, e.g. --perplexities 30")
    for p in perplexities:
        if not math.isfinite(p) or p <= 0:
            raise UserError(f"perplexity must be a positive number, got {p}; e.g. 10, 30 or 90")


def _check_knn(
    knn: tuple[torch.Tensor, torch.Tensor], n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a precomputed neighbour graph; returns (indices int64, distances float32)."""
    indices, distances = knn
    if indices.ndim != 2 or indices.shape[0] != n or indices.shape != distances.shape:
        raise ValueError(
            f"knn must be (indices, distances), both (N={n}, k); got {tuple(indices.shape)} "
            f"and {tuple(distances.shape)}"
        )
    if indices.shape[1] < 1:
        raise ValueError("knn has no neighbours (k = 0); pass k >= 1 or knn=None")
    return indices.to(device=device, dtype=torch.int64), distances.to(device, torch.float32)


def _check_init(init: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Validate an explicit initial layout; returns (N, 2) float32 on ``device``."""
    if tuple(init.shape) != (n, 2):
        raise ValueError(f"init must be (N={n}, 2), got {tuple(init.shape)}")
    return init.detach().to(device=device, dtype=torch.float32).clone()


def effective_perplexity(perplexity: float, k: int) -> float:
    """The perplexity that ``k`` neighbours can support: openTSNE's rule, which falls back to
    k / 3 when the requested one exceeds the number of neighbours (tiny subsets)."""
    return perplexity if perplexity <= k else k / 3


def knn_blocked(
    x: torch.Tensor, k: int, block_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours (Euclidean), self excluded, computed block by block so the
    full N x N distance matrix never exists at once. (Exact up to float32 rounding: two
    candidates whose distances agree to ~1e-6 relative may be ranked either way.)

    x: (N, D) float32 on any device; k: 1 <= k <= N - 1.
    block_rows: query rows per block (default: from the device's tile memory budget).
    Returns (indices (N, k) int64, distances (N, k) float32), ascending by distance per row,
    both on x.device.
    """
    n, dim = x.shape
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N - 1 = {n - 1}, got {k}")
    # Centring does not change distances but shrinks the norms that the matrix-product form of
    # cdist subtracts, so fewer digits are lost to cancellation.
    xc = x.float() - x.float().mean(dim=0)
    if block_rows is None:
        block_rows = _rows_for_budget(4 * (n + k * dim), x.device)
    all_indices, all_distances = [], []
    for start in range(0, n, block_rows):
        block = xc[start : start + block_rows]
        rows = torch.arange(block.shape[0], device=x.device)
        # cdist uses the fast matrix-product form; it only has to rank the candidates, the
        # distances kept are recomputed exactly below.
        approx = torch.cdist(block, xc)
        approx[rows, start + rows] = torch.inf  # self is excluded by index, not by distance 0
        candidates = approx.topk(k, dim=1, largest=False, sorted=True).indices
        exact = (block.unsqueeze(1) - xc[candidates]).square().sum(dim=-1)
        order = exact.argsort(dim=1, stable=True)
        all_indices.append(candidates.gather(1, order))
        all_distances.append(exact.gather(1, order).sqrt())
    return torch.cat(all_indices), torch.cat(all_distances)


def _rows_for_budget(bytes_per_row: int, device: torch.device) -> int:
    """How many rows of ``bytes_per_row`` fit in one tile on ``device``."""
    budget = TILE_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return max(1, budget // max(1, bytes_per_row))


def conditional_probabilities(sq_distances: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Row-wise Gaussian affinities p_{j|i} whose entropy matches ``perplexity``.

    sq_distances: (N, k) squared Euclidean distances to each point's neighbours, any float.
    Returns (N, k) float32, each row summing to 1, on the same device.

    The bandwidth (precision beta_i = 1 / 2 sigma_i^2) is found by openTSNE's bisection — double
    or halve beta until the target is bracketed, then halve the bracket — run for all points at
    once; rows freeze as they converge.
    """
    # Double precision: the entropy is compared against its target to 1e-8.
    d = sq_distances.double()
    # Subtracting the row minimum leaves p unchanged after normalisation and keeps exp() from
    # underflowing to 0 for far-away, tightly-clustered neighbours.
    d = d - d.min(dim=1, keepdim=True).values
    target = math.log(perplexity)
    beta = torch.ones(d.shape[0], 1, dtype=torch.float64, device=d.device)
    lower = torch.zeros_like(beta)
    upper = torch.full_like(beta, torch.inf)
    for step in range(PERPLEXITY_MAX_ITER):
        p, entropy = _gaussian_row(d, beta)
        error = entropy - target
        converged = error.abs() <= PERPLEXITY_TOL
        if step % PERPLEXITY_CHECK_EVERY == 0 and bool(converged.all()):
            break
        too_flat = error > 0  # entropy too high -> narrower Gaussian -> larger beta
        lower = torch.where(too_flat, beta, lower)
        upper = torch.where(too_flat, upper, beta)
        grown = torch.where(torch.isinf(upper), beta * 2, (beta + upper) / 2)
        shrunk = torch.where(lower == 0, beta / 2, (beta + lower) / 2)
        beta = torch.where(converged, beta, torch.where(too_flat, grown, shrunk))
    p, _ = _gaussian_row(d, beta)
    return p.float()


def _gaussian_row(d: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised exp(-beta d) per row and its entropy (nats).

    d: (N, k) float64 shifted squared distances (row minimum 0); beta: (N, 1) float64.
    Returns (p (N, k) float64, entropy (N, 1) float64).
    """
    weights = torch.exp(-beta * d)
    total = weights.sum(dim=1, keepdim=True)
    entropy = torch.log(total) + beta * (weights * d).sum(dim=1, keepdim=True) / total
    return weights / total, entropy


def joint_probabilities(indices: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
    """Symmetric joint affinities P = (P_cond + P_cond^T) / sum, as a sparse CSR tensor.

    indices: (N, k) int64 neighbour indices; conditional: (N, k) float32 p_{j|i}, rows sum to 1.
    Returns an (N, N) float32 sparse CSR tensor, symmetric, summing to 1, on the same device.
    """
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    cols = indices.reshape(-1)
    values = conditional.reshape(-1).float()
    # coalesce() sums the entry (i, j) with its mirror (j, i); at most two values meet, and a
    # sum of two floats does not depend on order, so this stays deterministic on the GPU.
    coo = torch.sparse_coo_tensor(
        torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
        torch.cat([values, values]),
        (n, n),
        check_invariants=False,  # built from valid indices; checking costs a pass per call
    ).coalesce()
    normalised = (coo.values().double() / coo.values().double().sum()).float()
    coo = torch.sparse_coo_tensor(
        coo.indices(), normalised, (n, n), is_coalesced=True, check_invariants=False
    )
    with warnings.catch_warnings():
        # PyTorch calls sparse CSR "beta" once per process; the products used here are stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def affinity_graph(
    indices: torch.Tensor, distances: torch.Tensor, perplexities: list[float]
) -> AffinityGraph:
    """Joint affinities for each perplexity from one shared neighbour graph, stacked.

    indices: (N, k) int64, distances: (N, k) float32 Euclidean, ascending per row, self
    excluded. Each perplexity uses its first min(k, 3 * perplexity) neighbours, as openTSNE's
    ``k_neighbors="auto"`` would.
    """
    graphs = []
    for perplexity in perplexities:
        k_used = max(1, min(indices.shape[1], int(3 * perplexity)))
        conditional = conditional_probabilities(
            distances[:, :k_used].square(), effective_perplexity(perplexity, k_used)
        )
        graphs.append(joint_probabilities(indices[:, :k_used], conditional))
    return stack_graphs(graphs)


def stack_graphs(graphs: list[torch.Tensor]) -> AffinityGraph:
    """Put B (N, N) CSR affinity matrices on the diagonal of one (B*N, B*N) problem, so one
    sparse product computes the attractive forces of every perplexity."""
    n = graphs[0].shape[0]
    crows, cols, values = [], [], []
    offset = 0
    for b, graph in enumerate(graphs):
        crow = graph.crow_indices()
        crows.append(crow[:-1] + offset if b < len(graphs) - 1 else crow + offset)
        cols.append(graph.col_indices() + b * n)
        values.append(graph.values())
        offset += int(crow[-1])
    crow = torch.cat(crows).to(torch.int64)
    counts = crow[1:] - crow[:-1]
    rows = torch.arange(len(graphs) * n, device=crow.device).repeat_interleave(counts)
    return AffinityGraph(
        n_points=n,
        n_problems=len(graphs),
        crow=crow,
        rows=rows,
        cols=torch.cat(cols).to(torch.int64),
        p=torch.cat(values).float(),
    )


def pca_init(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``tsne.initial_layout`` of the first two principal components of ``x``.

    x: (N, D) float32 on any device. Returns (N, 2) float32 on x.device, the same layout for a
    seed on every device (the scaling and jitter are drawn on the host).
    Component signs are fixed (largest loading positive) so the layout is deterministic.
    """
    generator = torch.Generator().manual_seed(seed)
    components = principal_axes(x, 2, generator)
    scores = (x.double() - x.double().mean(dim=0)) @ components
    layout = initial_layout(scores.cpu().numpy(), seed)
    return torch.from_numpy(layout).to(device=x.device, dtype=torch.float32)


def principal_axes(
    x: torch.Tensor, n_components: int, generator: torch.Generator, exact_max_dim: int | None = None
) -> torch.Tensor:
    """The top principal directions of ``x``.

    x: (N, D) float on any device. Returns (D, n_components) float64 with orthonormal columns,
    largest variance first, each column's largest-magnitude entry positive.
    Exact (covariance eigendecomposition) up to ``exact_max_dim`` dimensions (default
    EXACT_PCA_MAX_DIM); beyond, Halko, Martinsson & Tropp's randomised range finder ("Finding
    structure with randomness", SIAM Review 53, 2011) with ``generator`` for the test matrix.
    """
    limit = EXACT_PCA_MAX_DIM if exact_max_dim is None else exact_max_dim
    xc = x.double() - x.double().mean(dim=0)
    dim = xc.shape[1]
    if dim <= limit:
        _, vectors = torch.linalg.eigh(xc.T @ xc)
        axes = vectors.flip(1)[:, :n_components]
    else:
        oversampled = min(dim, n_components + 10)
        basis = torch.randn(dim, oversampled, generator=generator, dtype=torch.float64)
        basis = basis.to(x.device)
        # Power iterations sharpen the spectrum so the top directions dominate the basis.
        for _ in range(7):
            basis, _ = torch.linalg.qr(xc.T @ (xc @ basis))
        small = basis.T @ (xc.T @ (xc @ basis))
        _, vectors = torch.linalg.eigh(small)
        axes = basis @ vectors.flip(1)[:, :n_components]
    largest = axes.abs().argmax(dim=0)
    signs = torch.sign(axes[largest, torch.arange(axes.shape[1], device=axes.device)])
    return axes * torch.where(signs == 0, 1.0, signs)


def repulsion_tile(y_rows: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor:
    """Unnormalised repulsive forces and kernel sums of one tile of rows.

    y_rows: (B, b, 2) float32, the tile's points; y_all: (B, N, 2) float32, every point.
    Returns (B, b, 3) float32: [..., :2] = sum_j w_ij^2 (y_i - y_j) and [..., 2] = sum_j w_ij,
    with the Cauchy kernel w_ij = 1 / (1 + |y_i - y_j|^2) and j running over all N points (self
    included: w_ii = 1 adds to the sum, and nothing to the force since y_i - y_i = 0).
    """
    # The differences are formed directly rather than as |a|^2 + |b|^2 - 2ab, which would lose
    # precision for close pairs far from the origin.
    dx = y_rows[..., 0:1] - y_all[..., 0].unsqueeze(1)
    dy = y_rows[..., 1:2] - y_all[..., 1].unsqueeze(1)
    # In-place from here: on the CPU, fresh (B, b, N) buffers cost more than the arithmetic.
    w = dx * dx
    w.addcmul_(dy, dy).add_(1.0).reciprocal_()
    kernel_sum = w.sum(-1)
    w.square_()
    return torch.stack([(w * dx).sum(-1), (w * dy).sum(-1), kernel_sum], dim=-1)


def repulsive_forces(
    y: torch.Tensor, block_size: int, tile: TileFunction = repulsion_tile
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact repulsive forces, ``block_size`` rows at a time, so memory is O(block_size * N).

    y: (B, N, 2) float32. Returns (forces (B, N, 2) float32, unnormalised: divide by z;
    z (B,) float64, Z = sum_{i != j} w_ij).
    """
    n = y.shape[1]
    parts = [tile(y[:, start : start + block_size], y) for start in range(0, n, block_size)]
    out = torch.cat(parts, dim=1)
    # Row sums are combined in one fixed-order float64 sum so Z does not depend on the tiling;
    # subtracting N removes the self terms w_ii = 1.
    z = out[..., 2].double().sum(dim=1) - n
    return out[..., :2], z


def repulsion_block_rows(tile: TileFunction, n_problems: int, n: int, device: torch.device) -> int:
    """Rows per repulsion tile that keep its float32 (B, rows, N) temporaries within the tile
    budget: several of them for the eager tile, at most one for the fused kernel (none, if the
    compiler fuses all three reductions as it should; the bound holds either way)."""
    temporaries = EAGER_TILE_TEMPORARIES if tile is repulsion_tile else 1
    return min(n, _rows_for_budget(temporaries * 4 * n_problems * n, device))


def repulsion_tile_function(device: torch.device, compile: bool | None) -> TileFunction:
    """The repulsion tile to use on ``device``: compiled into one fused kernel on CUDA (where the
    eager version is bound by memory traffic through its (B, b, N) temporaries), eager
    elsewhere or when compilation fails."""
    if compile is None:
        compile = device.type == "cuda"
    if not compile:
        return repulsion_tile
    try:
        compiled = _compiled_repulsion_tile()
        # A small trial call surfaces compiler problems here, where we can still fall back, and
        # checks the fused kernel against the eager one.
        generator = torch.Generator().manual_seed(0)
        y = torch.randn(2, 64, 2, generator=generator).to(device)
        if not torch.allclose(compiled(y[:, :16], y), repulsion_tile(y[:, :16], y), atol=1e-5):
            raise RuntimeError("compiled repulsion tile disagrees with the eager one")
    except Exception as error:  # any compiler failure is recoverable: eager is always correct
        _warn_compile_failed(error)
        return repulsion_tile
    return _GuardedTile(compiled)


def _warn_compile_failed(error: Exception) -> None:
    report.warn(f"torch.compile of the t-SNE repulsion failed ({error!r}); using eager PyTorch")


class _GuardedTile:
    """The compiled tile, switching to the eager one for good if a later recompilation (a new
    batch size or dtype) fails, rather than losing a long precompute to a compiler bug."""

    def __init__(self, compiled: TileFunction) -> None:
        self.compiled: TileFunction | None = compiled

    def __call__(self, y_rows: torch.Tensor, y_all: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(y_rows, y_all)
            except torch.cuda.OutOfMemoryError:
                raise  # the eager tile needs more memory, not less
            except Exception as error:
                _warn_compile_failed(error)
                self.compiled = None
        return repulsion_tile(y_rows, y_all)


@functools.cache
def _compiled_repulsion_tile() -> TileFunction:
    """One compiled tile per process; dynamic shapes so new N or tile sizes do not recompile."""
    return torch.compile(repulsion_tile, dynamic=True, fullgraph=True)


def attractive_forces(y: torch.Tensor, graph: AffinityGraph) -> torch.Tensor:
    """Attractive forces sum_j p_ij w_ij (y_i - y_j) over the sparse affinities.

    y: (B, N, 2) float32. Returns (B, N, 2) float32 (unexaggerated).
    """
    flat = y.reshape(-1, 2)
    # Coordinates as two contiguous rows: gathering and combining whole rows is several times
    # faster on the CPU than indexing (E, 2) pairs and reducing over a dimension of size 2.
    coords = flat.T.contiguous()
    diff = coords.index_select(1, graph.rows) - coords.index_select(1, graph.cols)
    weights = diff[0].square()
    weights.addcmul_(diff[1], diff[1]).add_(1.0).reciprocal_().mul_(graph.p)
    size = flat.shape[0]
    weighted = torch.sparse_csr_tensor(
        graph.crow, graph.cols, weights, (size, size), check_invariants=False
    )
    # A CSR product sums each row in one place, so unlike scatter-add with atomics it gives the
    # same bits on every run; the ones column yields the row sums of p_ij w_ij in the same pass.
    product = weighted @ torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)
    forces = flat * product[:, 2:] - product[:, :2]
    return forces.reshape(y.shape)


def gradient(
    y: torch.Tensor,
    graph: AffinityGraph,
    exaggeration: float,
    block_size: int,
    tile: TileFunction = repulsion_tile,
) -> torch.Tensor:
    """dKL/dy without the constant 4 (the openTSNE / FIt-SNE convention the learning rate
    assumes), with P multiplied by ``exaggeration``.

    y: (B, N, 2) float32. Returns (B, N, 2) float32.
    """
    repulsive, z = repulsive_forces(y, block_size, tile)
    attractive = attractive_forces(y, graph)
    return exaggeration * attractive - repulsive / z.float().view(-1, 1, 1)


def optimise(
    y: torch.Tensor,
    graph: AffinityGraph,
    perplexities: list[float],
    schedule: TSNESchedule,
    block_size: int,
    tile: TileFunction = repulsion_tile,
    times: StageTimes | None = None,
) -> torch.Tensor:
    """Gradient descent with momentum, delta-bar-delta gains and step clipping, as openTSNE's,
    with ``schedule``: exaggerated first, then each problem's main phase (each a stage of
    ``times``, when given).

    y: (B, N, 2) float32 initial layouts (not modified), problem b at ``perplexities[b]``.
    Returns (B, N, 2) float32. Gains and velocity carry over between the phases, as in
    openTSNE's two ``optimize`` calls. The main phase's momentum and length depend on the
    perplexity; a problem whose main phase is over stays where it is while the others go on,
    so a batch gives each problem the layout it would get alone.
    """
    y = y.clone()
    n = y.shape[1]
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    rate = schedule.early_learning_rate * n
    sync = synchroniser(y.device)
    with timed(times, "early exaggeration", sync):
        for _ in range(schedule.early_iter):
            grad = gradient(y, graph, schedule.early_exaggeration, block_size, tile)
            update, gains = _step(update, gains, grad, schedule.early_momentum, rate)
            y = _recentred(y + update)
    with timed(times, "main phase", sync):
        return _main_phase(y, update, gains, graph, perplexities, schedule, block_size, tile)


def _main_phase(
    y: torch.Tensor,
    update: torch.Tensor,
    gains: torch.Tensor,
    graph: AffinityGraph,
    perplexities: list[float],
    schedule: TSNESchedule,
    block_size: int,
    tile: TileFunction,
) -> torch.Tensor:
    """``optimise``'s second phase, from the early phase's layouts, updates and gains (all
    (B, N, 2) float32)."""
    n = y.shape[1]
    momenta = [schedule.momentum(p, n) for p in perplexities]
    momentum = torch.tensor(momenta, dtype=y.dtype, device=y.device).view(-1, 1, 1)
    lengths = [schedule.main_iterations(p, n) for p in perplexities]
    rate = schedule.learning_rate * n
    for iteration in range(max(lengths)):
        grad = gradient(y, graph, 1.0, block_size, tile)
        stepped, stepped_gains = _step(update, gains, grad, momentum, rate)
        moved = _recentred(y + stepped)
        if iteration < min(lengths):
            update, gains, y = stepped, stepped_gains, moved
            continue
        running = torch.tensor([iteration < length for length in lengths], device=y.device)
        running = running.view(-1, 1, 1)
        update = torch.where(running, stepped, update)
        gains = torch.where(running, stepped_gains, gains)
        y = torch.where(running, moved, y)
    return y


def synchroniser(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work, for stage timings: CUDA runs asynchronously."""
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    return lambda: None


def _recentred(y: torch.Tensor) -> torch.Tensor:
    """Only relative positions matter; re-centring keeps coordinates small for float32.
    y: (B, N, 2)."""
    return y - y.mean(dim=1, keepdim=True)


def _step(
    update: torch.Tensor,
    gains: torch.Tensor,
    grad: torch.Tensor,
    momentum: float | torch.Tensor,
    learning_rate: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One delta-bar-delta momentum step; all (B, N, 2) float32, ``momentum`` a float or a
    (B, 1, 1) tensor (one per problem). Returns (update, gains).

    Gains grow by 0.2 where the gradient opposes the last step (progress is steady in that
    coordinate) and decay by 0.8 where it flips; each point's step is clipped to norm 5 so a
    badly placed point cannot shoot off.
    """
    # The step is -gains * grad, so opposite signs mean the descent goes on the same way.
    steady = torch.sign(update) != torch.sign(grad)
    gains = torch.where(steady, gains + GAIN_INCREASE, gains * GAIN_DECAY + MIN_GAIN)
    update = momentum * update - learning_rate * gains * grad
    norms = update.norm(dim=-1, keepdim=True)
    update = torch.where(norms > MAX_STEP_NORM, update * (MAX_STEP_NORM / norms), update)
    return update, gains


def kl_divergence(
    y: torch.Tensor, graph: AffinityGraph, block_size: int, tile: TileFunction = repulsion_tile
) -> torch.Tensor:
    """Exact KL(P || Q) of each embedding, in nats: sum p log p - sum p log w + log Z.

    y: (B, N, 2) float32. Returns (B,) float64 on y's device.
    """
    _, z = repulsive_forces(y, block_size, tile)
    flat = y.reshape(-1, 2).double()
    w = 1.0 / (1.0 + (flat[graph.rows] - flat[graph.cols]).square().sum(dim=1))
    p = graph.p.double()
    # xlogy: affinities that underflowed to 0 contribute 0, as in the limit, not NaN.
    terms = torch.special.xlogy(p, p) - p * torch.log(w)
    # Each problem's entries are one contiguous run of the CSR arrays: sum them slice by slice,
    # in a fixed order, rather than scatter-add.
    bounds = graph.crow[:: graph.n_points].tolist()
    sums = torch.stack([terms[bounds[b] : bounds[b + 1]].sum() for b in range(graph.n_problems)])
    return sums + torch.log(z)


def fit_subsets(
    x: np.ndarray,
    subsets: list[SubsetMaps],
    device: str,
    schedule: TSNESchedule = SCHEDULE,
    *,
    compile: bool | None = None,
    times: StageTimes | None = None,
) -> dict[tuple[int, float], np.ndarray]:
    """The torch backend of ``tsne.fit``: every map of a layer on ``device``.

    x: (N, k) float32 PCA scores in nested-subset order (subset n = rows [:n]); subsets: as
    ``tsne.fit`` builds them (each with its starting layout); compile, times: as
    ``tsne_torch``'s. Returns {(n, perplexity): (n, 2)
    float32 numpy}. A subset's perplexities are optimised together as one batched problem.
    """
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    maps: dict[tuple[int, float], np.ndarray] = {}
    for subset in subsets:
        init = torch.from_numpy(subset.init)
        # The seed only seeds pca_init, which an explicit init replaces.
        result = tsne_torch(
            data[: subset.n],
            list(subset.perplexities),
            0,
            init,
            schedule,
            compile=compile,
            times=times,
        )
        for perplexity, (coords, _kl) in result.items():
            maps[(subset.n, perplexity)] = coords.float().cpu().numpy()
    return maps
