"""LayerScope's precompute against a straightforward reference pipeline, on the same data.

    .venv/bin/python benchmarks/bench_precompute.py --samples 1000 --model vgg16
    .venv/bin/python benchmarks/bench_precompute.py --dataset digits --model smallcnn --samples 0

(a) LayerScope: ``pipelines.precompute.Precompute`` end to end (a fresh run each time).
(b) Reference, the way the prototype did it: one forward pass per image, per-image ``grad-cam``
    (GradCAM and GuidedBackpropReLUModel one image at a time), scikit-learn full-SVD PCA, and
    openTSNE with default settings for every layer x subset x perplexity. It pools each image's
    maps the way LayerScope does (``pool_activations``, the first step of the product's reduction),
    so both do the same work: full-size VGG16 maps of all 40 layers are ~120 MB per image, and
    keeping them for 1,000 images got the reference OOM-killed at 24 GiB.

The reference can take hours on a CPU; ``--reference-layers K`` times it on K evenly spaced layers
and scales the per-layer cost to all layers, and ``--reference-explain-images M`` times its
per-image explanations on M images and scales to all (printed as "extrapolated"). Timing uses synthetic
images (random 160 px photos-like noise in 10 classes) unless ``--dataset`` names another.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import datetime
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.datasets import open_dataset  # noqa: E402
from pipelines.features import (  # noqa: E402
    DEFAULT_MAX_DIMS,  # noqa: E402
    capture_layers,
    pool_activations,
)
from pipelines.precompute import Precompute, PrecomputeConfig  # noqa: E402
from pipelines.store import runs_dir  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} + {os.cpu_count()} CPU cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU"


class PeakMemory:
    """Largest total resident memory of this process and/or its descendants while the block runs,
    sampled every ``interval`` seconds (GiB in ``.peak``).

    Sampled rather than read from ``getrusage``: LayerScope's embedding workers are separate
    processes, and Linux carries a parent's peak into a spawned child's ``ru_maxrss``.
    """

    def __init__(self, include_self: bool, interval: float = 0.2):
        self.include_self = include_self
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            processes = me.children(recursive=True) + ([me] if self.include_self else [])
            total = 0
            for process in processes:
                with contextlib.suppress(psutil.Error):  # it may have just exited
                    total += process.memory_info().rss
            self.peak = max(self.peak, total / 2**30)
            if self._stop.wait(self.interval):
                return


def synthetic_folder(root: Path, samples: int, classes: int = 10, size: int = 160) -> Path:
    """Smooth random colour fields, one hue bias per class, so layers have structure to show."""
    rng = np.random.default_rng(0)
    for index in range(samples):
        label = index % classes
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.random((8, 8, 3)) * 0.6
        coarse[..., label % 3] += 0.4 * (label / classes)
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        image.save(folder / f"{index:06d}.jpg", quality=90)
    return root


def run_layerscope(config: PrecomputeConfig, data_dir: Path) -> dict[str, float]:
    start = time.perf_counter()
    store = Precompute(config, data_dir, "bench", progress=True).run()
    total = time.perf_counter() - start
    stages = {
        name: stage.get("seconds", 0.0) for name, stage in store.read_manifest()["stages"].items()
    }
    return {**stages, "total": total}


def run_reference(
    config: PrecomputeConfig,
    data_dir: Path,
    reference_layers: int | None,
    reference_explain_images: int | None = None,
) -> dict[str, float]:
    """The straightforward pipeline on the run LayerScope just made (same samples, same model)."""
    from openTSNE import TSNE
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from sklearn.decomposition import PCA

    from pipelines.models import open_run_model
    from pipelines.store import RunStore

    store = RunStore(runs_dir(data_dir) / "bench")
    manifest = store.read_manifest()
    run_model = open_run_model(store, data_dir, config.device)
    module = run_model.adapter.module
    rows = range(manifest["dataset"]["num_samples"])
    times: dict[str, float] = {}
    extrapolated = False

    start = time.perf_counter()
    inputs = [run_model.input_for(row) for row in rows]
    times["load"] = time.perf_counter() - start

    layers = [layer["id"] for layer in manifest["layers"]]
    if reference_layers:
        picks = np.linspace(0, len(layers) - 1, reference_layers).round().astype(int)
        timed_layers = [layers[i] for i in sorted(set(picks))]
    else:
        timed_layers = layers
    start = time.perf_counter()
    features: dict[str, list[np.ndarray]] = {layer: [] for layer in timed_layers}
    predicted = []
    for image in inputs:
        logits, captured = capture_layers(module, image, timed_layers)
        predicted.append(int(logits.argmax()))
        for layer, value in captured.items():
            features[layer].append(pool_activations(value, DEFAULT_MAX_DIMS).cpu().numpy())
    times["forward (per image)"] = time.perf_counter() - start

    gradcam_layer = manifest["model"]["gradcam_layer"]
    if gradcam_layer:
        start = time.perf_counter()
        # As a user would run the package: a model with trainable parameters (GradCAM only
        # records gradients of outputs that require them).
        module.requires_grad_(True)
        target = dict(module.named_modules())[gradcam_layer]
        # On its own copy: the guided model swaps every ReLU of the model it is given for one
        # shared new module, so a ReLU target (VGG's features.29) would drop out of the model.
        guided = GuidedBackpropReLUModel(copy.deepcopy(module), device=run_model.adapter.device)
        # Every image costs the same here, so a sample of them times the whole loop.
        count = min(len(inputs), reference_explain_images or len(inputs))
        for image, label in zip(inputs[:count], predicted[:count], strict=True):
            with GradCAM(model=module, target_layers=[target]) as cam:
                cam(input_tensor=image, targets=[ClassifierOutputTarget(label)])
            guided(image, target_category=label)
        seconds = time.perf_counter() - start
        times["explanations (per image)"] = seconds * len(inputs) / count
        extrapolated = extrapolated or count < len(inputs)

    start = time.perf_counter()
    pca_seconds = 0.0
    for layer in timed_layers:
        matrix = np.concatenate(features.pop(layer))
        t0 = time.perf_counter()
        full = PCA(svd_solver="full").fit(matrix)
        keep = int(np.searchsorted(np.cumsum(full.explained_variance_ratio_), 0.9) + 1)
        scores = full.transform(matrix)[:, : max(keep, 2)]
        pca_seconds += time.perf_counter() - t0
        for size in manifest["subsets"]:
            for perplexity in manifest["perplexities"][str(size)]:
                TSNE(perplexity=perplexity, random_state=config.seed).fit(scores[:size])
    embed = time.perf_counter() - start
    scale = len(layers) / len(timed_layers)
    times["PCA (full SVD)"] = pca_seconds * scale
    times["t-SNE (openTSNE defaults)"] = (embed - pca_seconds) * scale
    times["total"] = sum(times.values())
    times["extrapolated"] = extrapolated or scale != 1.0
    return times


def run_reference_apart(*args: object) -> tuple[dict[str, float], float]:
    """``run_reference`` in a fresh process, so its memory is measured apart from LayerScope's
    (which this process may still hold): (times, peak GiB)."""
    spawn = multiprocessing.get_context("spawn")
    with (
        PeakMemory(include_self=False) as memory,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool,
    ):
        times = pool.submit(run_reference, *args).result()
    return times, memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--subsets", default="100,1000,all")
    parser.add_argument("--perplexities", default="10,30,90")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reference-layers", type=int, default=None)
    parser.add_argument(
        "--reference-explain-images",
        type=int,
        default=None,
        help="time the reference's per-image explanations on this many images and scale",
    )
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="layerscope-bench-"))
    try:
        dataset = args.dataset
        if dataset == "synthetic":
            dataset = f"folder:{synthetic_folder(work / 'images', args.samples)}"
        open_dataset(dataset, work / "data" / "datasets")  # downloads are not timed
        config = PrecomputeConfig(
            dataset=dataset,
            model=args.model,
            weights=args.weights if args.model != "smallcnn" else None,
            samples=args.samples or None,
            subsets=tuple(args.subsets.split(",")),
            perplexities=tuple(float(p) for p in args.perplexities.split(",")),
            device=args.device,
            batch_size=args.batch_size,
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with PeakMemory(include_self=True) as memory:
            ours = run_layerscope(config, work / "data")
        ours_gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        print(f"\n## {datetime.date.today()} — {machine()}")
        print(
            f"dataset {args.dataset}, model {args.model}, samples {args.samples}, subsets {args.subsets}, "
            f"perplexities {args.perplexities}\n"
        )
        print("| stage | LayerScope (s) |\n| --- | ---: |")
        for name, seconds in ours.items():
            print(f"| {name} | {seconds:.1f} |")
        print(
            f"\npeak RSS {memory.peak:.2f} GiB (all processes together), "
            f"peak GPU memory {ours_gpu:.2f} GiB"
        )
        if not args.skip_reference:
            reference, reference_rss = run_reference_apart(
                config, work / "data", args.reference_layers, args.reference_explain_images
            )
            note = (
                " (extrapolated from a sample of layers or images)"
                if reference.pop("extrapolated")
                else ""
            )
            print(f"\n| reference stage{note} | seconds |\n| --- | ---: |")
            for name, seconds in reference.items():
                print(f"| {name} | {seconds:.1f} |")
            print(f"\nreference peak RSS {reference_rss:.2f} GiB")
            print(
                f"\n**speed-up: {reference['total'] / ours['total']:.1f}x** "
                f"(reference {reference['total']:.0f} s vs LayerScope {ours['total']:.0f} s)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
