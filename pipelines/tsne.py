"""t-SNE maps of one layer: one ``fit`` API, one schedule, one initialisation, two backends.

t-SNE is van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008). ``fit`` takes
a layer's PCA scores and returns every map of its nested subsets. The backend is a parameter:

- ``"opentsne"`` (``tsne_opentsne.py``): openTSNE (Poličar, Stražar & Zupan, J. Stat. Softw.
  2024) on the CPU: Barnes-Hut repulsion (FFT interpolation from 10,000 points), the maps of
  a layer in parallel, one single-threaded map per core. The CPU precompute uses it.
- ``"torch"`` (``tsne_torch.py``): the same optimiser in PyTorch, with exact repulsion tile by
  tile and a subset's perplexities batched into one problem, on any torch device. The precompute
  uses it on CUDA, where exact O(N^2) repulsion is fast for the dashboard's sizes.

Both take the schedule (``TSNESchedule``) and the starting layout (``initial_layout``) from this
module, so the device cannot change how a map is optimised, only how its gradient is summed.
The precompute picks the backend from its device (``layer_jobs.LayerJob.tsne_backend``) and
records it per layer (``tsne_backend`` and ``tsne_device`` in the layer's ``reduction`` record).

Why t-SNE is fast here: openTSNE's defaults (250 early-exaggeration + 500 main iterations per
map) cost 3-5 s per map for 1,797 points on two cores, and a layer has eight maps. Instead
(every number measured in ``benchmarks/bench_reduce.py``):

- one kNN graph per (layer, subset) at the largest perplexity, re-weighted for the others
  (``PerplexityBasedNN.set_perplexity``; the torch backend builds its affinities from one graph
  the same way), so the neighbour search runs once per subset;
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

The quality bar (checked by tests and the benchmarks, for both backends): KL divergence within
5% of openTSNE's default ``TSNE().fit`` and 10-nearest-neighbour preservation within 0.02 of it.

Does the device change the result? The method, no: both backends use the same affinities (to
float precision), the same starting layout and the same schedule, and each is deterministic for
a seed. The coordinates, yes: Barnes-Hut (theta 0.5 / 0.8) against exact repulsion and float64
against float32 make the two backends' maps of the same seed differ, at the same quality. Measured with ``benchmarks/bench_tsne.py`` (both backends on the CPU of the project's
2-core VM, load average 10-20 from other jobs; perplexities 10 / 30 / 90; KL under one exact P
and Q, 10-NN preservation, leave-one-out 10-NN accuracy on the labels, trustworthiness at 10
neighbours; openTSNE defaults = ``TSNE().fit``, the quality bar's reference):

==================  =========================  =========================  ========================
digits, 1,797       KL                         10-NN accuracy             trustworthiness
(PCA 21)            10 / 30 / 90               10 / 30 / 90               10 / 30 / 90
==================  =========================  =========================  ========================
openTSNE defaults   0.8939 / 0.7403 / 0.6089   0.9850 / 0.9811 / 0.9777   0.9940 / 0.9943 / 0.9918
opentsne backend    0.8929 / 0.7334 / 0.6030   0.9861 / 0.9816 / 0.9777   0.9916 / 0.9939 / 0.9915
torch backend       0.8885 / 0.7378 / 0.6020   0.9855 / 0.9822 / 0.9783   0.9920 / 0.9940 / 0.9919
blobs, 2,000
(10 in 50-D, PCA 8)
openTSNE defaults   1.3277 / 1.0281 / 0.4697   1.0000 / 1.0000 / 1.0000   0.9892 / 0.9900 / 0.9836
opentsne backend    1.3366 / 1.0246 / 0.4900   1.0000 / 1.0000 / 1.0000   0.9868 / 0.9898 / 0.9830
torch backend       1.3183 / 1.0164 / 0.4840   1.0000 / 1.0000 / 1.0000   0.9873 / 0.9897 / 0.9835
==================  =========================  =========================  ========================

10-NN preservation, digits: defaults 0.5935 / 0.6082 / 0.5649, opentsne 0.5865 / 0.6097 /
0.5628, torch 0.5834 / 0.6091 / 0.5625; blobs: defaults 0.4482 / 0.4500 / 0.3012, opentsne
0.4284 / 0.4513 / 0.2936, torch 0.4318 / 0.4511 / 0.3013.

Both backends pass the quality bar at every perplexity (the closest: blobs at perplexity 90, KL
+4.3% for opentsne and +3.0% for torch). The backends differ from each other by at most 0.0006
in kNN accuracy and 0.0005 in trustworthiness, no more than each differs from openTSNE's
defaults (up to 0.0011 and 0.0024). So the device changes the coordinates of a map, not its
quality as measured here, and the backend is recorded with it.
Time is what the device is for: on these loaded CPU cores the three digits maps took 33.6 s
with opentsne and 121.2 s with torch (exact O(N^2) repulsion, one thread; blobs 37.3 s and
170.8 s), which is why the CPU path stays openTSNE. Not yet measured on a GPU.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from pipelines.types import FloatArray

__all__ = [
    "BACKENDS",
    "INIT_JITTER",
    "INIT_STD",
    "OPENTSNE_DEFAULTS",
    "SCHEDULE",
    "Backend",
    "StageTimes",
    "SubsetMaps",
    "TSNESchedule",
    "fit",
    "initial_layout",
    "timed",
]

Backend = Literal["opentsne", "torch"]
BACKENDS: tuple[Backend, ...] = ("opentsne", "torch")


@dataclass(frozen=True)
class TSNESchedule:
    """The optimisation schedule of every t-SNE map, whichever the backend (see the module
    docstring for why).

    Learning rates are multiples of the number of points n, as in openTSNE's ``"auto"`` (n /
    exaggeration). Momentum in the main phase is ``1 - momentum_ratio * perplexity / n`` clipped
    to [min_momentum, max_momentum]: measured on digits, high momentum is what makes 125
    iterations enough at small perplexity / n, while at large perplexity / n (k = 3 * perplexity
    neighbours reach across clusters) it oscillates and a lower value converges faster. Where the
    momentum is at its maximum (perplexity 10 on 1,000 points or more), the map is within 1% of
    its 125-iteration KL after ``fast_main_iter`` iterations, so it stops there: 12% less t-SNE
    time for the embedded default, the same worst-case KL against openTSNE's defaults (measured
    on five smallcnn layers, ``benchmarks/bench_reduce.py``).

    ``theta`` and ``early_theta`` only concern the openTSNE backend's Barnes-Hut approximation;
    the torch backend's repulsion is exact.
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

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value < 0 or (field.name.endswith("learning_rate") and value == 0):
                raise ValueError(f"TSNESchedule.{field.name} must be positive, got {value}")
        if self.early_exaggeration <= 0:
            raise ValueError(
                f"early_exaggeration must be positive, got {self.early_exaggeration}; "
                "1 means no exaggeration (set early_iter=0 to skip the phase)"
            )

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
# openTSNE's ``TSNE().fit`` defaults in the same terms (learning rate n / 12 then n, momentum 0.5
# then 0.8, 250 + 500 iterations): the reference the quality bar is measured against.
OPENTSNE_DEFAULTS = TSNESchedule(
    early_iter=250,
    early_learning_rate=1 / 12,
    main_iter=500,
    fast_main_iter=500,
    learning_rate=1.0,
    momentum_ratio=0.0,
    min_momentum=0.8,
    max_momentum=0.8,
    early_theta=0.5,
)

