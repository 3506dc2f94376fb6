"""Which samples each reduction sees, and with which perplexities.

The dashboard offers nested sample subsets (e.g. 100 / 1000 / all): a small subset is a quick,
uncluttered view, and because the subsets are nested, a point seen in the small view is the same
sample in every larger one. The subsets are class-balanced so a 100-point view of ten classes
shows ten points of each, not whatever the dataset's class frequencies happen to give.

The precompute stores samples in ``nested_subset_order``; subset ``n`` is then simply rows
``[:n]`` of every per-sample array.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.errors import UserError
from pipelines.types import IntArray

ALL = "all"
# t-SNE calibrates a Gaussian per point over its 3 * perplexity nearest neighbours (van der Maaten
# & Hinton 2008; openTSNE's k = 3 * perplexity), so a subset needs more than 3 * perplexity points.
NEIGHBOURS_PER_PERPLEXITY = 3


def nested_subset_order(labels: np.ndarray, seed: int) -> IntArray:
    """A permutation whose every prefix is a class-balanced, seeded random subset.

    labels: (N,) integer class labels (any integer values; int64 expected).
    Returns order: (N,) int64, a permutation of ``range(N)``.

    Round-robin over classes with a random order within each class: the first ``C`` entries hold
    one sample of each of the ``C`` classes, the next ``C`` a second one, and so on. A class with
    fewer samples runs out and the others continue. Within a round the classes come in a random
    order, so a prefix that ends mid-round does not always favour the low class ids. Every prefix
    is therefore balanced (per-class counts differ by at most one while every class still has
    samples), and subset(100) ⊂ subset(1000) ⊂ all by construction.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    _, class_index = np.unique(labels, return_inverse=True)
    # A random permutation, stably sorted by class, gives every class its samples in random order.
    shuffled = rng.permutation(labels.shape[0])
    by_class = shuffled[np.argsort(class_index[shuffled], kind="stable")]
    counts = np.bincount(class_index[by_class])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # Position of each sample within its class = the round it is dealt in.
    round_of = np.empty(labels.shape[0], dtype=np.int64)
    round_of[by_class] = np.arange(labels.shape[0]) - np.repeat(starts, counts)
    # One random key per sample orders the classes within a round (one sample per class per round).
    within_round = np.asarray(rng.random(labels.shape[0]))
    return np.lexsort((within_round, round_of)).astype(np.int64)


def resolve_subset_sizes(requested: list[str], n_total: int) -> list[int]:
    """Subset sizes as asked on the command line, made concrete for a run of ``n_total`` samples.

    requested: e.g. ``["100", "1000", "all"]``. Returns ascending unique sizes clipped to
    ``n_total``, e.g. ``[100, 1000, 1797]`` for the 1797 digits.
    """
    if n_total < 1:
        raise UserError("the run has no samples; check --dataset and --samples")
    if not requested:
        raise UserError("give at least one subset size, e.g. --subsets 100,1000,all")
    sizes: set[int] = set()
    for raw in requested:
        text = str(raw).strip().lower()
        if text == ALL:
            sizes.add(n_total)
            continue
        if not text.isdigit() or int(text) <= 0:
            raise UserError(
                f"subset size '{raw}' is not valid; use positive whole numbers or 'all', "
                "e.g. --subsets 100,1000,all"
            )
        sizes.add(min(int(text), n_total))
    return sorted(sizes)


def largest_perplexity(n: int) -> int:
    """The largest whole perplexity t-SNE accepts for ``n`` points (it needs perplexity < n / 3)."""
    return (n - 1) // NEIGHBOURS_PER_PERPLEXITY


def resolve_perplexities(
    perplexities: list[float] | list[str], subset_sizes: list[int]
) -> dict[int, list[float]]:
    """Which perplexities each subset uses: ``{subset size: ascending perplexities}``.

    t-SNE needs perplexity < n / 3. A perplexity that is invalid even for the largest subset (or
    is <= 0) is a ``UserError`` naming the largest usable value; for the smaller subsets it is
    silently dropped, since the larger subsets still show it.
    """
    if not subset_sizes:
        raise ValueError("subset_sizes is empty; resolve_subset_sizes gives at least one size")
    largest = max(subset_sizes)
    wanted = sorted({_as_perplexity(p) for p in perplexities})
    for p in wanted:
        if p <= 0:
            raise UserError(
                f"perplexity {p:g} is not valid; use positive numbers, e.g. --perplexities 10,30,90"
            )
        if not _fits(p, largest):
            usable = largest_perplexity(largest)
            if usable < 1:
                raise UserError(
                    f"{largest} samples are too few for t-SNE (it needs perplexity < n/3 and at "
                    "least 4 samples); use more --samples"
                )
            raise UserError(
                f"--perplexities {p:g} is too large for {largest} samples (t-SNE needs "
                f"perplexity < n/3); use values up to {usable} (or leave --perplexities out to "
                "use the defaults that fit), or more --samples"
            )
    return {n: [p for p in wanted if _fits(p, n)] for n in sorted(subset_sizes)}


def _as_perplexity(value: float | str) -> float:
    try:
        perplexity = float(value)
    except (TypeError, ValueError):
        perplexity = math.nan
    if not math.isfinite(perplexity):
        raise UserError(
            f"perplexity '{value}' is not a number; use positive numbers, e.g. --perplexities 10,30,90"
        )
    return perplexity


def _fits(perplexity: float, n: int) -> bool:
    return NEIGHBOURS_PER_PERPLEXITY * perplexity < n
