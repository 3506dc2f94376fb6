"""One table of a run's samples: what the precompute knows about each, what the quality stage
found, and what the user corrected. The workbench's panels, selections (``pipelines.selection``)
and ``main.py export`` all read this frame.

One row per sample row (nested-subset order, like every per-sample array of a run), built from
whole columns (no per-row Python): 13k rows take a few milliseconds once the artifacts are read.
Columns not known yet are NA: predictions while the forward stage runs, quality columns until the
quality stage has run, ``corrected_label`` where the user set none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipelines.errors import UserError
from pipelines.metrics import HELD_OUT, OTHER, output_classes
from pipelines.quality import (
    DEFAULT_DUPLICATE_THRESHOLD,
    NO_LABEL,
    SampleQuality,
    duplicate_groups,
    load_quality,
)
from pipelines.records import Manifest
from pipelines.store import RunStore, datasets_dir

# Every column, in order. ``path_or_index``: the image file's absolute path for file datasets
# (folders, Imagenette...), else the sample's index in the dataset; ``dataset_split``: the
# dataset's own split (train / val / test / all); ``split``: whether the model was fitted on it.
COLUMNS = (
    "row",
    "uid",
    "path_or_index",
    "dataset_split",
    "split",
    "true_index",
    "true_label",
    "predicted_index",
    "predicted_model_index",
    "predicted_label",
    "correct",
    "loss",
    "label_issue_score",
    "is_label_issue",
    "suggested_index",
    "suggested_label",
    "corrected_index",
    "corrected_label",
    "duplicate_group",
    "duplicate_score",
    "outlier_score",
)


def sample_frame(
    store: RunStore,
    data_dir: Path,
    duplicate_threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
    *,
    corrections: Mapping[str, int] | None = None,
    quality: SampleQuality | None = None,
) -> pd.DataFrame:
    """The run's samples as a frame, one row per sample row, in row order (``COLUMNS``).

    ``corrections``: uid -> corrected dataset class; None reads the run's correction log
    (``pipelines.annotations``) in ``data_dir``. ``quality``: the quality stage's results; None
    reads them from the run (NA columns when the stage has not run). ``duplicate_threshold``:
    the cosine similarity at which neighbours join a near-duplicate group.
    """
    record = store.read_record()
    dataset = record.require_dataset()
    if not store.has("samples"):
        raise UserError(
            f"the sample index of run '{store.run_id}' is not written yet; run its precompute "
            "command again to finish it"
        )
    samples = store.load_json("samples")
    n = len(samples["uid"])
    class_names = list(dataset.class_names)
    model_names = list(record.model.class_names) if record.model else []

    columns: dict[str, Any] = {
        "row": np.arange(n, dtype=np.int64),
        "uid": pd.array(samples["uid"], dtype="str"),
        "path_or_index": path_or_index(samples, dataset.spec, data_dir),
        "dataset_split": pd.array(samples["split"], dtype="str"),
        # Sample tables written before the split was recorded count every row as held out,
        # as the dashboard's accuracy does.
        "split": pd.array(samples.get("model_split") or [HELD_OUT] * n, dtype="str"),
    }
    true_index = np.asarray(samples["label"], dtype=np.int64)
    columns["true_index"] = true_index
    columns["true_label"] = names_of(true_index, class_names)
    columns.update(prediction_columns(store, n, dataset_to_model(record), class_names, model_names))
    if quality is None:
        quality = load_quality(store)
    columns.update(quality_columns(quality, n, class_names, duplicate_threshold, store.run_id))
    columns["corrected_index"] = pd.array([None] * n, dtype="Int64")
    columns["corrected_label"] = pd.array([None] * n, dtype="str")
    frame = pd.DataFrame({name: columns[name] for name in COLUMNS})
    if corrections is None:
        from pipelines.annotations import corrections_log

        corrections = corrections_log(data_dir, store.run_id).current()
    return with_corrections(frame, corrections, class_names)


def dataset_to_model(record: Manifest) -> list[int]:
    """The model output of each dataset class (UNMAPPED where none), from the manifest."""
    mapping = record.raw.get("class_mapping") or {}
    return [int(v) for v in mapping.get("dataset_to_model") or []]


def names_of(
    index: npt.NDArray[np.int64], names: Sequence[str]
) -> pd.api.extensions.ExtensionArray:
    """Class names of ``index`` (NA where the index is negative or past ``names``)."""
    lookup = np.array([*names, None], dtype=object)
    safe = np.where((index >= 0) & (index < len(names)), index, len(names))
    return pd.array(lookup[safe], dtype="str")


def path_or_index(samples: Mapping[str, list[Any]], spec: str, data_dir: Path) -> Any:
    """Absolute file paths for a file dataset (its sources are relative to its root), else the
    samples' dataset indices (int64)."""
    # Imported here: datasets pulls in torchvision, which nothing else here needs.
    from pipelines.datasets import source_root

    root = source_root(spec, datasets_dir(data_dir))
    if root is None:
        return np.asarray(samples["dataset_index"], dtype=np.int64)
    prefix = str(Path(root).resolve()) + "/"
    return pd.array([prefix + source for source in samples["source"]], dtype="str")