# openTSNE's PCA initialisation: the first component is scaled to this std, so the first
# gradient steps are not dominated by the initial layout, and jitter of 1% of it keeps points
# that coincide in PCA space apart.
INIT_STD = 1e-4
INIT_JITTER = 0.01


def initial_layout(scores: np.ndarray, seed: int, dims: int = 2) -> np.ndarray:
    """openTSNE's PCA initialisation, from PCA scores: the first ``dims`` columns, centred,
    scaled so the first has std ``INIT_STD``, plus jitter of ``INIT_JITTER`` times that. A layer
    with no spread (all points equal) gets a seeded random start instead of a division by zero.

    scores: (n, k) float, columns by descending variance (k < dims is padded with zeros).
    Returns (n, dims) float64; the same for a seed on every machine (numpy's generator, on the
    host). ``dims=3`` starts the dashboard's 3-D maps (``pipelines/embed3d.py``).
    """
    rng = np.random.default_rng(seed)
    init = _pad_columns(np.asarray(scores)[:, :dims], dims).astype(np.float64)
    init -= init.mean(axis=0)
    spread = init[:, 0].std()
    if not spread > 0:
        return rng.normal(0.0, INIT_STD, size=init.shape)
    init *= INIT_STD / spread
    init += rng.normal(0.0, INIT_STD * INIT_JITTER, size=init.shape)
    return init


def _no_sync() -> None:
    """The ``synchronise`` of a stage whose work is done when its code returns (the CPU's)."""


