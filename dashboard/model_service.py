"""The only place the dashboard runs torch: a run's model, one forward pass of a sample with
every layer captured, and a sample's explanations for a chosen class.

Results are neither cached nor rendered here (``dashboard/on_demand.py`` caches them through
``caches.TieredCache``; ``components/`` renders them). Models run on the GPU when one is
visible. A model's hooks are not thread-safe (two captures on one module would see each other's
hooks), so every use of a model holds that model's lock.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from dashboard.data import RunData
from pipelines.cores import idle_cores
from pipelines.errors import UserError
from pipelines.explain import Explainer, Progress, explain
from pipelines.explain.base import no_progress
from pipelines.explain.registry import explainers
from pipelines.features import capture_layers
from pipelines.records import LayerSpec

if TYPE_CHECKING:
    from pipelines.models import ModelAdapter, RunModel
    from pipelines.placement import ImagePass

# One method's explanation of one sample: "map" is its display array, other keys its extras.
MethodMaps = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class ImageSample:
    """A picture that is not one of the run's samples (an upload): ``key`` names it in caches,
    e.g. "upload/<id>"."""

    key: str
    image: Image.Image


# A sample row of the run, or a picture from elsewhere.
Sample = int | ImageSample


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
    return run.record.explanation_size or DEFAULT_EXPLANATION_SIZE


class ModelService:
    """Per-sample torch work for the runs of one data dir, keeping the last ``max_models``
    models loaded."""

    def __init__(
        self, data_dir: Path, device: str = "auto", max_models: int = 2, max_replicas: int = 2
    ):
        self.data_dir = Path(data_dir)
        self.device = device
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, int], tuple[RunModel, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        # One per run version, held while it loads, so concurrent first requests load it once.
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        # Copies of a model for slow explanations (``_replica``), idle ones by run version.
        self.max_replicas = max_replicas
        self._replicas: dict[tuple[str, int], list[ModelAdapter]] = {}
        self._replica_count: dict[tuple[str, int], int] = {}
        self._replica_ready = threading.Condition()

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
    def _input(run: RunData, model: RunModel, sample: Sample) -> torch.Tensor:
        """(1, C, S, S) model-ready input of a sample row or an uploaded picture."""
        if isinstance(sample, ImageSample):
            images = model.adapter.preprocess([sample.image])
        else:
            images = model.input_for(run.check_row(sample))
        if images.device.type == "cpu" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def activations(self, run: RunData, sample: Sample) -> dict[str, np.ndarray]:
        """One forward pass of a sample row or an uploaded picture: every layer's output,
        (C, H, W) / (F,) float32.

        Values of NHWC layers are strided views; callers make the layer they use contiguous.
        """
        with self._using(run) as model:
            _, captured = capture_layers(
                model.adapter.module, self._input(run, model, sample), run.layer_ids
            )
        return {
            layer_id: tensor[0].detach().to("cpu", torch.float32).numpy()
            for layer_id, tensor in captured.items()
        }

    def image_pass(self, run: RunData, sample: ImageSample) -> ImagePass:
        """A picture's forward pass with every layer's pooled features, as the precompute
        pooled the samples' (what ``pipelines.placement`` places into the maps)."""
        from pipelines.placement import forward_images

        with self._using(run) as model:
            return forward_images(run.store, model, [sample.image])

    def view(self, run: RunData, image: Image.Image) -> Image.Image:
        """The model's square view of a picture (the size and mode it is fed at)."""
        model, _ = self.model(run)
        return model.adapter.view(image)

    def explanations(
        self,
        run: RunData,
        sample: Sample,
        class_index: int,
        methods: Sequence[str],
        layer_id: str | None = None,
        progress: Progress = no_progress,
    ) -> dict[str, MethodMaps]:
        """The named methods' explanations of a sample row or an uploaded picture for model class
        ``class_index``, by
        the engine the precompute uses: {method: {"map": display array, extra name: array}}
        (shapes as each method's ``display`` says; extras such as occlusion's probabilities).

        ``layer_id`` is the layer the Grad-CAM family weighs (default: the run's Grad-CAM
        layer). Slow methods run on a copy of the model of their own, so the requests that need
        the model meanwhile (hover, grids, a quick class explanation) never wait behind them;
        ``progress`` hears from them and may raise ``Cancelled``.
        """
        chosen = explainers(methods)
        num_classes = len(run.model_class_names)
        if not 0 <= int(class_index) < num_classes:
            raise UserError(f"class {class_index} is not one of the model's {num_classes} classes")
        layer_id = self.target_layer(run, layer_id, chosen)
        fast = [e.name for e in chosen if not e.slow]
        slow = [e.name for e in chosen if e.slow]
        results: dict[str, MethodMaps] = {}
        with self._using(run) as model:
            images = self._input(run, model, sample)
            if fast:
                results.update(
                    self._explain(run, model.adapter, images, class_index, fast, layer_id)
                )
        if slow:
            with self._replica(run) as adapter:
                results.update(
                    self._explain(run, adapter, images, class_index, slow, layer_id, progress)
                )
        return {method: results[method] for method in methods}

    @staticmethod
    def target_layer(run: RunData, layer_id: str | None, chosen: Sequence[Explainer]) -> str | None:
        """The layer the methods that weigh one use: ``layer_id`` if it has channel maps, else
        the run's Grad-CAM layer; None when no chosen method needs one."""
        if not any(explainer.uses_target_layer for explainer in chosen):
            return None
        if layer_id:
            shape = run.layer(layer_id).output_shape
            if shape is None or len(shape) != 3:
                raise UserError(
                    f"Grad-CAM needs a layer with channel maps (C, H, W); layer {layer_id} outputs "
                    f"{shape}; select a convolutional layer in the architecture"
                )
            return layer_id
        if not run.gradcam_layer:
            raise UserError(
                f"run '{run.run_id}' has no spatial conv layer to explain with Grad-CAM; choose "
                "another method"
            )
        return run.gradcam_layer

    def _explain(
        self,
        run: RunData,
        adapter: ModelAdapter,
        images: torch.Tensor,
        class_index: int,
        methods: Sequence[str],
        layer_id: str | None,
        progress: Progress = no_progress,
    ) -> dict[str, MethodMaps]:
        modules = dict(adapter.module.named_modules())
        if layer_id is not None and layer_id not in modules:
            raise UserError(f"unknown layer '{layer_id}'; select a layer in the architecture")
        images = images.to(adapter.device)
        classes = torch.tensor([int(class_index)], device=images.device)
        explained = explain(
            adapter.module,
            modules[layer_id] if layer_id is not None else None,
            images,
            classes,
            methods,
            explanation_size(run),
            progress=progress,
            decode=adapter.decode,
        )
        return {
            method: {
                "map": explained.maps[method][0],
                **{name: value[0] for name, value in explained.extras.get(method, {}).items()},
            }
            for method in methods
        }

    @contextlib.contextmanager
    def _replica(self, run: RunData) -> Iterator[ModelAdapter]:
        """A private copy of the run's model for one slow job at a time; up to ``max_replicas``
        copies per run exist, and a job that finds them all busy waits for one."""
        key = (run.run_id, run.version)
        adapter: ModelAdapter | None
        with self._replica_ready:
            while True:
                free = self._replicas.setdefault(key, [])
                if free:
                    adapter = free.pop()
                    break
                if self._replica_count.get(key, 0) < self.max_replicas:
                    self._replica_count[key] = self._replica_count.get(key, 0) + 1
                    adapter = None
                    break
                self._replica_ready.wait()
        try:
            if adapter is None:
                with self._using(run) as model:
                    adapter = dataclasses.replace(
                        model.adapter, module=copy.deepcopy(model.adapter.module)
                    )
        except BaseException:
            with self._replica_ready:
                self._replica_count[key] -= 1
                self._replica_ready.notify()
            raise
        try:
            yield adapter
        finally:
            with self._replica_ready:
                self._replicas[key].append(adapter)
                self._replica_ready.notify()
