"""The workbench's tables as files: the sample table, the corrected labels, per-class metrics and
the confusion matrix. Pure functions from a sample frame (``pipelines.sample_table``) to bytes,
so ``main.py export`` and the page's download buttons write the same files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import UserError
from pipelines.metrics import class_confusion, per_class_metrics

FORMATS = ("csv", "parquet")
# The confusion matrix's last column: predictions that are no dataset class.
OTHER_COLUMN = "(no dataset class)"
CONFUSION_CORNER = "true \\ predicted"


def table_format(path: Path, formats: Sequence[str] = FORMATS, option: str = "--out") -> str:
    """The format a file name asks for (its extension), or a UserError naming those allowed."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        allowed = " or ".join(f".{fmt}" for fmt in formats)
        raise UserError(f"{option} {path}: the file name must end in {allowed}")
    return suffix


def export_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """``frame``'s rows and columns as a CSV (UTF-8, header, no index; NA as empty) or Parquet
    file (column types kept: nullable integers and booleans, strings)."""
    if fmt == "csv":
        return frame.to_csv(index=False, lineterminator="\n").encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, engine="pyarrow")
        return buffer.getvalue()
    raise ValueError(f"unknown table format {fmt!r}; one of {FORMATS}")


def corrections_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The corrected labels of ``frame``'s rows, for a training script: ``uid``, ``label``
    (class name), then ``label_index`` (dataset class index) and ``path_or_index``."""
    corrected = frame[frame["corrected_index"].notna()]
    return pd.DataFrame(
        {
            "uid": corrected["uid"].to_numpy(),
            "label": corrected["corrected_label"].to_numpy(),
            "label_index": corrected["corrected_index"].to_numpy(dtype=np.int64),
            "path_or_index": corrected["path_or_index"].to_numpy(),
        }
    )


def corrections_csv(frame: pd.DataFrame) -> bytes:
    """``uid,label,label_index,path_or_index`` per corrected row."""
    return export_bytes(corrections_table(frame), "csv")


def frame_confusion(frame: pd.DataFrame, num_classes: int) -> np.ndarray:
    """(C, C+1) counts over ``frame``'s rows that have a prediction (rows true class, columns
    predicted dataset class, the last a prediction that is no dataset class), as
    ``metrics.confusion_matrix`` counts a run's predictions."""
    known = frame["predicted_index"].notna().to_numpy()
    return class_confusion(
        frame["true_index"].to_numpy(dtype=np.int64)[known],
        frame["predicted_index"].to_numpy(dtype=np.int64, na_value=0)[known],
        num_classes,
    )


def confusion_table(matrix: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """matrix: (C, C+1) counts (``frame_confusion``, ``metrics.confusion_matrix``) -> rows true
    class, columns predicted class, both by name in class order, plus ``OTHER_COLUMN`` when
    some prediction is no dataset class."""
    matrix = np.asarray(matrix, dtype=np.int64)
    columns = [*class_names, OTHER_COLUMN]
    if not matrix[:, -1].any():
        matrix, columns = matrix[:, :-1], columns[:-1]
    table = pd.DataFrame(matrix, index=pd.Index(list(class_names)), columns=columns)
    table.index.name = CONFUSION_CORNER
    return table


def confusion_csv(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """``confusion_table`` as CSV: class names as header and as first column."""
    return confusion_table(matrix, class_names).to_csv(lineterminator="\n").encode()


def metrics_table(matrix: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """matrix: (C, C+1) counts -> per class: precision, recall, F1 (empty where undefined:
    nothing predicted as the class, or no sample of it) and support."""
    metrics = per_class_metrics(matrix)
    return pd.DataFrame(
        {
            "class_index": np.arange(len(class_names), dtype=np.int64),
            "class": list(class_names),
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "f1": metrics["f1"],
            "support": metrics["support"].astype(np.int64),
        }
    )


def metrics_csv(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """``metrics_table`` as CSV."""
    return export_bytes(metrics_table(matrix, class_names), "csv")
