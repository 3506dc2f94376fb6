"""Dashboard performance: activation grids, the layer-switch callback, and hover in a browser.

    .venv/bin/python benchmarks/bench_dashboard.py [--work-dir DIR] [--skip-vgg] [--skip-browser]
                                                   [--points 13000] [--json results.json]
    .venv/bin/python benchmarks/bench_dashboard.py --data-dir DIR --run RUN   (an existing run)

What it measures (targets from PRODUCT.md):

1. Activation grid for one sample (<= 50 ms smallcnn, <= 0.5 s VGG16 on 2 CPU cores): the
   activations callback + the grid PNG request, for a sample never seen before (one forward
   pass capturing every layer) and for a further layer of the same sample (cached pass).
   smallcnn uses a real digits run made by the precompute; VGG16 (random weights, 224 x 224)
   uses a run whose precompute stopped after describing the model, which is all it needs.
2. Layer switch with ``--points`` points (<= 300 ms; 60,000 for issue 14): the server side of
   the embedding callback on a synthetic run of that size (figure build + JSON encoding), and in
   Chromium the time from the click on a layer to the new map's data in the browser (animation
   start), to the new positions applied (the last animation frame, or plotly's redraw) and to
   the frame that shows them painted. Also the page's opening on that run: the map drawn, the
   inspector's per-run table arrived, and that table's size.
3. Hover -> inspector fully updated (<= 50 ms; <= 100 ms at 60k) in Chromium, on the digits run
   and on the large run: from the mouse event to the inspector's new image URL, to the first
   frame painted after it (every output drawn, the main thread free), to the sample image
   loaded, and to every inspector image (sample and three explanations) loaded.

``--data-dir DIR --run RUN`` measures 2 and 3 on a run made elsewhere (``bench_large_run.py``'s
real 60,000-sample run) instead of the synthetic one.

Medians over several repetitions are reported; the machine's load is printed alongside, since
the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextvars import copy_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dash._callback_context import context_value  # noqa: E402
from dash._utils import AttributeDict, to_json  # noqa: E402

from dashboard.app import create_app  # noqa: E402
from dashboard.context import current  # noqa: E402
from dashboard.panels import activations, embedding  # noqa: E402
from pipelines.store import RunStore  # noqa: E402
from tests import browser_helpers as bh  # noqa: E402

SMALLCNN_RUN = "bench-digits-smallcnn"
VGG_RUN = "bench-vgg16-random"


def median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def call(app: Any, function: Any, *args: Any) -> Any:
    def run() -> Any:
        context_value.set(AttributeDict(triggered_inputs=[]))
        with app.server.app_context():
            return function(*args)

    return copy_context().run(run)


# ---- runs to measure on ---------------------------------------------------------------------


def make_smallcnn_run(data_dir: Path) -> str:
    """A real digits + smallcnn run from the precompute (300 samples)."""
    if not (data_dir / "runs" / SMALLCNN_RUN / "manifest.json").exists():
        from pipelines.precompute import Precompute, PrecomputeConfig

        config = PrecomputeConfig(
            dataset="digits", model="smallcnn", samples=300, subsets=("all",), perplexities=(30.0,)
        )
        Precompute(config, data_dir, run_id=SMALLCNN_RUN, progress=True).run()
    return SMALLCNN_RUN


def make_vgg_run(data_dir: Path) -> str:
    """VGG16 with seeded random weights over 50 digits: the manifest and sample table the
    precompute writes before its forward stage (all the model service needs)."""
    store = RunStore(data_dir / "runs" / VGG_RUN)
    if store.exists():
        return VGG_RUN
    import torch

    from pipelines.datasets import open_dataset
    from pipelines.models import build_torchvision
    from pipelines.records import layers_to_json
    from pipelines.stages.index import build_sample_table
    from pipelines.stages.model import describe_layers

    dataset = open_dataset("digits", data_dir / "datasets", progress=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = build_torchvision("vgg16", "none", torch.device("cpu"), progress=False)
    order = np.arange(50)
    layers = describe_layers(adapter, adapter.preprocess([dataset.load_image(0)]))
    store.save_json("samples", build_sample_table(dataset, order, None))
    store.write_manifest(
        {
            "run_id": VGG_RUN,
            "created": time.time(),
            "config": {"dataset": "digits", "model": "vgg16", "weights": "none", "seed": 0},
            "dataset": {
                "name": "digits",
                "spec": "digits",
                "num_samples": 50,
                "class_names": dataset.class_names,
            },
            "model": {**adapter.describe(), "gradcam_layer": "features.28"},
            "class_mapping": {"method": "none", "dataset_to_model": [-1] * 10, "warning": None},
            "layers": layers_to_json(layers),
            "subsets": [50],
            "perplexities": {"50": []},
            "stages": {
                "model": {"state": "done"},
                "index": {"state": "done"},
                "forward": {"state": "pending"},
                "embeddings": {"state": "pending"},
            },
        }
    )
    return VGG_RUN


def large_run_id(points: int) -> str:
    """The synthetic run's name says its size, so runs of several sizes share a work dir."""
    return (
        f"bench-{points // 1000}k-synthetic" if points % 1000 == 0 else f"bench-{points}-synthetic"
    )


