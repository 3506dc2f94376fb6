"""The inspector's data: a per-run table the browser keeps.

Hovering must update the inspector within 50 ms, so the browser gets every row's uid, labels and
top-10 predictions once per run (``inspector_table``) and draws the panel itself, top-10 bars
included (``assets/inspector.js`` is the chart's only builder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

NAME_CHARS = 26  # ImageNet names run long ("German shepherd, German shepherd dog, ...")
PROB_DECIMALS = 4


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    """The first synonym of a class name, cut to ``limit`` characters with an ellipsis."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


def inspector_table(
    samples: Mapping[str, Sequence[Any]],
    predictions: Mapping[str, npt.NDArray[Any]] | None,
    model_class_names: Sequence[str],
    label_issues: tuple[npt.NDArray[np.bool_], Sequence[str | None]] | None = None,
) -> dict[str, Any]:
    """Everything the browser needs to describe any row on hover, as JSON-ready lists.

    samples: the run's ``samples`` columns (uid, label_name, model_label per row).
    predictions: the ``predictions`` arrays (top10_index (N, k) int64, top10_prob (N, k)
    float32, predicted (N,) int64, correct (N,) int8), or None while not computed yet.
    label_issues: the quality stage's (N,) flags and each sample's suggested class name, or None
    when the run has no quality results.
    """
    table: dict[str, Any] = {
        "uid": list(samples["uid"]),
        "label": list(samples["label_name"]),
        "model_label": [int(v) for v in samples["model_label"]],
        "classes": [str(name) for name in model_class_names],
        "short": [short_name(str(name)) for name in model_class_names],
        "pred": None,
        "correct": None,
        "top_idx": None,
        "top_prob": None,
    }
    if label_issues is not None:
        flags, suggested = label_issues
        table["issue"] = [
            None if not flag else (name or "?")
            for flag, name in zip(flags.tolist(), suggested, strict=True)
        ]
    if predictions is not None:
        table["pred"] = np.asarray(predictions["predicted"]).astype(np.int64).tolist()
        table["correct"] = np.asarray(predictions["correct"]).astype(np.int64).tolist()
        table["top_idx"] = np.asarray(predictions["top10_index"]).astype(np.int64).tolist()
        probs = np.asarray(predictions["top10_prob"], dtype=np.float64)
        table["top_prob"] = np.round(probs, PROB_DECIMALS).tolist()
    return table