class StageTimes:
    """Wall seconds per stage of ``fit``, for benchmarks: pass ``fit(..., times=StageTimes())``
    and read ``seconds`` afterwards ({stage: seconds}, in the order the stages first ran).

    Stages: ``fit``'s own "initial layout", then the backend's. torch: "knn", "affinities" (one
    neighbour graph per subset, re-weighted per perplexity), "compile" (the fused repulsion
    kernel's first compilation and check, near zero when eager), "early exaggeration", "main
    phase", "kl" (the exact KL of every map). openTSNE: "knn + affinities" (one
    ``PerplexityBasedNN`` per subset, re-weighted per perplexity), "early exaggeration", "main
    phase". A stage met once per subset or map adds up. The openTSNE backend runs its maps on
    ``cores`` threads at once, so its stages add up thread seconds, which can exceed the wall
    time of the call. Thread-safe.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str, synchronise: Callable[[], None] = _no_sync) -> Iterator[None]:
        """Time the block as ``name``; ``synchronise`` waits for a device's queued work on
        both sides of it (``torch.cuda.synchronize``), so the stage holds its own GPU work."""
        synchronise()
        start = time.perf_counter()
        yield
        synchronise()
        elapsed = time.perf_counter() - start
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed


def timed(
    times: StageTimes | None, name: str, synchronise: Callable[[], None] = _no_sync
) -> contextlib.AbstractContextManager[None]:
    """``times.stage(name, synchronise)``, or nothing at all when not timing: no clock and no
    device sync in the precompute's path."""
    return contextlib.nullcontext() if times is None else times.stage(name, synchronise)


@dataclass(frozen=True, eq=False)
class SubsetMaps:
    """The maps wanted of one nested subset: rows [:n], one map per perplexity, each starting
    from ``init``."""

    n: int
    perplexities: tuple[float, ...]  # ascending, each < n / 3
    init: np.ndarray  # (n, 2) float64, from ``initial_layout``


def fit(
    x: np.ndarray,
    perplexities: Mapping[int, Sequence[float]],
    seed: int,
    backend: Backend = "opentsne",
    *,
    device: str | None = None,
    cores: int = 1,
    compile: bool | None = None,
    schedule: TSNESchedule = SCHEDULE,
    times: StageTimes | None = None,
) -> dict[tuple[int, float], FloatArray]:
    """Every t-SNE map of ``x`` and its nested subsets.

    x: (N, k) float32 PCA scores (columns by descending variance, as ``reduce.pca_reduce``
        returns them) whose rows are in nested-subset order: subset n is rows [:n].
    perplexities: {n: perplexities of subset n}, each below n / 3 (k = 3 * perplexity
        neighbours must exist); a subset with none gets no map.
    seed: seeds the starting layouts and openTSNE's neighbour search; same seed, same maps on the
        same backend and device.
    backend: ``"opentsne"`` (CPU only, maps in parallel on ``cores`` threads) or ``"torch"``
        (on ``device``, default ``"cuda"``; ``compile``: fuse its repulsion with
        ``torch.compile``, default on CUDA only, see ``tsne_torch.tsne_torch``).
    schedule: the optimisation schedule, ``SCHEDULE`` unless measuring another.
    times: a ``StageTimes`` that receives the seconds of each stage (benchmarks), or None.

    Returns {(n, perplexity): (n, 2) float32}. Judge maps by neighbourhoods, not coordinates:
    another backend or device gives a different map of the same quality (module docstring).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown t-SNE backend {backend!r}; pass one of {', '.join(BACKENDS)}")
    if backend == "opentsne" and device not in (None, "cpu"):
        raise ValueError(
            f"the openTSNE backend runs on the CPU only, not {device!r}; "
            "pass backend='torch' to run on another device"
        )
    if backend == "torch" and cores != 1:
        raise ValueError(
            "cores sets the openTSNE backend's threads; the torch backend takes device"
        )
    if backend == "opentsne" and compile is not None:
        raise ValueError(
            "compile concerns the torch backend's repulsion kernel; pass backend='torch' to "
            "use it, or leave it out for openTSNE"
        )
    data = np.ascontiguousarray(x, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"x must be (N, k) with N > 0, got shape {data.shape}")
    subsets = []
    for n, values in sorted(perplexities.items()):
        wanted = tuple(sorted({float(p) for p in values}))
        if not wanted:
            continue
        if not 1 <= n <= data.shape[0]:
            raise ValueError(f"subset size {n} must lie in 1..{data.shape[0]}")
        for p in wanted:
            if not p < n / 3:
                raise ValueError(
                    f"perplexity {p:g} needs more than {3 * p:g} points; subset has {n}"
                )
        with timed(times, "initial layout"):
            init = initial_layout(data[:n], seed)
        subsets.append(SubsetMaps(int(n), wanted, init))
    if not subsets:
        return {}
    # Imported when used: CPU workers never load torch, and a GPU host needs no openTSNE here.
    if backend == "torch":
        from pipelines import tsne_torch

        maps = tsne_torch.fit_subsets(
            data, subsets, device or "cuda", schedule, compile=compile, times=times
        )
    else:
        from pipelines import tsne_opentsne

        maps = tsne_opentsne.fit_subsets(data, subsets, seed, cores, schedule, times=times)
    return {key: coords.astype(np.float32) for key, coords in maps.items()}


def _pad_columns(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] >= width:
        return x
    return np.pad(x, ((0, 0), (0, width - x.shape[1])))