def make_large_run(data_dir: Path, template: Path, points: int) -> str:
    """``points`` samples of ten classes with every artifact the page reads: thumbnails,
    predictions, explanations, and per-layer 2-D maps whose class blobs drift from layer to
    layer (so a layer switch really moves every point). Layers copied from ``template``."""
    run_id = large_run_id(points)
    store = RunStore(data_dir / "runs" / run_id)
    if store.exists():
        return run_id
    source = RunStore(template).read_manifest()
    rng = np.random.default_rng(0)
    labels = np.arange(points) % 10
    store.save_json(
        "samples",
        {
            "uid": [f"synthetic-{i:05d}" for i in range(points)],
            "source": ["synthetic"] * points,
            "dataset_index": list(range(points)),
            "label": labels.tolist(),
            "label_name": [str(v) for v in labels],
            "model_label": labels.tolist(),
            "split": ["train"] * points,
        },
    )
    from sklearn.datasets import load_digits

    digits = (load_digits().images * 16).clip(0, 255).astype(np.uint8)
    tiles = np.repeat(np.repeat(digits, 8, axis=1), 8, axis=2)  # 64 x 64
    thumbs = np.stack([tiles[i % len(tiles)] for i in range(points)])[..., None].repeat(3, axis=3)
    store.save_array("thumbnails", thumbs)
    logits = (
        rng.standard_normal((points, 10)).astype(np.float32)
        + 4 * np.eye(10, dtype=np.float32)[labels]
    )
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top = np.argsort(-probs, axis=1)
    predicted = top[:, 0]
    store.save_arrays(
        "predictions",
        {
            "top10_index": top.astype(np.int64),
            "top10_prob": np.take_along_axis(probs, top, 1).astype(np.float32),
            "predicted": predicted.astype(np.int64),
            "loss": -np.log(probs[np.arange(points), labels]).astype(np.float32),
            "correct": (predicted == labels).astype(np.int8),
            "confusion": np.zeros((10, 11), dtype=np.int64),
        },
    )
    size = 32
    store.save_array(
        "explanation", rng.random((points, size, size)).astype(np.float16), method="gradcam"
    )
    for method in ("guided_backprop", "guided_gradcam"):
        store.save_array(
            "explanation",
            rng.integers(0, 255, (points, size, size, 3), dtype=np.uint8),
            method=method,
        )
    from pipelines.store import embedding_key

    centres = rng.standard_normal((10, 2)) * 30
    for depth, layer in enumerate(source["layers"]):
        spread = 25 - 1.5 * depth
        coords = (
            centres[labels] * (0.2 + depth / len(source["layers"]))
            + rng.standard_normal((points, 2)) * spread
        )
        for method, perplexity in (("tsne", 30.0), ("pca", None)):
            key = embedding_key(layer["id"], points, method, perplexity)
            store.save_array("embedding", coords.astype(np.float32), **key)
        store.save_json(
            "reduction",
            {"kept_dims": 2, "input_dims": 2, "explained_variance": 1.0},
            layer=layer["id"],
        )
    store.write_manifest(
        {
            **{k: source[k] for k in ("config", "model", "class_mapping", "layers")},
            "run_id": run_id,
            "created": time.time(),
            "dataset": {**source["dataset"], "num_samples": points, "dataset_size": points},
            "subsets": [points],
            "perplexities": {str(points): [30.0]},
            "thumbnail_size": 64,
            "explanation_size": size,
            "accuracy": float((predicted == labels).mean()),
            "stages": {
                name: {"state": "done"} for name in ("index", "model", "forward", "embeddings")
            },
        }
    )
    return run_id


# ---- 1. activation grids ----------------------------------------------------------------------


