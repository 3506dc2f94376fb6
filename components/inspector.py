"""The inspector's data: a per-run table the browser keeps.

Hovering must update the inspector within 50 ms, so the browser gets every row's uid, labels and
top-10 predictions once per run (``inspector_table``) and draws the panel itself, top-10 bars
included (``assets/inspector.js`` is the chart's only builder, and ``ls.inspectorTable`` there
the table's reader).

The numbers travel packed (``components.packing``): at 60,000 rows the table as JSON lists was
7.3 MB and 0.66 s of the server's time per page load, and arrived in the browser 2 s after the
map; packed, the same table is about a third of that and built in a few milliseconds. Shipping it
whole still pays at that size: the alternative, a request per hovered row, puts a round trip in
every hover (and the gallery's 200 captions a page in 200 of them), for a table that costs
one page load a fraction of a second once. ``benchmarks/README.md`` has the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from components.packing import LEVELS, pack_ints, pack_quantized

NAME_CHARS = 26  # ImageNet names run long ("German shepherd, German shepherd dog, ...")


def short_name(name: str, limit: int = NAME_CHARS) -> str:
    """The first synonym of a class name, cut to ``limit`` characters with an ellipsis."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


def joined_uids(uids: Sequence[str]) -> str:
    """The uids one per line; a uid is a name the sample table made, never a multi-line one."""
    if any("\n" in uid for uid in uids):
        raise ValueError("a sample uid contains a line break; rebuild the run's sample index")
    return "\n".join(uids)


def inspector_table(
    samples: Mapping[str, Sequence[Any]],
    predictions: Mapping[str, npt.NDArray[Any]] | None,
    model_class_names: Sequence[str],
    label_issues: tuple[npt.NDArray[np.bool_], Sequence[str | None]] | None = None,
) -> dict[str, Any]:
    """Everything the browser needs to describe any row on hover, JSON-ready, numbers packed.

    samples: the run's ``samples`` columns (uid, label_name, model_label per row).
    predictions: the ``predictions`` arrays (top10_index (N, k) int64, top10_prob (N, k)
    float32, predicted (N,) int64, correct (N,) int8), or None while not computed yet.
    label_issues: the quality stage's (N,) flags and each sample's suggested class name, or None
    when the run has no quality results.

    Returns {"n", "uids": every uid in one string, a line each (one JSON string is 6x faster
    to encode than 60,000), "labelNames": [str], "label": packed (N,) index into labelNames,
    "model_label": packed (N,), "classes", "short": [str] per model class, and, None until the
    predictions exist, "pred", "correct": packed (N,), "top_idx": packed (N, k), "top_prob":
    packed (N, k) probabilities (within 1/131,070), plus, with label issues, "issueNames" and
    "issue": packed (N,) index into issueNames, -1 where the row is not flagged}.
    """
    label_names, label_index = np.unique(
        np.asarray(samples["label_name"], dtype=str), return_inverse=True
    )
    table: dict[str, Any] = {
        "n": len(samples["uid"]),
        "uids": joined_uids(samples["uid"]),
        "labelNames": label_names.tolist(),
        "label": pack_ints(label_index),
        "model_label": pack_ints(np.asarray(samples["model_label"], dtype=np.int64)),
        "classes": [str(name) for name in model_class_names],
        "short": [short_name(str(name)) for name in model_class_names],
        "pred": None,
        "correct": None,
        "top_idx": None,
        "top_prob": None,
    }
    if label_issues is not None:
        flags, suggested = label_issues
        names = [
            None if not flag else (name or "?")
            for flag, name in zip(flags.tolist(), suggested, strict=True)
        ]
        issue_names = sorted({name for name in names if name is not None})
        position = {name: i for i, name in enumerate(issue_names)}
        table["issueNames"] = issue_names
        table["issue"] = pack_ints(
            np.array([-1 if name is None else position[name] for name in names], dtype=np.int64)
        )
    if predictions is not None:
        table["pred"] = pack_ints(np.asarray(predictions["predicted"], dtype=np.int64))
        table["correct"] = pack_ints(np.asarray(predictions["correct"], dtype=np.int64))
        table["top_idx"] = pack_ints(np.asarray(predictions["top10_index"], dtype=np.int64))
        probs = np.clip(np.asarray(predictions["top10_prob"], dtype=np.float64), 0.0, 1.0)
        table["top_prob"] = pack_quantized(probs, 0.0, 1.0 / LEVELS)
    return table
