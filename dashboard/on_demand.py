"""What the dashboard computes on demand for one sample, cached: a layer's activations, its
channel scores and grid PNG, and the explanations of a clicked class with their PNGs.

Each is one ``TieredCache.get_or_compute`` call: torch results (from ``ModelService``) in a
bounded memory LRU in front of a diskcache under ``<data-dir>/cache/activations``; channel
scores and PNGs (rendered by ``components/``) in a small memory-only LRU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.activations import channel_scores, grid_png
from components.images import explanation_png
from dashboard.caches import DiskStore, Source, TieredCache, array_codec, cache_dir, maps_codec
from dashboard.data import EXPLANATION_METHODS, RunData
from dashboard.model_service import ModelService, explanation_size
from pipelines.errors import UserError

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

    def class_explanations(self, run: RunData, row: int, class_index: int) -> dict[str, np.ndarray]:
        """Grad-CAM (S, S) float16, guided backprop and guided Grad-CAM (S, S, 3) uint8 of
        sample ``row`` for model class ``class_index`` (the precompute stored them for the
        predicted class only)."""
        row, class_index = run.check_row(row), int(class_index)
        key = f"explain/{run.run_id}/{run.version}/{row}/{class_index}"
        return self.results.get_or_compute(
            key,
            lambda: {key: self.model_service.explanations(run, row, class_index)},
            maps_codec(EXPLANATION_METHODS, explanation_size(run)),
            what=f"explanations of sample {row} for class {class_index}",
        ).value

    def class_explanation_png(self, run: RunData, row: int, class_index: int, method: str) -> bytes:
        """PNG of one method's explanation for a chosen class; Grad-CAM over the thumbnail."""
        if method not in EXPLANATION_METHODS:
            raise UserError(
                f"unknown explanation method '{method}'; use one of {', '.join(EXPLANATION_METHODS)}"
            )
        row = run.check_row(row)
        key = f"explain-png/{run.run_id}/{run.version}/{row}/{int(class_index)}/{method}"

        def render() -> dict[str, bytes]:
            maps = self.class_explanations(run, row, class_index)
            return {key: explanation_png(method, maps[method], run.thumbnails()[row])}

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
