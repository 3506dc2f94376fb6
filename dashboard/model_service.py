"""The only place the dashboard runs torch: a run's model, one forward pass of a sample with
every layer captured, and a sample's explanations for a chosen class.

Results are neither cached nor rendered here (``dashboard/on_demand.py`` caches them through
``caches.TieredCache``; ``components/`` renders them). Models run on the GPU when one is
visible. A model's hooks are not thread-safe (two captures on one module would see each other's
hooks), so every use of a model holds that model's lock.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dashboard.data import EXPLANATION_METHODS, RunData
from pipelines.cores import idle_cores
from pipelines.errors import UserError
from pipelines.explain import explain
from pipelines.features import capture_layers
from pipelines.records import LayerSpec

if TYPE_CHECKING:
    from pipelines.models import RunModel

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
# The explanation size of runs whose manifest predates ``explanation_size``.
DEFAULT_EXPLANATION_SIZE = 64


def request_threads(activation_values: int) -> int:
    """Threads for one pass of a CPU model whose layers output ``activation_values`` values:
    one for small models, else the cores idle now."""
    if activation_values < PARALLEL_MIN_ACTIVATIONS:
        return 1
    return idle_cores(IDLE_SAMPLE_SECONDS)


def activation_values(layers: Sequence[LayerSpec]) -> int:
    """Values one sample's forward pass outputs, over the manifest's layers."""
    return sum(math.prod(layer.output_shape or (0,)) for layer in layers)


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


def explanation_size(run: RunData) -> int:
    """S of the run's (S, S) explanation maps."""
    return int(run.manifest.get("explanation_size") or DEFAULT_EXPLANATION_SIZE)


class ModelService:
    """Per-sample torch work for the runs of one data dir, keeping the last ``max_models``
    models loaded."""

    def __init__(self, data_dir: Path, device: str = "auto", max_models: int = 2):
        self.data_dir = Path(data_dir)
        self.device = device
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, int], tuple[RunModel, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        # One per run version, held while it loads, so concurrent first requests load it once.
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def model(self, run: RunData) -> tuple[RunModel, threading.Lock]:
        """The run's model and the lock guarding its use."""
        key = (run.run_id, run.version)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            entry = (self._load(run), threading.Lock())
            with self._lock:
                self._models[key] = entry
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return entry

    def _load(self, run: RunData) -> RunModel:
        # Imported on first use: torchvision's import would slow the dashboard's start.
        from pipelines.models import open_run_model

        if run.stage("model").state != "done" or not run.layers:
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
        return loaded

    @contextlib.contextmanager
    def _using(self, run: RunData) -> Iterator[RunModel]:
        """Hold the run's model, on as many threads as suit this model and machine now."""
        model, lock = self.model(run)
        with lock:
            if model.adapter.device.type != "cpu":
                yield model
                return
            with torch_threads(request_threads(activation_values(run.layers))):
                yield model

    @staticmethod
    def _input(model: RunModel, row: int) -> torch.Tensor:
        images = model.input_for(row)
        if images.device.type == "cpu" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def activations(self, run: RunData, row: int) -> dict[str, np.ndarray]:
        """One forward pass of sample ``row``: every layer's output, (C, H, W) / (F,) float32.

        Values of NHWC layers are strided views; callers make the layer they use contiguous.
        """
        row = run.check_row(row)
        with self._using(run) as model:
            _, captured = capture_layers(
                model.adapter.module, self._input(model, row), run.layer_ids
            )
        return {
            layer_id: tensor[0].detach().to("cpu", torch.float32).numpy()
            for layer_id, tensor in captured.items()
        }

    def explanations(self, run: RunData, row: int, class_index: int) -> dict[str, np.ndarray]:
        """Every stored method's explanation of sample ``row`` for model class ``class_index``,
        by the engine the precompute uses: Grad-CAM (S, S) float16, guided backprop and guided
        Grad-CAM (S, S, 3) uint8."""
        row = run.check_row(row)
        num_classes = len(run.model_class_names)
        if not 0 <= int(class_index) < num_classes:
            raise UserError(f"class {class_index} is not one of the model's {num_classes} classes")
        layer_name = run.gradcam_layer
        if not layer_name:
            raise UserError(
                f"run '{run.run_id}' has no spatial conv layer to explain with Grad-CAM, so no "
                "explanations can be computed for it"
            )
        with self._using(run) as model:
            images = self._input(model, row)
            classes = torch.tensor([int(class_index)], device=images.device)
            maps = explain(
                model.adapter.module,
                model.layer_module(layer_name),
                images,
                classes,
                EXPLANATION_METHODS,
                explanation_size(run),
                decode=model.adapter.decode,
            ).maps
        return {method: maps[method][0] for method in EXPLANATION_METHODS}
