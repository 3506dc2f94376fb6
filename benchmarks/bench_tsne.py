"""Benchmark the two t-SNE backends of ``pipelines.tsne.fit`` against openTSNE's defaults.

    python benchmarks/bench_tsne.py                                # digits, both backends, CPU
    python benchmarks/bench_tsne.py --data blobs --n 2000          # separated Gaussian blobs
    python benchmarks/bench_tsne.py --n 13000 --backends torch --device cuda   # the GPU path
    python benchmarks/bench_tsne.py --data features.npy            # real (N, D) layer features
    python benchmarks/bench_tsne.py --backends torch --compile on  # fused repulsion kernel

Runs ``tsne.fit`` (the precompute's entry point: PCA scores in, one map per perplexity out) once
per backend with the shared schedule (or openTSNE's default one, ``--schedule
opentsne-defaults``), timed with CUDA synchronised, and prints the time of each of its stages
(``tsne.StageTimes``: neighbours and affinities, the fused kernel's compilation, early
exaggeration, main phase; the openTSNE backend's maps run in parallel, so its stages add up
thread seconds). ``--compile`` fuses the torch backend's repulsion with ``torch.compile``
(default: on CUDA only). Then it judges every map by its neighbourhoods:
KL divergence under one exact P and exact Q (``reduce.kl_divergence``, so the backends' own
approximations do not enter the comparison), 10-nearest-neighbour preservation, leave-one-out
10-NN accuracy on the class labels (digits and blobs) and trustworthiness at 10 neighbours (up
to ``TRUST_MAX_N`` points). Then checks the quality bar against openTSNE's default
``TSNE().fit`` on the same scores (by default only up to 20k points): KL at most 5% above it and
10-NN preservation at most 0.02 below it. Optionally reruns each backend to check the output is
bit-identical (--check-determinism).

The data are reduced to the PCA scores keeping 90% of the variance first, as the precompute
does. ``digits`` are scikit-learn's digits (ship with the package, no download), augmented by
small random rotations, shifts and pixel noise beyond 1,797 points: the same ten-cluster,
curved structure at any N.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    # Run as a script (python benchmarks/bench_tsne.py): make the repo root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import reduce, tsne  # noqa: E402

KL_TOLERANCE = 0.05
KNN_TOLERANCE = 0.02
KNN_K = 10
OPENTSNE_DEFAULT_MAX_N = 20_000
TRUST_MAX_N = 5_000  # sklearn's trustworthiness holds an (N, N) distance matrix
SCHEDULES = {"shared": tsne.SCHEDULE, "opentsne-defaults": tsne.OPENTSNE_DEFAULTS}
COMPILE = {"auto": None, "on": True, "off": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1797, help="number of points (default 1797)")
    parser.add_argument("--data", default="digits", help="'digits', 'blobs' or an .npy file")
    parser.add_argument("--backends", default="opentsne,torch", help="comma-separated")
    parser.add_argument(
        "--device", default="auto", help="torch backend's device: auto, cpu or cuda"
    )
    parser.add_argument("--perplexities", default="10,30,90", help="comma-separated")
    parser.add_argument("--schedule", choices=tuple(SCHEDULES), default="shared")
    parser.add_argument(
        "--compile",
        choices=tuple(COMPILE),
        default="auto",
        help="torch backend: fuse the repulsion with torch.compile (auto: on CUDA only)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="openTSNE threads")
    parser.add_argument(
        "--compare", action="store_true", help="run openTSNE even when n > 20000 (slow)"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip openTSNE's defaults")
    parser.add_argument(
        "--check-determinism", action="store_true", help="run twice, compare bit for bit"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    return device


def augmented_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64) float32: digits images, each randomly rotated (+-10 degrees), shifted (+-0.5 px)
    and noised (std 0.5 on the 0..16 scale), the first 1797 rows the originals; and their (n,)
    int64 labels."""
    from sklearn.datasets import load_digits

    loaded = load_digits()
    digits = loaded.images.astype(np.float32)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([np.arange(len(digits)), rng.integers(0, len(digits), n)])[:n]
    images = torch.from_numpy(digits[picks]).unsqueeze(1)  # (n, 1, 8, 8)
    angle = np.deg2rad(rng.uniform(-10, 10, n))
    shift = rng.uniform(-0.5, 0.5, (n, 2)) / 4.0  # affine_grid's unit is half the image: 4 px
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = np.cos(angle)
    theta[:, 0, 1], theta[:, 1, 0] = -np.sin(angle), np.sin(angle)
    theta[:, :, 2] = shift
    theta[: min(n, len(digits))] = [[1, 0, 0], [0, 1, 0]]  # keep the originals untouched
    grid = F.affine_grid(torch.from_numpy(theta), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    noise = rng.normal(scale=0.5, size=(n, 64)).astype(np.float32)
    noise[: min(n, len(digits))] = 0
    return warped.reshape(n, 64).numpy() + noise, loaded.target[picks].astype(np.int64)


def blobs(n: int, seed: int, classes: int = 10, dims: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(n, dims) float32 well-separated Gaussian blobs (centres 10 apart in scale, unit noise)
    and their (n,) int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(classes, dims))
    labels = np.arange(n) % classes
    return (centres[labels] + rng.normal(size=(n, dims))).astype(np.float32), labels


def load_data(spec: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, D) float32 features and (N,) labels, or None where the data have none."""
    if spec == "digits":
        return augmented_digits(n, seed)
    if spec == "blobs":
        return blobs(n, seed)
    data = np.load(spec).astype(np.float32)
    if data.ndim != 2:
        raise SystemExit(f"error: {spec} must hold an (N, D) array, got shape {data.shape}")
    if n < len(data):
        data = data[np.random.default_rng(seed).permutation(len(data))[:n]]
    return data, None


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def run_backend(
    backend: tsne.Backend,
    scores: np.ndarray,
    perplexities: list[float],
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[dict[float, np.ndarray], float, float | None, dict[str, float]]:
    """``tsne.fit`` with one backend. Returns ({perplexity: (n, 2) map}, seconds, peak GPU GiB,
    {stage: seconds})."""
    n = scores.shape[0]
    on_cuda = backend == "torch" and device.type == "cuda"
    options: dict[str, Any] = (
        {"device": str(device), "compile": COMPILE[args.compile]}
        if backend == "torch"
        else {"cores": args.cores}
    )
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = tsne.StageTimes()
    synchronise(device)
    start = time.perf_counter()
    maps = tsne.fit(
        scores,
        {n: perplexities},
        args.seed,
        backend,
        schedule=SCHEDULES[args.schedule],
        times=times,
        **options,
    )
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = peak_memory_gib(device) if on_cuda else None
    return {p: maps[(n, p)] for p in perplexities}, seconds, peak, times.seconds


def run_opentsne_defaults(x: np.ndarray, perplexity: float, seed: int, cores: int) -> np.ndarray:
    """openTSNE's ``TSNE().fit`` with its defaults (its own PCA initialisation and schedule)."""
    from openTSNE import TSNE

    return np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=cores).fit(x))


