"""A 60,000-sample run on the CPU (issue 14): `main.py precompute --dataset cifar10` end to end.

    .venv/bin/python benchmarks/bench_large_run.py [--work-dir DIR] [--perplexities 10,30,90]
                                                   [--subsets 100,1000,all] [--json results.json]

The dataset is CIFAR-10's real format (``cifar10_standin.py``: 50,000 + 10,000 synthetic
32 x 32 pictures in the real batch pickles, served on 127.0.0.1 and downloaded by torchvision's
own code), the model ``smallcnn`` (trained on it by the run). The precompute is the real command
in its own process; this script samples the resident memory of it and its worker processes
every 0.2 s (their sum, so shared pages count once per process: an upper bound) and reports, per
stage, the wall seconds the manifest records, and per layer the seconds of its reduction (PCA and
every t-SNE map) with the kNN method and gradient its largest maps used.

Every sample is in every map: nothing is capped. The page on this run is measured by
``bench_dashboard.py --data-dir DIR/data --run cifar10-60k``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cifar10_standin  # noqa: E402
from bench_precompute import PeakMemory  # noqa: E402

from pipelines.store import RunStore  # noqa: E402

RUN_ID = "cifar10-60k"


def precompute_command(
    archive_url: str, standin: Path, data_dir: Path, options: list[str]
) -> list[str]:
    """``python main.py precompute ...`` with torchvision pointed at the stand-in first."""
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; "
        "import cifar10_standin; "
        f"cifar10_standin.point_torchvision_at({archive_url!r}, __import__('pathlib').Path({str(standin)!r})); "
        "from cli import main; "
        f"sys.exit(main({['precompute', *options, '--data-dir', str(data_dir)]!r}))"
    )
    return [sys.executable, "-c", code]


def layer_report(store: RunStore) -> list[dict[str, Any]]:
    """Per reduced layer: PCA dims and method, seconds, and how its largest maps were made."""
    rows = []
    for layer in store.read_record().layers:
        if layer.same_as or not store.has("reduction", layer=layer.id):
            continue
        info = store.load_json("reduction", layer=layer.id)
        rows.append(
            {
                "layer": layer.id,
                "input_dims": info.get("input_dims"),
                "kept_dims": info.get("kept_dims"),
                "pca": info.get("method"),
                "pca_seconds": info.get("pca_seconds"),
                "seconds": info.get("seconds"),
                "knn": info.get("tsne_knn"),
                "gradient": info.get("tsne_gradient"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/layerscope-large"))
    parser.add_argument("--train", type=int, default=50_000, help="training images (5 batches)")
    parser.add_argument("--test", type=int, default=10_000, help="test images")
    parser.add_argument("--subsets", default=None, help="passed to the precompute")
    parser.add_argument("--perplexities", default=None, help="passed to the precompute")
    parser.add_argument("--run-id", default=RUN_ID)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    standin = args.work_dir / "standin"
    data_dir = args.work_dir / "data"
    started = time.perf_counter()
    cifar10_standin.write_archive(standin, args.train, args.test)
    print(f"stand-in archive ready ({time.perf_counter() - started:.1f} s)", flush=True)
    options = ["--dataset", "cifar10", "--model", "smallcnn", "--run-id", args.run_id]
    for name in ("subsets", "perplexities"):
        if getattr(args, name):
            options += [f"--{name}", getattr(args, name)]
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "options": options,
        "load_average_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    with cifar10_standin.served(standin) as url:
        with PeakMemory(include_self=False) as memory:
            start = time.perf_counter()
            process = subprocess.run(precompute_command(url, standin, data_dir, options), cwd=ROOT)
            wall = time.perf_counter() - start
    results["exit_status"] = process.returncode
    results["wall_seconds"] = round(wall, 1)
    results["peak_rss_gib"] = round(memory.peak, 2)
    results["load_average_after"] = os.getloadavg()
    store = RunStore(data_dir / "runs" / args.run_id)
    if store.exists():
        record = store.read_record()
        results["samples"] = record.dataset.num_samples if record.dataset else None
        results["stages"] = {name: stage.seconds for name, stage in record.stages.items()}
        results["layers"] = layer_report(store)
    print(json.dumps(results, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
