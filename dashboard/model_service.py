"""The only place the dashboard runs torch: per-sample activations and per-class explanations.

Everything the precompute did not store is computed here on demand, for one sample at a time:

- ``layer_activation``: ONE forward pass per sample captures every layer at once (the user
  usually steps through layers of the same sample next); the whole capture is kept in a bounded
  in-memory LRU (by bytes), and each layer that is actually looked at is also written to a
  diskcache under ``<data-dir>/cache/`` so it survives restarts and is shared with Celery
  workers.
- ``class_explanations``: Grad-CAM, guided backprop and guided Grad-CAM for a class the user
  clicked (the precompute stored them for the predicted class only).

Models run on the GPU when one is visible. A model's hooks are not thread-safe (two captures
on one module would see each other's hooks), so every use of a model holds that model's lock.
A corrupt disk-cache entry is dropped and recomputed, and the result says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.activations import (
    GRID_PALETTE,
    channel_order,
    channel_scores,
    grid_geometry,
    render_grid,
)
from components.images import encode_png, gradcam_overlay
from dashboard.caches import cache_dir
from dashboard.data import EXPLANATION_METHODS, RunData
from pipelines.cores import idle_cores
from pipelines.errors import UserError
from pipelines.features import capture_layers

LOG = logging.getLogger(__name__)

MEMORY_BYTES = 1 << 30  # activations kept in RAM: ~9 VGG16 samples with every layer
DISK_BYTES = 4 << 30
# Intra-op threads for one request's forward pass: the cores idle right now, for models whose
# pass is big enough to split. Measured on 2 cores: VGG16 at 224 px took 0.26 s on two idle
# cores and 0.44 s on one, but 1.2 s on two while other work ran (OpenMP's fork-join stalls when
# its threads are preempted); smallcnn took 0.6 ms on one thread and 9-70 ms on two under load.
# Concurrent requests see each other's cores busy, so they do not oversubscribe either.
# "Big enough" is judged by the values the layers output, known from the manifest before any
# pass runs (a timed first pass would include one-off warm-up): smallcnn on digits outputs 67k,
# VGG16 at 224 px 28.8M.
PARALLEL_MIN_ACTIVATIONS = 1_000_000
IDLE_SAMPLE_SECONDS = 0.02


def request_threads(activation_values: int) -> int:
    """Threads for one pass of a CPU model whose layers output ``activation_values`` values:
    one for small models, else the cores idle now."""
    if activation_values < PARALLEL_MIN_ACTIVATIONS:
        return 1
    return idle_cores(IDLE_SAMPLE_SECONDS)


def activation_values(layers: list[dict[str, Any]]) -> int:
    """Values one sample's forward pass outputs, over the manifest's layers."""
    return sum(math.prod(layer.get("output_shape") or [0]) for layer in layers)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Activation:
    """One layer's output for one sample.

    values: (C, H, W) or (F,) float32 raw activations (batch dimension dropped).
    source: "memory", "disk" or "computed"; notice: a sentence for the page when something
    unusual happened (a corrupt cache entry was replaced), else None.
    """

    values: np.ndarray
    source: str
    notice: str | None = None


class ByteLRU:
    """An LRU mapping bounded by the summed ``nbytes`` of its values (dicts of arrays count
    each array)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def size_of(value: Any) -> int:
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, bytes):
            return len(value)
        if isinstance(value, dict):
            return sum(ByteLRU.size_of(v) for v in value.values())
        return 64

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = self.size_of(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            # Always keep the newest entry, even if it alone exceeds the budget.
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def array_to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(data: Any, expected_shape: tuple[int, ...] | None) -> np.ndarray:
    """Decode a cached array; ValueError when it is not a readable array of the expected shape."""
    if not isinstance(data, bytes):
        raise ValueError(f"cache entry is a {type(data).__name__}, not array bytes")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt entry
        raise ValueError(f"not a readable array: {type(exc).__name__}: {exc}") from exc
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise ValueError(f"cached array has shape {array.shape}, expected {expected_shape}")
    return array


class ModelService:
    """Per-sample torch work for one data dir, with bounded memory and disk caches."""

    def __init__(
        self,
        data_dir: Path,
        device: str = "auto",
        memory_bytes: int = MEMORY_BYTES,
        disk_bytes: int = DISK_BYTES,
        max_models: int = 2,
    ):
        self.data_dir = Path(data_dir)
        self.device = device
        self.disk_bytes = disk_bytes
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, int], tuple[Any, threading.Lock]] = OrderedDict()
        self._activations = ByteLRU(memory_bytes)
        self._derived = ByteLRU(64 << 20)  # scores, grid PNGs, explanation PNGs
        self._disk: Any = None
        self._disk_failed: str | None = None
        self._lock = threading.RLock()
        self._inflight: dict[Hashable, threading.Lock] = {}

    # ---- caches -----------------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        """``<data-dir>/cache/activations``, or a temp folder if the data dir is read-only."""
        return cache_dir(self.data_dir, "activations")

    @property
    def disk(self) -> Any:
        """The diskcache (opened on first use), or None if it cannot be opened here."""
        if self._disk is None and self._disk_failed is None:
            import diskcache

            try:
                self._disk = diskcache.Cache(str(self.cache_dir), size_limit=self.disk_bytes)
            except Exception as exc:  # noqa: BLE001 - a broken cache must not break the page
                self._disk_failed = f"{type(exc).__name__}: {exc}"
                LOG.warning("activation disk cache disabled: %s", self._disk_failed)
        return self._disk

    def _key_lock(self, key: Hashable) -> threading.Lock:
        with self._lock:
            return self._inflight.setdefault(key, threading.Lock())

    def _disk_get(self, key: str) -> Any:
        disk = self.disk
        if disk is None:
            return None
        try:
            return disk.get(key)
        except Exception as exc:  # noqa: BLE001 - unreadable entry: treat as corrupt
            LOG.warning("disk cache read failed for %s: %s", key, exc)
            return _CORRUPT

    def _disk_set(self, key: str, value: bytes) -> None:
        disk = self.disk
        if disk is None:
            return
        try:
            disk.set(key, value)
        except Exception as exc:  # noqa: BLE001 - a full or read-only disk only costs speed
            LOG.warning("disk cache write failed for %s: %s", key, exc)

    def _disk_delete(self, key: str) -> None:
        disk = self.disk
        if disk is not None:
            try:
                disk.delete(key)
            except Exception as exc:  # noqa: BLE001
                LOG.warning("disk cache delete failed for %s: %s", key, exc)

    # ---- models -----------------------------------------------------------------------------

    def model(self, run: RunData) -> tuple[Any, threading.Lock]:
        """The run's model (``pipelines.models.RunModel``) and the lock guarding its use."""
        key = (run.run_id, run.version)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._key_lock(("model", *key)):
            with self._lock:
                if key in self._models:
                    return self._models[key]
            from pipelines.models import open_run_model

            if run.stages.get("model", {}).get("state") != "done" or not run.layers:
                raise UserError(
                    f"the model of run '{run.run_id}' is not ready yet; wait for its precompute "
                    "to finish the model and index stages"
                )
            try:
                loaded = open_run_model(run.store, self.data_dir, self.device)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(
                    f"could not reopen the model of run '{run.run_id}' ({type(exc).__name__}: {exc}); "
                    "check the model files it was computed from are still in place"
                ) from exc
            if loaded.adapter.device.type == "cpu":
                # oneDNN's CPU convolutions run ~20% faster on NHWC tensors (VGG16 at 224 px,
                # one thread: 0.75 s -> 0.6 s); activations are made contiguous per layer later.
                loaded.adapter.module.to(memory_format=torch.channels_last)
            entry = (loaded, threading.Lock())
            with self._lock:
                self._models[key] = entry
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return entry

    @contextlib.contextmanager
    def _threads_for_pass(self, run: RunData, model: Any) -> Iterator[None]:
        """Run one request's torch work on as many threads as suit this model and machine now."""
        if model.adapter.device.type != "cpu":
            yield
            return
        with torch_threads(request_threads(activation_values(run.layers))):
            yield

    # ---- activations ------------------------------------------------------------------------

    def _capture(self, run: RunData, row: int) -> dict[str, np.ndarray]:
        """One forward pass of sample ``row``: every layer's output, (C, H, W) / (F,) float32."""
        model, lock = self.model(run)
        layer_ids = run.layer_ids
        with lock, self._threads_for_pass(run, model):
            images = model.input_for(row)
            if images.device.type == "cpu" and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            _, captured = capture_layers(model.adapter.module, images, layer_ids)
        return {
            layer_id: tensor[0].detach().to("cpu", torch.float32).numpy()
            for layer_id, tensor in captured.items()
        }

    def _expected_shape(self, run: RunData, layer_id: str) -> tuple[int, ...]:
        return tuple(int(v) for v in run.layer(layer_id).get("output_shape") or ())

    def layer_activation(self, run: RunData, row: int, layer_id: str) -> Activation:
        """One layer's activations for sample ``row``: memory, then disk, then a forward pass."""
        row = run.check_row(row)
        expected = self._expected_shape(run, layer_id)
        memory_key = (run.run_id, run.version, row)
        disk_key = f"act/{run.run_id}/{run.version}/{row}/{layer_id}"
        with self._key_lock(memory_key):
            captured = self._activations.get(memory_key)
            if captured is not None and layer_id in captured:
                return Activation(np.ascontiguousarray(captured[layer_id]), "memory")
            notice = None
            cached = self._disk_get(disk_key)
            if cached is not None:
                try:
                    return Activation(array_from_bytes(cached, expected), "disk")
                except ValueError as exc:
                    self._disk_delete(disk_key)
                    notice = (
                        f"The cached activations of sample {row} at layer {layer_id} were "
                        f"unreadable ({exc}); they were deleted and recomputed."
                    )
            captured = self._capture(run, row)
            self._activations.put(memory_key, captured)
        if layer_id not in captured:
            raise UserError(
                f"layer {layer_id} produced no tensor for sample {row} (it did not run in the "
                "forward pass); pick another layer"
            )
        # Captured NHWC maps are strided views; only the layer asked for is made contiguous.
        values = np.ascontiguousarray(captured[layer_id])
        self._disk_set(disk_key, array_to_bytes(values))
        return Activation(values, "computed", notice)

    def scores(self, run: RunData, row: int, layer_id: str, values: np.ndarray) -> np.ndarray:
        """(C,) float32 channel scores of a (C, H, W) activation, cached per sample and layer."""
        key = ("scores", run.run_id, run.version, int(row), layer_id)
        cached = self._derived.get(key)
        if cached is None:
            cached = channel_scores(values)
            self._derived.put(key, cached)
        return cached

    def grid_png(self, run: RunData, row: int, layer_id: str, sort: str) -> bytes:
        """The tiled activation grid of ``layer_id`` for sample ``row`` as an indexed PNG."""
        key = ("grid", run.run_id, run.version, int(row), layer_id, sort)
        cached = self._derived.get(key)
        if cached is not None:
            return cached
        values = self.layer_activation(run, row, layer_id).values
        if values.ndim != 3:
            raise UserError(
                f"layer {layer_id} has no channel maps (output {values.shape}); it is shown as a heatmap"
            )
        scores = self.scores(run, row, layer_id, values)
        order = channel_order(scores, sort)
        png = encode_png(
            render_grid(values, scores, order, grid_geometry(len(scores))), GRID_PALETTE
        )
        self._derived.put(key, png)
        return png

    # ---- explanations for a chosen class ----------------------------------------------------

    def class_explanations(self, run: RunData, row: int, class_index: int) -> dict[str, np.ndarray]:
        """Grad-CAM (S, S) float16, guided backprop and guided Grad-CAM (S, S, 3) uint8 of sample
        ``row`` for model class ``class_index``."""
        row = run.check_row(row)
        num_classes = len(run.model_class_names)
        if not 0 <= int(class_index) < num_classes:
            raise UserError(f"class {class_index} is not one of the model's {num_classes} classes")
        layer_name = (run.manifest.get("model") or {}).get("gradcam_layer")
        if not layer_name:
            raise UserError(
                f"run '{run.run_id}' has no spatial conv layer to explain with Grad-CAM, so no "
                "explanations can be computed for it"
            )
        size = int(run.manifest.get("explanation_size") or 64)
        memory_key = ("explain", run.run_id, run.version, row, int(class_index))
        disk_key = f"explain/{run.run_id}/{run.version}/{row}/{int(class_index)}"
        with self._key_lock(memory_key):
            cached = self._activations.get(memory_key)
            if cached is not None:
                return cached
            stored = self._disk_get(disk_key)
            if stored is not None:
                try:
                    result = unpack_explanations(stored, size)
                    self._activations.put(memory_key, result)
                    return result
                except ValueError as exc:
                    LOG.warning("dropping corrupt explanation cache %s: %s", disk_key, exc)
                    self._disk_delete(disk_key)
            from pipelines.explain import explain

            model, lock = self.model(run)
            with lock, self._threads_for_pass(run, model):
                images = model.input_for(row)
                target = model.layer_module(layer_name)
                classes = torch.tensor([int(class_index)], device=images.device)
                arrays = explain(
                    model.adapter.module, target, images, classes, EXPLANATION_METHODS, size
                ).maps
            result = {method: np.asarray(arrays[method][0]) for method in EXPLANATION_METHODS}
            self._activations.put(memory_key, result)
        self._disk_set(disk_key, pack_explanations(result))
        return result

    def class_explanation_png(self, run: RunData, row: int, class_index: int, method: str) -> bytes:
        """PNG of one method's explanation for a chosen class; Grad-CAM over the thumbnail."""
        if method not in EXPLANATION_METHODS:
            raise UserError(
                f"unknown explanation method '{method}'; use one of {', '.join(EXPLANATION_METHODS)}"
            )
        key = ("explain-png", run.run_id, run.version, int(row), int(class_index), method)
        cached = self._derived.get(key)
        if cached is not None:
            return cached
        arrays = self.class_explanations(run, row, class_index)
        if method == "gradcam":
            png = encode_png(gradcam_overlay(np.asarray(run.thumbnails()[row]), arrays["gradcam"]))
        else:
            png = encode_png(arrays[method])
        self._derived.put(key, png)
        return png


def pack_explanations(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_explanations(data: Any, size: int) -> dict[str, np.ndarray]:
    """Decode ``pack_explanations`` output; ValueError if it is not three maps of ``size``."""
    if not isinstance(data, bytes):
        raise ValueError(f"cache entry is a {type(data).__name__}, not npz bytes")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            result = {method: npz[method] for method in EXPLANATION_METHODS}
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt entry
        raise ValueError(f"not readable explanations: {type(exc).__name__}: {exc}") from exc
    if result["gradcam"].shape != (size, size):
        raise ValueError(
            f"cached Grad-CAM has shape {result['gradcam'].shape}, expected ({size}, {size})"
        )
    return result


_CORRUPT = b"\x00corrupt"  # what a failed disk read returns: fails array decoding like garbage
_SERVICE_BY_DIR: dict[Path, ModelService] = {}
_REGISTRY_LOCK = threading.Lock()


def get_service(data_dir: Path) -> ModelService:
    """The process-wide service of ``data_dir`` (one model cache per data dir)."""
    key = Path(data_dir).resolve()
    with _REGISTRY_LOCK:
        if key not in _SERVICE_BY_DIR:
            _SERVICE_BY_DIR[key] = ModelService(key)
        return _SERVICE_BY_DIR[key]
