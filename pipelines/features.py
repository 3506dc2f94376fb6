"""Layer discovery and activation capture, shared by the precompute and the dashboard.

Layers are the model's leaf modules (no children) that run during a forward pass, keyed by their
``named_modules()`` path, plus the input pixels as layer ``"input"``. A module called more than
once (ResNet blocks reuse one ``relu``) is reported and captured at its last call, which is the
block's output; its earlier calls are treated as transparent in the data-flow graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.records import LayerSpec
from pipelines.types import INPUT_LAYER, LayerId

# Layers that only reshape or pass values through: their embedding equals their parent's.
PASS_THROUGH_TYPES = {"Flatten", "Unflatten", "Identity", "Dropout", "Dropout2d", "Dropout1d"}

OutputTransform = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_MAX_DIMS = 2048

# ---------------------------------------------------------------------------------------------
# Spatial pooling of captured activations (the first step of every layer's reduction)
# ---------------------------------------------------------------------------------------------


def pooled_shape(shape: tuple[int, ...], max_dims: int = DEFAULT_MAX_DIMS) -> tuple[int, ...]:
    """Per-sample shape after pooling.

    (C, H, W) conv maps are adaptive-average-pooled to (C, s, s) with the largest s <= min(H, W)
    such that C*s*s <= max_dims (at least s = 1); (D,) vectors are unchanged. Other ranks follow
    the same rule per spatial axis: (C, L) -> (C, s), (C, T, H, W) -> (C, s, s, s).
    """
    if max_dims < 1:
        raise ValueError(f"max_dims must be >= 1, got {max_dims}")
    if len(shape) == 0:
        raise ValueError("a per-sample activation shape needs at least one axis")
    if len(shape) == 1:
        return tuple(shape)
    channels, spatial = shape[0], shape[1:]
    # Largest s with channels * s**d <= max_dims: the integer d-th root, corrected for float error.
    side = int((max_dims // max(channels, 1)) ** (1.0 / len(spatial)))
    while channels * (side + 1) ** len(spatial) <= max_dims:
        side += 1
    while side > 1 and channels * side ** len(spatial) > max_dims:
        side -= 1
    side = max(1, min(side, min(spatial)))
    return (channels, *([side] * len(spatial)))


def pool_activations(acts: torch.Tensor, max_dims: int = DEFAULT_MAX_DIMS) -> torch.Tensor:
    """Pool and flatten one layer's activations for a batch.

    acts: (B, C, H, W) (or (B, C, L), (B, C, T, H, W)) or (B, D), float of any precision, on any
    device. Returns (B, D') float32 on the same device, D' = prod(pooled_shape(acts.shape[1:])).
    """
    if acts.ndim < 2:
        raise ValueError(f"acts must be (B, ...) with a batch axis, got shape {tuple(acts.shape)}")
    # Averaging in float16 loses precision over large windows; pool in float32.
    acts = acts.float()
    target = pooled_shape(tuple(acts.shape[1:]), max_dims)
    if acts.ndim > 2 and target[1:] != tuple(acts.shape[2:]):
        pool: dict[int, Callable[..., torch.Tensor]] = {
            3: F.adaptive_avg_pool1d,
            4: F.adaptive_avg_pool2d,
            5: F.adaptive_avg_pool3d,
        }
        if acts.ndim not in pool:
            raise ValueError(f"cannot pool activations of shape {tuple(acts.shape)}")
        acts = pool[acts.ndim](acts, target[1:])
    return acts.reshape(acts.shape[0], -1).contiguous()


def pooled_features(tensor: torch.Tensor) -> torch.Tensor:
    """A captured layer output (B, ...) -> (B, D) float32 pooled to at most DEFAULT_MAX_DIMS:
    the features the precompute stores, and compares when it chooses its precision."""
    return pool_activations(tensor.detach().float(), DEFAULT_MAX_DIMS)


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------


def leaf_modules(model: nn.Module) -> dict[LayerId, nn.Module]:
    """Every module without children, by ``named_modules()`` path (the root excluded)."""
    return {
        name: module
        for name, module in model.named_modules()
        if name and next(module.children(), None) is None
    }


def _clone(tensor: torch.Tensor) -> torch.Tensor:
    # Cloned because a following ReLU(inplace=True) would overwrite a conv's stored output.
    return tensor.detach().clone()


@contextlib.contextmanager
def forward_hooks(
    model: nn.Module, layer_ids: list[LayerId], sink: Callable[[LayerId, Any], None]
) -> Iterator[None]:
    """Call ``sink(layer_id, output)`` after each listed module runs; hooks always removed."""
    modules = dict(model.named_modules())
    unknown = [layer_id for layer_id in layer_ids if layer_id not in modules]
    if unknown:
        raise KeyError(f"unknown layer ids {unknown}; the model has {len(modules)} modules")
    handles = []
    try:
        for layer_id in layer_ids:
            hook = _make_hook(layer_id, sink)
            handles.append(modules[layer_id].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _make_hook(layer_id: LayerId, sink: Callable[[LayerId, Any], None]) -> Callable:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        sink(layer_id, output)

    return hook


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a layer produced (some modules return tuples, e.g. RNN-style layers)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def capturing(
    model: nn.Module,
    images: torch.Tensor,
    layer_ids: list[LayerId],
    transform: OutputTransform = _clone,
) -> Iterator[dict[LayerId, torch.Tensor]]:
    """Within the block, each forward pass of ``model`` fills the yielded dict with
    ``{layer_id: transform(output)}``; ``"input"`` in ``layer_ids`` is ``transform(images)``.
    ``transform`` runs inside the hook, before later in-place ops can touch the output. The
    hooks are removed when the block ends, even on an error."""
    captured: dict[LayerId, torch.Tensor] = {}

    def sink(layer_id: LayerId, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is not None:
            captured[layer_id] = transform(tensor)

    module_ids = [layer_id for layer_id in layer_ids if layer_id != INPUT_LAYER]
    with forward_hooks(model, module_ids, sink):
        if INPUT_LAYER in layer_ids:
            captured[INPUT_LAYER] = transform(images)
        yield captured


def capture_layers(
    model: nn.Module,
    images: torch.Tensor,
    layer_ids: list[LayerId],
    transform: OutputTransform = _clone,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[LayerId, torch.Tensor]]:
    """One forward pass; returns ``(logits, {layer_id: transform(output)})``.

    images: (B, C, H, W) float32, model-ready, on the model's device. ``"input"`` in ``layer_ids``
    captures ``transform(images)``; pass a pooling ``transform`` to keep memory small.
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the model under ``torch.autocast``; the
    logits and captured outputs then come in that dtype.
    """
    with (
        torch.no_grad(),
        capturing(model, images, layer_ids, transform) as captured,
        autocast_to(images.device, autocast_dtype),
    ):
        logits = model(images)
    return logits, captured


def autocast_to(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for a forward pass on ``device``: autocast to ``dtype``, or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def layer_type(module: nn.Module) -> str:
    """Class name; wrapped TorchScript layers report the name of the class they were made from."""
    return getattr(module, "original_name", None) or type(module).__name__


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def block_of(layer_id: LayerId) -> str:
    """The enclosing module's path ("layer2.1.conv1" -> "layer2.1"); "" for top-level layers."""
    return layer_id.rpartition(".")[0]


def discover_layers(model: nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    """Describe every leaf layer that runs, in execution order, with ``"input"`` first.

    example: (1, C, H, W) float32 model-ready input on the model's device. Each record has its
    ``output_shape`` (no batch dim), ``params``, ``parents`` (data-flow predecessors, from a
    torch.fx trace where the model allows one, else the previous layer) and ``block``; its
    ``pooled_shape`` and ``same_as`` are left for the model stage to fill in.
    """
    leaves = leaf_modules(model)
    order: list[LayerId] = []
    shapes: dict[LayerId, tuple[int, ...]] = {}

    def sink(layer_id: LayerId, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None:
            return
        if layer_id in shapes:
            order.remove(layer_id)
        order.append(layer_id)
        shapes[layer_id] = tuple(tensor.shape[1:])

    with torch.no_grad(), forward_hooks(model, list(leaves), sink):
        model(example)

    parents = trace_parents(model, set(order)) or sequential_parents(order)
    layers = [
        LayerSpec(
            id=INPUT_LAYER,
            type="Input",
            output_shape=tuple(example.shape[1:]),
            params=0,
            parents=(),
            block="",
        )
    ]
    for layer_id in order:
        layers.append(
            LayerSpec(
                id=layer_id,
                type=layer_type(leaves[layer_id]),
                output_shape=shapes[layer_id],
                params=count_parameters(leaves[layer_id]),
                parents=tuple(parents.get(layer_id, [])),
                block=block_of(layer_id),
            )
        )
    return layers


def sequential_parents(order: list[LayerId]) -> dict[LayerId, list[LayerId]]:
    chain = [INPUT_LAYER, *order]
    return {layer_id: [chain[i]] for i, layer_id in enumerate(order)}


class _LeafTracer(torch.fx.Tracer):
    """Treat every childless module as one node, custom ones included."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return next(module.children(), None) is None


def trace_parents(model: nn.Module, layer_ids: set[LayerId]) -> dict[LayerId, list[LayerId]] | None:
    """Data-flow parents of each layer via torch.fx, skipping functional ops (add, flatten).

    Returns None when the model cannot be traced (TorchScript, data-dependent control flow);
    the caller then falls back to execution order.
    """
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any trace failure just means "draw it sequentially"
        return None
    last_call = {node.target: node for node in graph.nodes if node.op == "call_module"}
    nearest: dict[torch.fx.Node, list[LayerId]] = {}
    parents: dict[LayerId, list[LayerId]] = {}
    for node in graph.nodes:
        upstream = _unique(layer for arg in node.all_input_nodes for layer in nearest.get(arg, []))
        if node.op == "placeholder":
            nearest[node] = [INPUT_LAYER]
        elif (
            node.op == "call_module" and node.target in layer_ids and last_call[node.target] is node
        ):
            parents[node.target] = upstream
            nearest[node] = [node.target]
        else:
            # Functional ops and earlier calls of a reused module pass their inputs through,
            # so the drawn graph stays acyclic.
            nearest[node] = upstream
    return parents


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))
