"""One image's LRP on the CPU through the engine (``explain``): VGG16 (random init, 224 x 224) and
smallcnn (32 x 32 grey), each method, and for VGG16 zennit's stock EpsilonPlusFlat (without the
skipped zero branches) and a plain forward pass for scale.

    .venv/bin/python benchmarks/bench_lrp.py [--repeats 5] [--threads 2]
    .venv/bin/python benchmarks/bench_lrp.py --against BEFORE.py [--repeats 15] [--threads 2]

Prints the median and best wall time and the median CPU time over ``--repeats`` runs after one
warm-up, and the load average before and after (on a shared 2-core machine it sets the wall time).
Models and inputs are channels_last, as the precompute runs them.

``--against``: an earlier ``lrp_rules.py`` (``git show REV:pipelines/explain/lrp_rules.py >
BEFORE.py``) against the current one, VGG16's LRP pass (``relevance_at_pixels``, class 7) with
each method's composite, the two alternating so that both meet the same neighbours; also how far
apart their maps are (largest difference over the largest magnitude).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from zennit.attribution import Gradient
from zennit.composites import EpsilonPlusFlat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_explain import timed, timed_pair, vgg16_case  # noqa: E402
from pipelines.explain import explain, lrp_rules  # noqa: E402
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


def rules_from(path: Path) -> ModuleType:
    """An ``lrp_rules.py`` loaded from ``path`` as a module of its own."""
    spec = importlib.util.spec_from_file_location("lrp_rules_before", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}; pass a copy of pipelines/explain/lrp_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_rules(before: ModuleType, repeats: int) -> None:
    """Each method's VGG16 pass with the current rules alternating with ``before``'s; one line
    each."""
    model, _, image = vgg16_case()
    model.requires_grad_(False)  # as the engine runs it
    classes = torch.tensor([7])
    for method in ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat"):

        def run(rules: ModuleType, method: str = method) -> torch.Tensor:
            composite = getattr(rules, method)([])
            return rules.relevance_at_pixels(model, image, classes, composite)[1]

        expected = run(before)
        apart = float((run(lrp_rules) - expected).abs().max() / expected.abs().max())
        (wall, best, cpu), (wall_before, best_before, cpu_before) = timed_pair(
            lambda: run(lrp_rules), lambda: run(before), repeats
        )
        print(
            f"VGG16 {method:26} after: best {best:.3f} s, median {wall:.3f} s, CPU {cpu:.3f} s"
            f" | before: best {best_before:.3f} s, median {wall_before:.3f} s, CPU "
            f"{cpu_before:.3f} s | after/before best {best / best_before:.2f}, median "
            f"{wall / wall_before:.2f} | maps apart {apart:.1e} ({repeats} pairs)"
        )
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--against", type=Path, default=None, help="an earlier lrp_rules.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    if args.against is not None:
        compare_rules(rules_from(args.against), args.repeats)
        print(f"load average after: {os.getloadavg()}")
        return
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