def grid_once(app: Any, client: Any, run_id: str, layer: str, row: int) -> tuple[float, float, str]:
    """(callback seconds, PNG request seconds, where the activations came from)."""
    key = {"run": run_id, "layer": layer, "pinned": row}
    start = time.perf_counter()
    figure, _, header, message = call(app, activations.render_grid, key, "score", None)
    middle = time.perf_counter()
    if message is not None:
        raise RuntimeError(f"activation grid failed: {message}")
    if figure["data"][0]["type"] == "heatmap":
        return middle - start, 0.0, header
    response = client.get(figure["layout"]["images"][0]["source"])
    assert response.status_code == 200, response.data[:200]
    return middle - start, time.perf_counter() - middle, header.split(" · ")[-1]


def bench_grids(app: Any, run_id: str, layers: list[str], rows: list[int]) -> dict[str, Any]:
    client = app.server.test_client()
    context = call(app, current)
    run = context.catalog.open(run_id)
    start = time.perf_counter()
    # Loading weights is a once-per-server cost: reported apart.
    context.service.model_service.model(run)
    load_seconds = time.perf_counter() - start
    first_layer, other_layers = layers[0], layers[1:]
    cold, cached, sources = [], [], set()
    for row in rows:
        seconds, png, source = grid_once(app, client, run_id, first_layer, row)
        cold.append(seconds + png)
        sources.add(source.split(",")[0])
        for layer in other_layers:
            seconds, png, _ = grid_once(app, client, run_id, layer, row)
            cached.append(seconds + png)
    return {
        "model_load_ms": round(1000 * load_seconds, 1),
        "new_sample_ms": median_ms(cold),
        "new_sample_layer": first_layer,
        "new_sample_source": sorted(sources),
        "same_sample_other_layer_ms": median_ms(cached) if cached else None,
        "layers": layers,
        "samples": len(rows),
    }


# ---- 2. layer switch, server side -------------------------------------------------------------


def bench_layer_switch_server(app: Any, run_id: str, repeats: int) -> dict[str, Any]:
    run = call(app, current).catalog.open(run_id)
    layer_ids = run.layer_ids
    base = {
        "run": run_id,
        "subset": run.num_samples,
        "method": "tsne",
        "perplexity": "30",
        "color": "label",
    }
    build, encode, sizes = [], [], []
    for i in range(repeats):
        key = {**base, "layer": layer_ids[i % len(layer_ids)]}
        start = time.perf_counter()
        payload, message = call(app, embedding.load, key, None)
        middle = time.perf_counter()
        text = to_json(payload)
        build.append(middle - start)
        encode.append(time.perf_counter() - middle)
        sizes.append(len(text))
        assert message is None, message
    total = [a + b for a, b in zip(build, encode, strict=True)]
    return {
        "points": run.num_samples,
        "callback_ms": median_ms(build),
        "json_ms": median_ms(encode),
        "server_total_ms": median_ms(total),
        "payload_kb": round(statistics.median(sizes) / 1024, 1),
    }


# ---- 3. in the browser ------------------------------------------------------------------------


