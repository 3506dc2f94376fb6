"""What the dashboard computes on demand for one sample, cached: a layer's activations, its
channel scores and grid PNG, and the explanations of a clicked class with their PNGs.

Each is one ``TieredCache.get_or_compute`` call: torch results (from ``ModelService``) in a
bounded memory LRU in front of a diskcache under ``<data-dir>/cache/activations``; channel
scores and PNGs (rendered by ``components/``) in a small memory-only LRU.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.activations import channel_scores, grid_png
from components.images import explanation_png
from dashboard.caches import DiskStore, Source, TieredCache, array_codec, cache_dir, method_codec
from dashboard.data import RunData
from dashboard.model_service import MethodMaps, ModelService, explanation_size
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

    def layer_activation(self, run: RunData, row: int, layer_id: str) -> Activation:
        """One layer's activations for sample ``row``. One forward pass captures every layer
        (the user usually steps through layers of the same sample next); all are kept in
        memory, and the layer looked at also on disk."""
        row = run.check_row(row)
        shape = run.layer(layer_id).output_shape
        sample = f"act/{run.run_id}/{run.version}/{row}"

        def forward() -> dict[str, np.ndarray]:
            captured = self.model_service.activations(run, row)
            if layer_id not in captured:
                raise UserError(
                    f"layer {layer_id} produced no tensor for sample {row} (it did not run in "
                    "the forward pass); pick another layer"
                )
            return {f"{sample}/{layer}": values for layer, values in captured.items()}

        cached = self.results.get_or_compute(
            f"{sample}/{layer_id}",
            forward,
            array_codec(shape),
            flight=sample,
            what=f"activations of sample {row} at layer {layer_id}",
        )
        # Captured NHWC maps are strided views; only the layer asked for is made contiguous.
        return Activation(np.ascontiguousarray(cached.value), cached.source, cached.notice)

    def scores(self, run: RunData, row: int, layer_id: str, values: np.ndarray) -> np.ndarray:
        """(C,) float32 channel scores of a (C, H, W) activation, cached per sample and layer."""
        key = f"scores/{run.run_id}/{run.version}/{int(row)}/{layer_id}"
        return self.derived.get_or_compute(key, lambda: {key: channel_scores(values)}).value

    def grid_png(self, run: RunData, row: int, layer_id: str, sort: str) -> bytes:
        """The tiled activation grid of ``layer_id`` for sample ``row`` as an indexed PNG."""
        key = f"grid/{run.run_id}/{run.version}/{int(row)}/{layer_id}/{sort}"

        def render() -> dict[str, bytes]:
            values = self.layer_activation(run, row, layer_id).values
            if values.ndim != 3:
                raise UserError(
                    f"layer {layer_id} has no channel maps (output {values.shape}); it is shown "
                    "as a heatmap"
                )
            return {key: grid_png(values, self.scores(run, row, layer_id, values), sort)}

        return self.derived.get_or_compute(key, render).value

    def class_explanations(
        self,
        run: RunData,
        row: int,
        class_index: int,
        methods: Sequence[str],
        layer_id: str | None = None,
        progress: Progress = no_progress,
    ) -> dict[str, MethodMaps]:
        """The named methods' explanations of sample ``row`` for model class ``class_index``
        (``ModelService.explanations``), each cached by itself: the quick methods not cached yet
        are computed together in one pass, each slow one alone, reporting to ``progress``."""
        row, class_index = run.check_row(row), int(class_index)
        chosen = explainers(methods)
        layer = ModelService.target_layer(run, layer_id, chosen)
        size = explanation_size(run)

        def key(method: str) -> str:
            weighed = layer if EXPLAINERS[method].uses_target_layer else "-"
            return f"explain/{run.run_id}/{run.version}/{row}/{class_index}/{weighed}/{method}"

        def compute(names: list[str]) -> dict[str, MethodMaps]:
            computed = self.model_service.explanations(
                run, row, class_index, names, layer, progress
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
                what=f"{explainer.title} of sample {row} for class {class_index}",
            ).value
        return results

    def class_explanation_png(
        self, run: RunData, row: int, class_index: int, method: str, layer_id: str | None = None
    ) -> bytes:
        """PNG of one method's explanation of sample ``row`` for a chosen class, drawn as the
        method's ``display`` says, over the sample's thumbnail."""
        (explainer,) = explainers([method])
        row = run.check_row(row)
        layer = ModelService.target_layer(run, layer_id, [explainer]) or "-"
        key = f"explain-png/{run.run_id}/{run.version}/{row}/{int(class_index)}/{layer}/{method}"

        def render() -> dict[str, bytes]:
            maps = self.class_explanations(run, row, class_index, [method], layer_id)[method]
            return {
                key: explanation_png(explainer.display.value, maps["map"], run.thumbnails()[row])
            }

        return self.derived.get_or_compute(key, render).value


_BY_DIR: dict[Path, OnDemand] = {}
_BY_DIR_LOCK = threading.Lock()


def for_data_dir(data_dir: Path) -> OnDemand:
    """The process-wide on-demand results of ``data_dir`` (one model and cache set per dir)."""
    key = Path(data_dir).resolve()
    with _BY_DIR_LOCK:
        if key not in _BY_DIR:
            _BY_DIR[key] = OnDemand(key)
        return _BY_DIR[key]
