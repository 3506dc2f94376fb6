"""One image's LRP on the CPU through the engine (``explain``): VGG16 (random init, 224 x 224) and
smallcnn (32 x 32 grey), each method, and for VGG16 zennit's stock EpsilonPlusFlat (without the
skipped zero branches) and a plain forward pass for scale.

    .venv/bin/python benchmarks/bench_lrp.py [--repeats 5] [--threads 2]

Prints the median and best wall time and the median CPU time over ``--repeats`` runs after one
warm-up, and the load average before and after (on a shared 2-core machine it sets the wall time).
Models and inputs are channels_last, as the precompute runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_explain import timed  # noqa: E402
from pipelines.explain import explain  # noqa: E402
from pipelines.smallcnn import SmallCNN  # noqa: E402


def lrp_rows(model: torch.nn.Module, image: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Each LRP method through the engine, explaining class 7 at 64 x 64."""
    chosen = torch.tensor([7])

    def method_row(method: str) -> Callable[[], object]:
        return lambda: explain(model, None, image, chosen, [method], 64)

    return {method: method_row(method) for method in ("lrp", "lrp_alpha_beta")}


def reference_rows(model: torch.nn.Module, image: torch.Tensor) -> dict[str, Callable[[], object]]:
    """zennit's stock composite through its own attributor, and a plain forward pass."""

    def stock() -> object:
        start = torch.zeros(1, 1000)
        start[0, 7] = 1.0
        with Gradient(model, EpsilonPlusFlat()) as attributor:
            return attributor(image, start)

    def forward() -> object:
        with torch.no_grad():
            return model(image)

    return {"zennit EpsilonPlusFlat alone": stock, "forward alone": forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval().to(memory_format=torch.channels_last)
    vgg.requires_grad_(False)  # as the engine runs it, for the stock row too
    vgg_image = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    small = SmallCNN(1, 10).eval().to(memory_format=torch.channels_last)
    small_image = torch.randn(1, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    rows = {
        "VGG16": lrp_rows(vgg, vgg_image) | reference_rows(vgg, vgg_image),
        "smallcnn": lrp_rows(small, small_image),
    }
    for model_name, works in rows.items():
        for name, work in works.items():
            median, best, cpu = timed(work, args.repeats)
            print(
                f"{model_name:8} {name:30} median {median:.3f} s  best {best:.3f} s  "
                f"CPU {cpu:.3f} s"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
