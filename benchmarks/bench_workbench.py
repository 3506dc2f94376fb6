"""The workbench's data side at Imagenette size: a synthetic 13,000-sample run (10 classes, a
folder dataset, quality results with 10 neighbours per sample, 1,000 corrections).

    .venv/bin/python benchmarks/bench_workbench.py [--samples 13000] [--repeat 5]

Prints the minimum of ``--repeat`` runs of: ``sample_frame`` (everything read from disk, as the
first request after a change does), resolving typical selections on the frame, a lasso's
``rows=`` term (3,000 scattered rows) and its length, the export renderers, and reading the
correction log. Timings depend on what else the machine is doing; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.annotations import corrections_log  # noqa: E402
from pipelines.export import (  # noqa: E402
    confusion_csv,
    export_bytes,
    frame_confusion,
    metrics_csv,
)
from pipelines.sample_table import sample_frame  # noqa: E402
from pipelines.selection import parse_selection, resolve, rows_spec  # noqa: E402
from tests.workbench_runs import add_quality, make_run  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def best(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=13000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, rng = args.samples, np.random.default_rng(0)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-workbench-"))
    labels = rng.integers(0, 10, n)
    predicted = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 10, n))
    store = make_run(
        data_dir,
        "big",
        labels.tolist(),
        predicted.tolist(),
        class_names=CLASSES,
        spec=f"folder:{data_dir / 'images'}",
        sources=[f"{CLASSES[c]}/img{i:06d}.JPEG" for i, c in enumerate(labels)],
        model_split=np.where(rng.random(n) < 0.8, "train", "held-out").tolist(),
    )
    k = 10
    similarities = np.sort(rng.uniform(0.3, 1.0, (n, k)).astype(np.float32), axis=1)[:, ::-1]
    add_quality(
        store,
        label_issue_score=rng.random(n).tolist(),
        is_label_issue=(rng.random(n) < 0.03).tolist(),
        suggested_label=rng.integers(0, 10, n).tolist(),
        neighbours=rng.integers(0, n, (n, k)).tolist(),
        similarities=similarities.tolist(),
        outlier_score=rng.random(n).tolist(),
    )
    log = corrections_log(data_dir, "big")
    uids = [f"s-{i:04d}" for i in range(n)]
    for start in range(0, 1000, 10):
        log.set_label(uids[start : start + 10], int(rng.integers(0, 10)), "bench")

    print(f"{n:,} samples, load average {os.getloadavg()[0]:.2f} at start")
    frame = sample_frame(store, data_dir)
    seconds = best(args.repeat, lambda: sample_frame(store, data_dir))
    print(f"sample_frame (artifacts, quality, 1,000 corrections read): {seconds * 1000:.1f} ms")
    fresh = best(
        args.repeat, lambda: corrections_log(data_dir, "big").current()
    )  # a new reader: parses the whole log
    print(f"correction log read by a new reader (100 actions, 1,000 uids): {fresh * 1000:.1f} ms")
    for spec in ("true=3;pred=5", "wrong;split=held-out;loss>=1.5", "issues", "dup>=0.98",
                 "outliers=50", "corrected"):  # fmt: skip
        selection = parse_selection(spec)
        seconds = best(args.repeat, lambda s=selection: resolve(s, frame))
        print(
            f"resolve {spec!r}: {seconds * 1000:.2f} ms ({len(resolve(selection, frame)):,} rows)"
        )
    lasso = np.sort(rng.choice(n, 3000, replace=False))
    spec = rows_spec(lasso)
    seconds = best(args.repeat, lambda: parse_selection(rows_spec(lasso)))
    print(
        f"lasso of 3,000 scattered rows: rows= term {len(spec):,} chars "
        f"(listed: {len(','.join(map(str, lasso))):,}), encode+parse {seconds * 1000:.2f} ms"
    )
    for fmt in ("csv", "parquet"):
        seconds = best(args.repeat, lambda f=fmt: export_bytes(frame, f))
        size = len(export_bytes(frame, fmt))
        print(f"export_bytes {fmt}: {seconds * 1000:.1f} ms, {size / 1e6:.2f} MB")

    def tables() -> tuple[bytes, bytes]:
        matrix = frame_confusion(frame, len(CLASSES))
        return confusion_csv(matrix, CLASSES), metrics_csv(matrix, CLASSES)

    seconds = best(args.repeat, tables)
    print(f"frame_confusion + confusion_csv + metrics_csv: {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
