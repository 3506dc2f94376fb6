"""What the dashboard computes on demand for one sample, cached: a layer's activations, its
channel scores and grid PNG, and the explanations of a clicked class with their PNGs.

Each is one ``TieredCache.get_or_compute`` call: torch results (from ``ModelService``) in a
bounded memory LRU in front of a diskcache under ``<data-dir>/cache/activations``; channel
scores and PNGs (rendered by ``components/``) in a small memory-only LRU.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.activations import channel_scores, grid_png
from components.images import explanation_png
from dashboard.caches import DiskStore, Source, TieredCache, array_codec, cache_dir, method_codec
from dashboard.data import RunData
from dashboard.model_service import (
    ImageSample,
    MethodMaps,
    ModelService,
    Sample,
    explanation_size,
)
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, Progress
from pipelines.explain.base import no_progress
from pipelines.explain.registry import explainers

MEMORY_BYTES = 1 << 30  # torch results kept in RAM: ~9 VGG16 samples with every layer
DISK_BYTES = 4 << 30
DERIVED_BYTES = 64 << 20  # channel scores, grid PNGs, explanation PNGs


@dataclass(frozen=True)
class Activation:
    """One layer's output for one sample.

    values: (C, H, W) or (F,) float32 raw activations (batch dimension dropped), C-contiguous.
    source: where they came from; notice: a sentence for the page when something unusual
    happened (a corrupt cache entry was replaced), else None.
    """

    values: np.ndarray
    source: Source
    notice: str | None = None


class OnDemand:
    """Per-sample results for the runs of one data dir: cached, computed by the model service,
    rendered by ``components``."""

    def __init__(
        self,
        data_dir: Path,
        device: str = "auto",
        memory_bytes: int = MEMORY_BYTES,
        disk_bytes: int = DISK_BYTES,
        max_models: int = 2,
    ):
        data_dir = Path(data_dir)
        self.model_service = ModelService(data_dir, device, max_models)
        disk = DiskStore(lambda: cache_dir(data_dir, "activations"), disk_bytes)
        self.results = TieredCache(memory_bytes, disk)
        self.derived = TieredCache(DERIVED_BYTES)
        self._placer: Any = None  # a pipelines.placement.Placer, made on first use

    def limit_memory(self, processes: int, results_bytes: int = MEMORY_BYTES) -> None:
        """Serving from ``processes`` worker processes with ``results_bytes`` of memory for
        torch results in all (``serve --cache-mb``): each process keeps its share of that and of
        the PNG budget, so the server as a whole stays within them, whatever the traffic; the
        disk cache is shared by all."""
        for cache, budget in ((self.results, results_bytes), (self.derived, DERIVED_BYTES)):
            cache.memory.max_bytes = max(budget // max(1, processes), 1 << 20)

    def layer_activation(self, run: RunData, sample: Sample, layer_id: str) -> Activation:
        """One layer's activations for a sample row or an uploaded picture. One forward pass
        captures every layer (the user usually steps through layers of the same sample next);
        all are kept in memory, the layer looked at also on disk."""
        shape = run.layer(layer_id).output_shape
        prefix = f"act/{sample_key(run, sample)}"

        def forward() -> dict[str, np.ndarray]:
            captured = self.model_service.activations(run, sample)
            if layer_id not in captured:
                raise UserError(
                    f"layer {layer_id} produced no tensor for {describe(sample)} (it did not run "
                    "in the forward pass); pick another layer"
                )
            return {f"{prefix}/{layer}": values for layer, values in captured.items()}

        cached = self.results.get_or_compute(
            f"{prefix}/{layer_id}",
            forward,
            array_codec(shape),
            flight=prefix,
            what=f"activations of {describe(sample)} at layer {layer_id}",
        )
        # Captured NHWC maps are strided views; only the layer asked for is made contiguous.
        return Activation(np.ascontiguousarray(cached.value), cached.source, cached.notice)

    def probabilities(self, run: RunData, sample: ImageSample) -> np.ndarray:
        """(K,) float32 class probabilities of an uploaded picture, from the forward pass that
        also places it in the maps (``placements``), so listing and placing it is one pass."""
        return self._image_pass(run, sample).probabilities[0]

    def scores(self, run: RunData, sample: Sample, layer_id: str, values: np.ndarray) -> np.ndarray:
        """(C,) float32 channel scores of a (C, H, W) activation, cached per sample and layer."""
        key = f"scores/{sample_key(run, sample)}/{layer_id}"
        return self.derived.get_or_compute(key, lambda: {key: channel_scores(values)}).value

    def grid_png(self, run: RunData, sample: Sample, layer_id: str, sort: str) -> bytes:
        """The tiled activation grid of ``layer_id`` for a sample as an indexed PNG."""
        key = f"grid/{sample_key(run, sample)}/{layer_id}/{sort}"

        def render() -> dict[str, bytes]:
            values = self.layer_activation(run, sample, layer_id).values
            if values.ndim != 3:
                raise UserError(
                    f"layer {layer_id} has no channel maps (output {values.shape}); it is shown "
                    "as a heatmap"
                )
            return {key: grid_png(values, self.scores(run, sample, layer_id, values), sort)}

        return self.derived.get_or_compute(key, render).value

    def class_explanations(
        self,
        run: RunData,
        sample: Sample,
        class_index: int,
        methods: Sequence[str],
        layer_id: str | None = None,
        progress: Progress = no_progress,
    ) -> dict[str, MethodMaps]:
        """The named methods' explanations of a sample row or an uploaded picture for model class
        ``class_index`` (``ModelService.explanations``), each cached by itself: the quick methods
        not cached yet are computed together in one pass, each slow one alone, reporting to
        ``progress``."""
        class_index = int(class_index)
        if not isinstance(sample, ImageSample):
            sample = run.check_row(sample)
        chosen = explainers(methods)
        layer = ModelService.target_layer(run, layer_id, chosen)
        size = explanation_size(run)

        def key(method: str) -> str:
            weighed = layer if EXPLAINERS[method].uses_target_layer else "-"
            return f"explain/{sample_key(run, sample)}/{class_index}/{weighed}/{method}"

        def compute(names: list[str]) -> dict[str, MethodMaps]:
            computed = self.model_service.explanations(
                run, sample, class_index, names, layer, progress
            )
            return {key(name): maps for name, maps in computed.items()}

        fast = [e.name for e in chosen if not e.slow]
        results = {}
        for explainer in chosen:
            names = fast if not explainer.slow else [explainer.name]
            results[explainer.name] = self.results.get_or_compute(
                key(explainer.name),
                lambda names=names: compute(names),  # type: ignore[misc]
                method_codec(size),
                what=f"{explainer.title} of {describe(sample)} for class {class_index}",
            ).value
        return results

    def class_explanation_png(
        self,
        run: RunData,
        sample: Sample,
        class_index: int,
        method: str,
        layer_id: str | None = None,
    ) -> bytes:
        """PNG of one method's explanation of a sample for a chosen class, drawn as the
        method's ``display`` says, over the sample's thumbnail."""
        (explainer,) = explainers([method])
        if not isinstance(sample, ImageSample):
            sample = run.check_row(sample)
        layer = ModelService.target_layer(run, layer_id, [explainer]) or "-"
        key = f"explain-png/{sample_key(run, sample)}/{int(class_index)}/{layer}/{method}"

        def render() -> dict[str, bytes]:
            maps = self.class_explanations(run, sample, class_index, [method], layer_id)[method]
            shown = explanation_png(
                explainer.display.value, maps["map"], self.thumbnail(run, sample)
            )
            return {key: shown}

        return self.derived.get_or_compute(key, render).value

    def placements(
        self, run: RunData, samples: Sequence[ImageSample], view: Mapping[str, Any]
    ) -> np.ndarray:
        """(M, 2) float32: where each picture falls in the map ``view`` names (its layer, subset,
        method and perplexity), placed with the embedding that map was made with. One forward
        pass per picture and run version serves every layer (kept in memory)."""
        from pipelines import placement  # openTSNE's import is not needed to start the server

        layer_id, subset = str(view["layer"]), int(view["subset"])
        method = str(view["method"])
        perplexity = (
            float(view["perplexity"]) if method == "tsne" and view.get("perplexity") else None
        )
        placement.require_placement_data(run.store, layer_id)
        if self._placer is None:
            self._placer = placement.Placer()
        passes = [self._image_pass(run, sample) for sample in samples]
        return np.concatenate(
            [
                self._placer.place(run.store, image_pass, layer_id, subset, method, perplexity)
                for image_pass in passes
            ]
        ).reshape(-1, 2)

    def _image_pass(self, run: RunData, sample: ImageSample) -> Any:
        key = f"pass/{sample_key(run, sample)}"

        def forward() -> dict[str, Any]:
            return {key: self.model_service.image_pass(run, sample)}

        return self.results.get_or_compute(key, forward).value

    def thumbnail(self, run: RunData, sample: Sample) -> np.ndarray:
        """(T, T, 3) uint8: the stored thumbnail of a row; for a picture, the model's square view
        of it at the same size (what the model sees, as the run's thumbnails show)."""
        if not isinstance(sample, ImageSample):
            return np.asarray(run.thumbnails()[run.check_row(sample)])
        key = f"thumb/{sample_key(run, sample)}"

        def render() -> dict[str, np.ndarray]:
            view = self.model_service.view(run, sample.image)
            size = int(run.thumbnails().shape[1])
            return {key: np.asarray(view.convert("RGB").resize((size, size)))}

        return self.derived.get_or_compute(key, render).value


def sample_key(run: RunData, sample: Sample) -> str:
    """The cache key part naming a sample row or an uploaded picture of a run version."""
    name = sample.key if isinstance(sample, ImageSample) else str(int(sample))
    return f"{run.run_id}/{run.version}/{name}"


def describe(sample: Sample) -> str:
    return "the uploaded image" if isinstance(sample, ImageSample) else f"sample {sample}"


_BY_DIR: dict[Path, OnDemand] = {}
_BY_DIR_LOCK = threading.Lock()


def for_data_dir(data_dir: Path) -> OnDemand:
    """The process-wide on-demand results of ``data_dir`` (one model and cache set per dir)."""
    key = Path(data_dir).resolve()
    with _BY_DIR_LOCK:
        if key not in _BY_DIR:
            _BY_DIR[key] = OnDemand(key)
        return _BY_DIR[key]