def prediction_columns(
    store: RunStore,
    n: int,
    mapping: Sequence[int],
    class_names: Sequence[str],
    model_names: Sequence[str],
) -> dict[str, Any]:
    """predicted_index / predicted_model_index / predicted_label / correct / loss; NA while the
    run has no predictions (its forward stage has not finished)."""
    if not store.has("predictions"):
        missing = pd.array([None] * n, dtype="Int64")
        return {
            "predicted_index": missing,
            "predicted_model_index": missing.copy(),
            "predicted_label": pd.array([None] * n, dtype="str"),
            "correct": pd.array([None] * n, dtype="boolean"),
            "loss": np.full(n, np.nan, dtype=np.float32),
        }
    with np.load(store.artifact_path("predictions"), allow_pickle=False) as arrays:
        predicted = arrays["predicted"].astype(np.int64)
        loss = arrays["loss"].astype(np.float32)
        correct = arrays["correct"]
    outputs = max(len(model_names), int(predicted.max()) + 1 if n else 0)
    to_dataset = output_classes(mapping, outputs)
    output_names = np.array(
        [
            class_names[to_dataset[m]]
            if to_dataset[m] != OTHER
            else (model_names[m] if m < len(model_names) else f"output {m}")
            for m in range(outputs)
        ],
        dtype=object,
    )
    return {
        "predicted_index": to_dataset[predicted],
        "predicted_model_index": predicted,
        "predicted_label": pd.array(output_names[predicted], dtype="str"),
        "correct": pd.arrays.BooleanArray(correct == 1, correct < 0),
        "loss": loss,
    }


def quality_columns(
    quality: SampleQuality | None,
    n: int,
    class_names: Sequence[str],
    threshold: float,
    run_id: str,
) -> dict[str, Any]:
    """The quality stage's columns; all NA when it has not run."""
    if quality is None:
        nan = np.full(n, np.nan, dtype=np.float32)
        return {
            "label_issue_score": nan,
            "is_label_issue": pd.array([None] * n, dtype="boolean"),
            "suggested_index": pd.array([None] * n, dtype="Int64"),
            "suggested_label": pd.array([None] * n, dtype="str"),
            "duplicate_group": pd.array([None] * n, dtype="Int64"),
            "duplicate_score": nan.copy(),
            "outlier_score": nan.copy(),
        }
    if len(quality.label_issue_score) != n:
        raise UserError(
            f"the quality results of run '{run_id}' cover {len(quality.label_issue_score)} "
            f"samples, its sample table {n}; run its precompute command again to redo them"
        )
    suggested = quality.suggested_label.astype(np.int64)
    return {
        "label_issue_score": quality.label_issue_score.astype(np.float32),
        "is_label_issue": pd.array(quality.is_label_issue.astype(bool), dtype="boolean"),
        "suggested_index": pd.arrays.IntegerArray(suggested, suggested == NO_LABEL),
        "suggested_label": names_of(suggested, class_names),
        "duplicate_group": pd.array(
            duplicate_groups(quality.neighbours, quality.similarities, threshold), dtype="Int64"
        ),
        "duplicate_score": strongest_link(quality),
        "outlier_score": quality.outlier_score.astype(np.float32),
    }


def strongest_link(quality: SampleQuality) -> npt.NDArray[np.float32]:
    """(N,) float32: each row's highest similarity over the stored neighbour links in either
    direction (its own nearest neighbour, or a sample that lists it), 0 with none. A row is in a
    near-duplicate group at threshold t exactly when this is >= t, whatever index found the
    neighbours (an approximate one need not be symmetric); with exact neighbours it equals
    ``SampleQuality.duplicate_score``."""
    neighbours, similarities = quality.neighbours, quality.similarities
    score = np.zeros(len(neighbours), dtype=np.float32)
    if neighbours.size:
        sources = np.broadcast_to(np.arange(len(neighbours))[:, None], neighbours.shape)
        linked = (neighbours >= 0) & (neighbours != sources)
        np.maximum.at(score, sources[linked], similarities[linked])
        np.maximum.at(score, neighbours[linked], similarities[linked])
    return score


def with_corrections(
    frame: pd.DataFrame, corrections: Mapping[str, int], class_names: Sequence[str]
) -> pd.DataFrame:
    """``frame`` with ``corrected_index`` / ``corrected_label`` set from ``corrections``
    (uid -> dataset class); uids the frame does not have are ignored. Cheap (a hash join), so
    the page can redo it after each correction without rebuilding the frame."""
    n = len(frame)
    corrected = np.full(n, NO_LABEL, dtype=np.int64)
    if corrections:
        rows = pd.Index(frame["uid"]).get_indexer(pd.Index(list(corrections), dtype="str"))
        labels = np.fromiter(corrections.values(), dtype=np.int64, count=len(corrections))
        found = rows >= 0
        corrected[rows[found]] = labels[found]
    frame = frame.copy(deep=False)  # copy-on-write: the caller's frame (a cache's) is untouched
    frame["corrected_index"] = pd.arrays.IntegerArray(corrected, corrected == NO_LABEL)
    frame["corrected_label"] = names_of(corrected, class_names)
    return frame
