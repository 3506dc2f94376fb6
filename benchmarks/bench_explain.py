"""One image's explanations on the CPU.

    .venv/bin/python benchmarks/bench_explain.py [--repeats 7] [--threads 2]
    .venv/bin/python benchmarks/bench_explain.py --methods [--repeats 5] [--threads 2]
    .venv/bin/python benchmarks/bench_explain.py --engine-forward [--repeats 9] [--threads 2]
        [--only lrp,lrp_alpha_beta]

Default: VGG16 (random init, 224 x 224), the stored methods together, the dashboard's on-demand
path (a chosen class) and the precompute's path (the predicted class, no features); prints the
median and best wall time and the median CPU time of each path over ``--repeats`` runs after one
warm-up.

``--methods``: every registered method alone, as the page runs it (one ``explain`` call: the
engine's forward pass plus the method's own passes), on smallcnn at the digits size (1 channel,
32 x 32, 10 classes) and on VGG16 (224 x 224); fast methods are timed as above, slow ones
(``Explainer.slow``, many passes) once, without a warm-up. Prints seconds per method beside the
issue's target, and the load average before and after (on a shared 2-core machine neighbours
change wall times 2-5x).

``--engine-forward``: before/after the engine skips its forward pass (issue 11), in one run:
every fast method alone on VGG16, class 7 given (the page's call: no engine forward pass where
the method runs its own passes) alternating with no class given (each image's top-1 from the
engine's forward pass: the precompute's call, and what every call cost before), so both see
the same neighbours; medians and bests of ``--repeats`` pairs after a warm-up of each.

Models and inputs are channels_last, as the dashboard and the precompute use them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.explain import EXPLAINERS, STORED_METHODS, Explainer, explain  # noqa: E402
from pipelines.smallcnn import SmallCNN  # noqa: E402


def timed(work: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(median wall, best wall, median CPU) seconds of ``work`` over ``repeats`` runs after one
    warm-up. CPU time is this process's, all threads: on a shared machine it still measures the
    work when wall time mostly measures the neighbours."""
    work()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def timed_pair(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(median wall, best wall, median CPU) seconds of each of two works, run alternately
    ``repeats`` times after one warm-up each: on a shared machine both meet the same neighbours,
    and the best of many runs is the one they disturbed least."""
    first(), second()
    samples: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
    for _ in range(repeats):
        for work, kept in zip((first, second), samples, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            work()
            kept.append((time.perf_counter() - start, time.process_time() - start_cpu))
    summaries = [
        (
            statistics.median(w for w, _ in kept),
            min(w for w, _ in kept),
            statistics.median(c for _, c in kept),
        )
        for kept in samples
    ]
    return summaries[0], summaries[1]


def vgg16_case() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """Random-init VGG16, its default Grad-CAM layer and one 224 px image, channels_last."""
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    model.to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    return model, model.features[29], image  # the ReLU after the last conv


def smallcnn_case() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """Random-init smallcnn at the digits size (1 channel, 32 px, 10 classes), channels_last."""
    torch.manual_seed(0)
    model = SmallCNN(1, 10, 32).eval()
    model.to(memory_format=torch.channels_last)
    image = torch.randn(1, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    return model, model.features[7], image  # the ReLU after the last conv


def target_seconds(case: str, explainer: Explainer) -> float | None:
    """Issue 11's targets: smallcnn every method <= 0.3 s; VGG16 one-backward methods <= 1 s,
    Integrated Gradients and occlusion <= 60 s; none set for SmoothGrad on VGG16."""
    if case == "smallcnn":
        return 0.3
    if not explainer.slow:
        return 1.0
    return 60.0 if explainer.name in ("integrated_gradients", "occlusion") else None


def time_method(
    model: torch.nn.Module,
    target: torch.nn.Module,
    image: torch.Tensor,
    explainer: Explainer,
    repeats: int,
) -> tuple[float, float, str]:
    """(wall, CPU) seconds of one method for class 7 at 64 px, and how they were taken: the
    median of ``repeats`` after a warm-up for fast methods, one run for slow ones (a warm-up
    would double a minute-long run for a first-call cost of milliseconds)."""

    def work() -> object:
        return explain(model, target, image, torch.tensor([7]), [explainer.name], 64)

    if not explainer.slow:
        median, _, cpu = timed(work, repeats)
        return median, cpu, f"median of {repeats}"
    start, start_cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - start, time.process_time() - start_cpu, "1 run"


def time_methods(repeats: int) -> None:
    """Every registered method alone, on each case; one line per method."""
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for case, build in (("smallcnn", smallcnn_case), ("vgg16", vgg16_case)):
        model, target, image = build()
        for name, explainer in EXPLAINERS.items():
            wall, cpu, how = time_method(model, target, image, explainer, repeats)
            limit = target_seconds(case, explainer)
            verdict = "" if limit is None else f", target <= {limit:g} s: "
            verdict += "" if limit is None else ("met" if wall <= limit else "MISSED")
            print(f"{case:8s} {name:22s} {wall:8.3f} s wall, {cpu:8.3f} s CPU ({how}{verdict})")
            sys.stdout.flush()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def compare_engine_forward(repeats: int, only: list[str] | None) -> None:
    """Each fast method on VGG16 (or those in ``only``), with and without the engine's forward
    pass; one line each."""
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    model, target, image = vgg16_case()
    for name, explainer in EXPLAINERS.items():
        if explainer.slow or (only is not None and name not in only):
            continue

        def given(name: str = name) -> object:
            return explain(model, target, image, torch.tensor([7]), [name], 64)

        def top1(name: str = name) -> object:
            return explain(model, target, image, None, [name], 64)

        (wall, best, cpu), (wall_before, best_before, cpu_before) = timed_pair(given, top1, repeats)
        print(
            f"vgg16 {name:16s} class given: {wall:6.3f} s wall (best {best:6.3f}), {cpu:6.3f} s "
            f"CPU | engine forward: {wall_before:6.3f} s wall (best {best_before:6.3f}), "
            f"{cpu_before:6.3f} s CPU | saved {wall_before - wall:+.3f} s median, "
            f"{best_before - best:+.3f} s best ({repeats} pairs)"
        )
        sys.stdout.flush()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--methods", action="store_true", help="time every registered method alone instead"
    )
    parser.add_argument(
        "--engine-forward",
        action="store_true",
        help="each fast method on VGG16 with and without the engine's forward pass",
    )
    parser.add_argument(
        "--only", default=None, help="with --engine-forward: these methods (comma-separated)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.methods:
        time_methods(args.repeats)
        return
    if args.engine_forward:
        only = None if args.only is None else [name.strip() for name in args.only.split(",")]
        compare_engine_forward(args.repeats, only)
        return
    model, target, image = vgg16_case()
    chosen = torch.tensor([7])

    def dashboard() -> object:
        return explain(model, target, image, chosen, STORED_METHODS, 64)

    def precompute() -> object:
        return explain(model, target, image, None, STORED_METHODS, 64)

    for name, work in (("dashboard (class 7)", dashboard), ("precompute (top-1)", precompute)):
        median, best, cpu = timed(work, args.repeats)
        print(
            f"{name}: wall median {median * 1000:.0f} ms, best {best * 1000:.0f} ms; "
            f"CPU median {cpu * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