def start_server(data_dir: Path, dev_server: bool = False) -> tuple[subprocess.Popen, str]:
    """The dashboard in its own process: ``python main.py serve`` (gunicorn, what users run), or
    with ``dev_server`` Flask's development server in one process (the server before issue 14,
    for before/after comparisons)."""
    port = bh.free_port()
    if dev_server:
        code = (
            f"import logging, sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r}); "
            "logging.getLogger('werkzeug').setLevel(logging.WARNING); "
            f"from dashboard.app import create_app; "
            f"create_app(Path({str(data_dir)!r})).run(host='127.0.0.1', port={port}, debug=False)"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [
            sys.executable,
            str(ROOT / "main.py"),
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                if response.status == 200:
                    return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()) from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the dashboard server did not start within 120 s")


def open_run(page: Any, url: str, run_id: str) -> dict[str, Any]:
    """Load the page on ``run_id`` and wait until the embedding is drawn and the per-run
    inspector table has arrived (the hint stops saying "loading"). Returns the seconds from
    the navigation to each, and the inspector table's size on the wire."""
    sizes: dict[str, int] = {}

    def table_size(response: Any) -> None:
        if "_dash-update-component" in response.url and "inspector-table" in (
            response.request.post_data or ""
        ):
            sizes["inspector_table_kb"] = round(len(response.body()) / 1024, 1)

    page.on("response", table_size)
    start = time.perf_counter()
    page.goto(f"{url}/?run={run_id}")
    bh.wait_for_graph(
        page,
        "embedding-graph",
        "gd => gd.data.length > 2 && gd.layout.meta && gd.layout.meta.n > 0",
        timeout=120_000,
    )
    drawn = time.perf_counter() - start
    page.wait_for_function(
        "() => document.getElementById('inspector-hint').textContent.startsWith('hover a point')",
        timeout=120_000,
    )
    ready = time.perf_counter() - start
    page.remove_listener("response", table_size)
    time.sleep(1.0)
    return {"map_drawn_s": round(drawn, 2), "inspector_ready_s": round(ready, 2), **sizes}


def bench_hover(page: Any, hovers: int) -> dict[str, Any]:
    """Hover ``hovers`` points spread over the first trace, each from 40 px away; medians of
    the times from the mouse event to the inspector's new image URL, to the first frame after
    it, to that image loaded, and to every inspector image loaded (fully updated)."""
    page.evaluate(bh.HOVER_PROBE)
    to_src, to_painted, to_loaded, to_all = [], [], [], []
    points = bh.graph_eval(
        page,
        "embedding-graph",
        f"""gd => {{
          const L = gd._fullLayout, b = gd.getBoundingClientRect(), out = [];
          const t = gd.data[0];
          for (let i = 0; i < t.x.length && out.length < {hovers}; i += Math.max(1, Math.floor(t.x.length / {hovers}))) {{
            out.push({{x: b.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), y: b.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])}});
          }}
          return out;
        }}""",
    )
    for point in points:
        page.mouse.move(point["x"] + 40, point["y"] + 40)
        time.sleep(0.15)
        page.evaluate(
            "() => { const p = window.hoverProbe; p.loaded = p.src = p.painted = p.allLoaded = null; }"
        )
        page.mouse.move(point["x"], point["y"])
        try:
            page.wait_for_function(
                "() => window.hoverProbe.allLoaded !== null && window.hoverProbe.painted !== null",
                timeout=5000,
            )
        except Exception:  # noqa: BLE001 - a point under another one: skip it
            continue
        probe = page.evaluate("() => window.hoverProbe")
        to_src.append((probe["src"] - probe["move"]) / 1000)
        to_painted.append((probe["painted"] - probe["move"]) / 1000)
        to_loaded.append((probe["loaded"] - probe["move"]) / 1000)
        to_all.append((probe["allLoaded"] - probe["move"]) / 1000)
    return {
        "hover_to_inspector_url_ms": median_ms(to_src) if to_src else None,
        "hover_to_next_frame_ms": median_ms(to_painted) if to_painted else None,
        "hover_to_image_loaded_ms": median_ms(to_loaded) if to_loaded else None,
        "hover_to_all_images_loaded_ms": median_ms(to_all) if to_all else None,
        "hovers_measured": len(to_src),
    }


def bench_layer_switches(page: Any, switches: int) -> dict[str, Any]:
    """Click ``switches`` layers in the model view; medians of the times from the click to the
    new map's data in the browser (animation start), to the new positions applied (the last
    restyle, or Dash's redraw, done) and to the frame after it (painted)."""
    first_frame, finished, painted, frames = [], [], [], []
    layer_ids = bh.graph_eval(
        page,
        "model-graph",
        "gd => gd.data.find(t => t.name === 'layers').customdata.map(c => c[0])",
    )
    shown = page.evaluate("() => new URLSearchParams(location.search).get('layer')")
    targets = [layer for layer in dict.fromkeys(layer_ids) if layer not in ("input", shown)]
    for layer in targets[:switches]:
        box = bh.graph_eval(
            page,
            "model-graph",
            f"""gd => {{ const t = gd.data.find(t => t.name === 'layers'); const i = t.customdata.findIndex(c => c[0] === {layer!r});
                  const L = gd._fullLayout, b = gd.getBoundingClientRect();
                  return {{x: b.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), y: b.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])}}; }}""",
        )
        page.evaluate(
            "() => { window.clickAt = null; document.addEventListener('mousedown', () => { window.clickAt = performance.now(); }, {once: true, capture: true}); }"
        )
        before = page.evaluate("() => window.layerscope.state.embedding.token")
        page.mouse.click(box["x"], box["y"])
        # Painted where the page records it (older trees do not: then the end).
        page.wait_for_function(
            """(token) => { const s = window.layerscope.state.embedding;
                 return s.token > token && s.last && s.last.end !== null && !s.animating
                   && (!('painted' in s.last) || s.last.painted !== null); }""",
            arg=before,
            timeout=60_000,
        )
        click_at, last = page.evaluate(
            "() => [window.clickAt, window.layerscope.state.embedding.last]"
        )
        first_frame.append((last["start"] - click_at) / 1000)
        finished.append((last["end"] - click_at) / 1000)
        if last.get("painted") is not None:
            painted.append((last["painted"] - click_at) / 1000)
        frames.append(last["frames"])
        time.sleep(0.5)
    return {
        "layer_click_to_animation_start_ms": median_ms(first_frame) if first_frame else None,
        "layer_click_to_positions_applied_ms": median_ms(finished) if finished else None,
        "layer_click_to_painted_ms": median_ms(painted) if painted else None,
        "frames": frames,
        "switches_measured": len(first_frame),
    }


def bench_browser(
    data_dir: Path,
    digits_run: str | None,
    large_run: str,
    hovers: int,
    switches: int,
    dev_server: bool = False,
) -> dict[str, Any]:
    """Hover on the digits run (the target's run, unless None) and on the large run; layer
    switches on the large run."""
    process, url = start_server(data_dir, dev_server)
    results: dict[str, Any] = {}
    try:
        with bh.chromium() as browser:
            watch = bh.PageWatch(browser, bh.LARGE)
            page = watch.page
            if digits_run is not None:
                open_run(page, url, digits_run)
                results["hover_digits"] = bench_hover(page, hovers)
                print("hover on the digits run:", results["hover_digits"], flush=True)
            results[f"open_{large_run}"] = open_run(page, url, large_run)
            print(f"open {large_run}:", results[f"open_{large_run}"], flush=True)
            results[f"hover_{large_run}"] = bench_hover(page, hovers)
            print(f"hover on {large_run}:", results[f"hover_{large_run}"], flush=True)
            results.update(bench_layer_switches(page, switches))
            watch.screenshot(large_run)
            results["console_errors"] = list(watch.errors)
            watch.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    return results


def measure_existing_run(
    data_dir: Path, run_id: str, json_path: Path | None, dev_server: bool = False
) -> int:
    """The layer switch (server side and in Chromium) and hover on a run made elsewhere
    (``bench_large_run.py``'s real 60k run)."""
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    app = create_app(data_dir)
    results["layer_switch_server"] = bench_layer_switch_server(app, run_id, repeats=14)
    print("layer switch, server side:", results["layer_switch_server"], flush=True)
    results["browser"] = bench_browser(
        data_dir, None, run_id, hovers=15, switches=11, dev_server=dev_server
    )
    print("in Chromium:", results["browser"], flush=True)
    results["load_average_after"] = os.getloadavg()
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep the benchmark runs here (default: a temp dir)",
    )
    parser.add_argument("--points", type=int, default=13000)
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument(
        "--only-browser", action="store_true", help="just the Chromium measurements"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="measure the page on a run already in this data dir (with --run) instead",
    )
    parser.add_argument("--run", default=None, help="the run of --data-dir to measure")
    parser.add_argument(
        "--dev-server",
        action="store_true",
        help="serve the page with Flask's development server (before issue 14) instead of"
        " `main.py serve`",
    )
    args = parser.parse_args(argv)
    if (args.data_dir is None) != (args.run is None):
        parser.error("--data-dir and --run go together")
    if args.data_dir is not None:
        return measure_existing_run(args.data_dir, args.run, args.json, args.dev_server)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layerscope-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    import torch

    results["torch_threads"] = torch.get_num_threads()
    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"

    print(f"work dir {work}; building runs (first time only)…", flush=True)
    make_smallcnn_run(work)
    large_run = make_large_run(work, work / "runs" / SMALLCNN_RUN, args.points)
    if not args.skip_vgg:
        make_vgg_run(work)
    # Cold means cold: no activations cached on disk by an earlier benchmark run.
    shutil.rmtree(work / "cache" / "activations", ignore_errors=True)
    app = create_app(work)

    if args.only_browser:
        results["browser"] = bench_browser(
            work, SMALLCNN_RUN, large_run, hovers=15, switches=5, dev_server=args.dev_server
        )
        print("in Chromium:", results["browser"], flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0
    results["grid_smallcnn"] = bench_grids(
        app,
        SMALLCNN_RUN,
        ["features.3", "features.0", "features.6", "classifier.1"],
        rows=[5, 17, 29, 41, 53],
    )
    print("activation grid, smallcnn:", results["grid_smallcnn"], flush=True)
    if not args.skip_vgg:
        results["grid_vgg16"] = bench_grids(
            app,
            VGG_RUN,
            ["features.28", "features.0", "features.14", "classifier.0"],
            rows=[1, 2, 3],
        )
        print("activation grid, VGG16 224px:", results["grid_vgg16"], flush=True)
    results["layer_switch_server"] = bench_layer_switch_server(app, large_run, repeats=14)
    print("layer switch, server side:", results["layer_switch_server"], flush=True)
    if not args.skip_browser:
        results["browser"] = bench_browser(
            work, SMALLCNN_RUN, large_run, hovers=15, switches=5, dev_server=args.dev_server
        )
        print("in Chromium:", results["browser"], flush=True)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
