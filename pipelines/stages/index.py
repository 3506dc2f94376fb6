"""Stage "index": which samples, in which order, and what is known about each.

The order is nested and class-balanced, so subset *n* is simply rows ``[:n]`` of every
per-sample array. Writes the sample table (``samples``) and the manifest's ``dataset``,
``subsets``, ``perplexities`` and ``thumbnail_size``. Runs after the model stage: each row
records its class in the model's terms (``model_label``), from the model's class mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipelines import reduce
from pipelines.datasets import Dataset
from pipelines.errors import UserError
from pipelines.labels import UNMAPPED
from pipelines.metrics import HELD_OUT, TRAIN
from pipelines.records import DatasetInfo
from pipelines.run_config import DEFAULT_PERPLEXITIES, PrecomputeConfig
from pipelines.stages.forward import THUMBNAIL_SIZE
from pipelines.stages.model import training_split
from pipelines.store import RunStore


@dataclass(frozen=True)
class SamplePlan:
    """How many samples the run uses, its nested subset sizes and each subset's perplexities;
    resolved (and refused with a UserError) before the run folder is made."""

    num_samples: int
    subset_sizes: list[int]
    perplexities: dict[int, list[float]]


def plan_samples(config: PrecomputeConfig, dataset: Dataset) -> tuple[SamplePlan, str | None]:
    """The run's ``SamplePlan``, and a warning when default perplexities had to be dropped."""
    n_total = min(config.samples or len(dataset.samples), len(dataset.samples))
    subset_sizes = reduce.resolve_subset_sizes(list(config.subsets), n_total)
    perplexities, warning = resolve_perplexities(config.perplexities, subset_sizes)
    return SamplePlan(n_total, subset_sizes, perplexities), warning


def resolve_perplexities(
    requested: tuple[float, ...] | None, subset_sizes: list[int]
) -> tuple[dict[int, list[float]], str | None]:
    """Perplexities per subset, and a warning when defaults had to be dropped.

    Explicit values (``requested``) must all fit the data (a UserError names --perplexities
    otherwise); the defaults adapt: those too large are dropped, and if none is left the
    largest perplexity the data allows is used.
    """
    if requested is not None:
        return reduce.resolve_perplexities(list(requested), subset_sizes), None
    largest = max(subset_sizes)
    usable = [p for p in DEFAULT_PERPLEXITIES if p <= reduce.largest_perplexity(largest)]
    if not usable and reduce.largest_perplexity(largest) >= 1:
        usable = [float(reduce.largest_perplexity(largest))]
    dropped = [p for p in DEFAULT_PERPLEXITIES if p not in usable]
    if not usable:
        raise UserError(
            f"{largest} samples are too few for t-SNE (it needs perplexity < n/3 and at least "
            "4 samples); use more --samples"
        )
    warning = None
    if dropped:
        warning = (
            f"{largest} samples are too few for the default perplexities "
            f"{', '.join(f'{p:g}' for p in dropped)} (t-SNE needs perplexity < n/3); using "
            f"{', '.join(f'{p:g}' for p in usable)}; pass --perplexities to choose"
        )
    return reduce.resolve_perplexities(usable, subset_sizes), warning


def build_sample_table(
    dataset: Dataset,
    order: np.ndarray,
    dataset_to_model: Sequence[int] | None,
    trained_on: np.ndarray | None = None,
) -> dict[str, list]:
    """Columns of the sample index, rows in nested-subset order. ``dataset_to_model``: the model
    output of each dataset class (the class mapping; None: unknown). ``trained_on``:
    (len(dataset),) bool, the samples the model was fitted on (None: a model trained elsewhere,
    all held out)."""
    records = [dataset.samples[i] for i in order]
    fitted = trained_on[order] if trained_on is not None else np.zeros(len(order), dtype=bool)
    return {
        "uid": [r.uid for r in records],
        "source": [r.source for r in records],
        "dataset_index": [int(i) for i in order],
        "label": [int(r.label) for r in records],
        "label_name": [dataset.class_names[r.label] for r in records],
        "model_label": [
            int(dataset_to_model[r.label]) if dataset_to_model else UNMAPPED for r in records
        ],
        "split": [r.split for r in records],
        "model_split": [TRAIN if f else HELD_OUT for f in fitted],
    }


def outdated(store: RunStore) -> bool:
    """A sample table written before it had ``model_split`` is rebuilt (same rows)."""
    return not store.has("samples") or "model_split" not in store.load_json("samples")


def run(store: RunStore, config: PrecomputeConfig, dataset: Dataset, plan: SamplePlan) -> None:
    labels = np.array([record.label for record in dataset.samples], dtype=np.int64)
    order = reduce.nested_subset_order(labels, config.seed)[: plan.num_samples]
    manifest = store.read_record()
    trained_on = None
    if manifest.require_model().trained_here:
        trained_on = ~training_split(dataset, config.seed)
    dataset_to_model = manifest.require_class_mapping().dataset_to_model
    store.save_json("samples", build_sample_table(dataset, order, dataset_to_model, trained_on))
    info = DatasetInfo(
        name=dataset.name,
        spec=dataset.spec,
        description=dataset.description,
        num_samples=plan.num_samples,
        dataset_size=len(dataset.samples),
        class_names=tuple(dataset.class_names),
        class_wnids=None if dataset.class_wnids is None else tuple(dataset.class_wnids),
        native_channels=dataset.native_channels,
    )
    store.write_record(
        replace(
            manifest,
            dataset=info,
            subsets=tuple(plan.subset_sizes),
            perplexities={n: tuple(values) for n, values in plan.perplexities.items()},
            thumbnail_size=THUMBNAIL_SIZE,
        )
    )