def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote in the map."""
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=k).fit(embedding).kneighbors(return_distance=False)
    votes = np.apply_along_axis(np.bincount, 1, labels[neighbours], minlength=labels.max() + 1)
    return float((votes.argmax(axis=1) == labels).mean())


def quality(
    scores: np.ndarray,
    embedding: np.ndarray,
    perplexity: float,
    labels: np.ndarray | None,
    cores: int,
) -> dict[str, float | None]:
    """Every neighbourhood measure of one map (never its coordinates)."""
    from sklearn.manifold import trustworthiness

    n = scores.shape[0]
    return {
        "kl": reduce.kl_divergence(scores, embedding, perplexity, cores),
        "knn_preservation": reduce.knn_preservation(scores, embedding, KNN_K),
        "knn_accuracy": None if labels is None else knn_accuracy(embedding, labels),
        "trustworthiness": (
            trustworthiness(scores, embedding, n_neighbors=KNN_K) if n <= TRUST_MAX_N else None
        ),
    }


def passes(ours: dict[str, Any], reference: dict[str, Any]) -> bool:
    """The quality bar: KL at most 5% above openTSNE's defaults, 10-NN preservation at most 0.02
    below."""
    return (
        ours["kl"] <= (1 + KL_TOLERANCE) * reference["kl"]
        and ours["knn_preservation"] >= reference["knn_preservation"] - KNN_TOLERANCE
    )


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu count": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu memory (GiB)"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for index, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    for name in backends:
        if name not in tsne.BACKENDS:
            raise SystemExit(
                f"error: unknown backend {name!r}; pick from {', '.join(tsne.BACKENDS)}"
            )
    perplexities = [float(p) for p in args.perplexities.split(",") if p.strip()]
    data, labels = load_data(args.data, args.n, args.seed)
    scores, pca_info = reduce.pca_reduce(data, seed=args.seed)
    info = machine_info(device)
    info["data"] = f"{args.data}: {data.shape[0]} x {data.shape[1]} -> PCA {scores.shape[1]}"
    info["schedule"] = args.schedule
    info["torch compile"] = args.compile
    info["load average"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print_table("machine", [("key", "value"), *[(k, str(v)) for k, v in info.items()]])

    compare = not args.no_compare and (args.compare or data.shape[0] <= OPENTSNE_DEFAULT_MAX_N)
    records: list[dict[str, Any]] = []
    references: dict[float, dict[str, Any]] = {}
    if compare:
        for p in perplexities:
            start = time.perf_counter()
            reference = run_opentsne_defaults(scores, p, args.seed, args.cores)
            seconds = time.perf_counter() - start
            references[p] = quality(scores, reference, p, labels, args.cores)
            records.append(
                {
                    "backend": "openTSNE defaults",
                    "perplexity": p,
                    "seconds": seconds,
                    **references[p],
                }
            )
    deterministic: dict[str, bool] = {}
    timing_rows = [("backend", "seconds (all perplexities)", "peak GPU GiB")]
    stage_rows = [("backend", "stage", "seconds")]
    stages: dict[str, dict[str, float]] = {}
    for backend in backends:
        maps, seconds, peak, stages[backend] = run_backend(
            backend, scores, perplexities, args, device
        )
        timing_rows.append((backend, f"{seconds:.2f}", fmt(peak, 2)))
        stage_rows += [(backend, stage, f"{value:.3f}") for stage, value in stages[backend].items()]
        if args.check_determinism:
            again, *_ = run_backend(backend, scores, perplexities, args, device)
            deterministic[backend] = all(np.array_equal(maps[p], again[p]) for p in perplexities)
        for p in perplexities:
            record = {
                "backend": backend,
                "perplexity": p,
                "seconds": seconds,
                **quality(scores, maps[p], p, labels, args.cores),
            }
            if p in references:
                record["pass"] = passes(record, references[p])
            records.append(record)
    print_table(f"tsne.fit wall time, {len(perplexities)} perplexities", timing_rows)
    print_table("stages (openTSNE backend: thread seconds, its maps run in parallel)", stage_rows)
    if deterministic:
        print(f"\nbit-identical on a second run: {deterministic}")

    rows = [
        (
            "map",
            "perplexity",
            "KL (exact P, Q)",
            "10-NN preservation",
            "10-NN accuracy",
            "trustworthiness",
            "pass",
        )
    ]
    for record in sorted(records, key=lambda r: (r["perplexity"], r["backend"])):
        passed = record.get("pass")
        rows.append(
            (
                record["backend"],
                f"{record['perplexity']:g}",
                fmt(record["kl"]),
                fmt(record["knn_preservation"]),
                fmt(record["knn_accuracy"]),
                fmt(record["trustworthiness"]),
                "-" if passed is None else ("yes" if passed else "NO"),
            )
        )
    criteria = f"KL <= +{KL_TOLERANCE:.0%}, {KNN_K}-NN preservation >= -{KNN_TOLERANCE}"
    print_table(f"quality (pass: vs openTSNE defaults, {criteria})", rows)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "pca": pca_info,
                    "timings": timing_rows[1:],
                    "stages": stages,
                    "deterministic": deterministic,
                    "quality": records,
                },
                indent=2,
            )
        )
    failed = any(r.get("pass") is False for r in records) or not all(deterministic.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
