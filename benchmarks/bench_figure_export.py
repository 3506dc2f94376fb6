"""The architecture's SVG / PDF export: kaleido's default (a browser per call) against the
dashboard's long-lived renderer (``dashboard/figure_export.py``), cold and warm.

    .venv/bin/python benchmarks/bench_figure_export.py [--repeats 5] [--json results.json]

Figures: the publication-style architecture of ResNet-18 (blocks collapsed, 15 boxes) and of
ResNet-50 with every layer expanded (127 boxes, the largest a user is likely to export), built by
``components.architecture.publication_figure`` from the layer lists the precompute records.
For each figure and format:

- one-shot: ``kaleido.calc_fig_sync`` as plotly's ``write_image`` calls it, which starts and
  closes a Chromium per call (the machine's /usr/bin/chromium, MathJax off);
- cold: a new ``Renderer``'s first render (browser start + render), what the first click costs;
- warm: further renders on the same renderer, what every later click costs;
- route: the whole request through Flask's test client on a warm renderer (figure build +
  render + response), for the ResNet-50 run only.

Medians over ``--repeats`` runs; the machine's load average is printed alongside, since on 2
cores other work changes these wall-clock times severalfold.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kaleido  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from components.architecture import publication_figure  # noqa: E402
from dashboard.figure_export import Renderer, browser_path  # noqa: E402
from pipelines.features import discover_layers  # noqa: E402

FORMATS = ("svg", "pdf")


def layers_of(name: str) -> list[Any]:
    model = getattr(torchvision.models, name)(weights=None).eval()
    return discover_layers(model, torch.zeros(1, 3, 64, 64))


def seconds(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def bench_figure(figure: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    kopts = {"path": str(browser_path()), "mathjax": False}
    results: dict[str, dict[str, float]] = {}
    for fmt in FORMATS:
        opts = {"format": fmt}
        oneshot = [
            seconds(partial(kaleido.calc_fig_sync, figure, opts=opts, kopts=kopts))
            for _ in range(repeats)
        ]
        cold, warm = [], []
        for _ in range(repeats):
            renderer = Renderer(idle_close_s=0)
            render = partial(renderer.render, figure, fmt)
            try:
                cold.append(seconds(render))
                warm.extend(seconds(render) for _ in range(3))
            finally:
                renderer.close()
        results[fmt] = {"oneshot": median(oneshot), "cold": median(cold), "warm": median(warm)}
    return results


def bench_route(repeats: int) -> dict[str, float]:
    """The export route on a warm renderer, for a ResNet-50 run described by its layers."""
    from dashboard import figure_export
    from dashboard.app import create_app
    from pipelines.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "runs" / "resnet50")
        layers = [dict(layer.to_json(), same_as=None) for layer in layers_of("resnet50")]
        store.write_manifest(
            {
                "run_id": "resnet50",
                "created": time.time(),
                "config": {"dataset": "imagenette", "model": "resnet50", "seed": 0},
                "dataset": {"name": "imagenette", "num_samples": 10, "class_names": ["a"]},
                "model": {"class_names": ["a"], "num_params": 0, "device": "cpu"},
                "class_mapping": {"method": "order", "dataset_to_model": [0], "warning": None},
                "layers": layers,
                "subsets": [10],
                "perplexities": {"10": [3.0]},
                "stages": {"model": {"state": "done", "done": 1, "total": 1}},
            }
        )
        client = create_app(Path(tmp)).server.test_client()
        results = {}
        try:
            for fmt in FORMATS:
                url = f"/runs/resnet50/figures/architecture.{fmt}"
                client.get(url)  # the renderer starts here
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    response = client.get(url)
                    times.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.data[:200]
                results[fmt] = median(times)
        finally:
            figure_export.renderer().close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"browser {browser_path()}, load average {load:.1f}, {args.repeats} repeats")
    figures = {
        "resnet18, blocks collapsed": publication_figure(layers_of("resnet18"), collapsed=True),
        "resnet50, every layer": publication_figure(layers_of("resnet50"), collapsed=False),
    }
    results: dict[str, Any] = {"load_before": load}
    print("| figure | format | one-shot (browser per call) | cold renderer | warm renderer |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, figure in figures.items():
        results[name] = bench_figure(figure, args.repeats)
        for fmt, row in results[name].items():
            print(
                f"| {name} | {fmt.upper()} | {row['oneshot']:.2f} s | {row['cold']:.2f} s "
                f"| {row['warm']:.2f} s |"
            )
    results["route, resnet50 every layer, warm"] = bench_route(args.repeats)
    for fmt, value in results["route, resnet50 every layer, warm"].items():
        print(f"route, ResNet-50 every layer, warm renderer, {fmt.upper()}: {value:.2f} s")
    results["load_after"] = os.getloadavg()[0]
    print(f"load average after: {results['load_after']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
