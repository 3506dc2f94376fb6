"""Hand-made runs for the workbench's data tests: a manifest, a sample table, predictions and
(optionally) quality results written through the store, with values chosen by the test, so the
frame's every cell can be checked exactly without a precompute."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.metrics import prediction_columns
from pipelines.quality import QualityInfo, SampleQuality, save_quality
from pipelines.store import RunStore, runs_dir


def make_run(
    data_dir: Path,
    run_id: str,
    labels: Sequence[int],
    predicted: Sequence[int] | None,
    *,
    class_names: Sequence[str] = ("cat", "dog", "fox"),
    model_names: Sequence[str] | None = None,
    dataset_to_model: Sequence[int] | None = None,
    spec: str = "digits",
    sources: Sequence[str] | None = None,
    model_split: Sequence[str] | None = None,
    confidence: float = 0.9,
) -> RunStore:
    """A run whose sample ``i`` has class ``labels[i]`` and the model output ``predicted[i]``
    (None: no predictions yet) with probability ``confidence``; the rest spread evenly."""
    n = len(labels)
    model_names = list(model_names if model_names is not None else class_names)
    mapping = list(dataset_to_model if dataset_to_model is not None else range(len(class_names)))
    store = RunStore(runs_dir(data_dir) / run_id)
    store.run_dir.mkdir(parents=True)
    store.write_manifest(
        {
            "run_id": run_id,
            "config": {"dataset": spec, "model": "smallcnn", "seed": 0},
            "dataset": {
                "name": spec.split(":")[0],
                "spec": spec,
                "num_samples": n,
                "class_names": list(class_names),
            },
            "model": {
                "spec": "smallcnn",
                "description": "hand-made",
                "class_names": model_names,
                "input_size": 8,
                "in_channels": 1,
            },
            "class_mapping": {"method": "order", "dataset_to_model": mapping},
            "stages": {"model": {"state": "done"}, "index": {"state": "done"}},
        }
    )
    model_labels = [mapping[label] for label in labels]
    store.save_json(
        "samples",
        {
            "uid": [f"s-{i:04d}" for i in range(n)],
            "source": list(sources) if sources is not None else [f"index:{i}" for i in range(n)],
            "dataset_index": [100 + i for i in range(n)],
            "label": list(labels),
            "label_name": [class_names[label] for label in labels],
            "model_label": model_labels,
            "split": ["all"] * n,
            "model_split": list(model_split) if model_split is not None else ["held-out"] * n,
        },
    )
    if predicted is not None:
        k = len(model_names)
        prob = np.full((n, k), (1 - confidence) / max(k - 1, 1), dtype=np.float32)
        prob[np.arange(n), list(predicted)] = confidence
        columns = prediction_columns(np.log(prob), np.asarray(model_labels, dtype=np.int64))
        order = np.argsort(-prob, axis=1)
        store.save_arrays(
            "predictions",
            {
                "top10_index": order,
                "top10_prob": np.take_along_axis(prob, order, axis=1),
                **columns,
            },
        )
    return store


def add_quality(
    store: RunStore,
    label_issue_score: Sequence[float],
    is_label_issue: Sequence[bool],
    suggested_label: Sequence[int],
    neighbours: Sequence[Sequence[int]],
    similarities: Sequence[Sequence[float]],
    outlier_score: Sequence[float],
) -> SampleQuality:
    quality = SampleQuality(
        label_issue_score=np.asarray(label_issue_score, dtype=np.float32),
        is_label_issue=np.asarray(is_label_issue, dtype=bool),
        suggested_label=np.asarray(suggested_label, dtype=np.int64),
        neighbours=np.asarray(neighbours, dtype=np.int64),
        similarities=np.asarray(similarities, dtype=np.float32),
        outlier_score=np.asarray(outlier_score, dtype=np.float32),
        info=QualityInfo(
            probabilities="hand-made",
            probabilities_kind="model",
            folds=None,
            layer="fc",
            neighbour_index="exact",
            neighbours=len(neighbours[0]) if len(neighbours) else 0,
            label_issues=int(sum(is_label_issue)),
        ),
    )
    save_quality(store, quality)
    return quality
