"""One image's explanations on VGG16 (random init, 224 x 224) on the CPU: the dashboard's
on-demand path (a chosen class) and the precompute's path (the predicted class, no features).

    .venv/bin/python benchmarks/bench_explain.py [--repeats 7] [--threads 2]

Prints the median and best wall time and the median CPU time of each path over ``--repeats``
runs after one warm-up;
the model and input are channels_last, as the dashboard and the precompute use them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.explain import STORED_METHODS, explain  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    model.to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    target = model.features[29]  # the ReLU after the last conv: the default Grad-CAM layer
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
