"""The one explanation engine, for the precompute and the dashboard alike: a batch, a class per
image (or each image's top-1 prediction) and a list of registered method names in; the logits,
any captured layers and each method's display-ready maps out.

The model runs forward once, with guided ReLUs when a method needs a guided gradient (same
forward values as ReLU, so features and logits are unchanged), and backward once per gradient
the methods need (``base.Gradient``): a plain pass that stops at the Grad-CAM layer, so only the
layers after it run, and a guided pass down to the pixels. Measured on VGG16 (one image at
224 px, one CPU thread, ``benchmarks/bench_explain.py``, see ``benchmarks/README.md``): 0.62-0.70 s
against 0.83-0.87 s for the dashboard's former separate Grad-CAM and guided-backprop passes.
The maps are cross-checked against pytorch-grad-cam in ``tests/test_explain.py``.

When the classes are given and every method runs passes of its own (LRP, Captum's saliency,
SmoothGrad, IG, occlusion), nothing reads the engine's pass, so it runs only if a method reads
the logits (``base.Logits``: LRP's check of a canonized model). That saves one forward pass
per call, ~0.16 s of VGG16 on 2 idle CPU cores (``bench_explain.py --engine-forward``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pipelines.errors import UserError
from pipelines.explain.base import (
    Gradient,
    Logits,
    MethodResult,
    Passes,
    Progress,
    check_class_in_range,
    check_classes,
    check_classes_in_range,
    check_eager,
    check_images,
    check_logits,
    check_out_size,
    check_submodule,
    no_progress,
    preserved_model_state,
    softmax_probabilities,
)
from pipelines.explain.guided import GuideSwitch, guided_relus
from pipelines.explain.registry import explainers
from pipelines.features import OutputTransform, autocast_to, capturing
from pipelines.types import LayerId


@dataclass(frozen=True)
class FeatureCapture:
    """Layers to capture during the engine's forward pass, as ``features.capture_layers`` does;
    ``transform`` must detach (the pass builds a graph)."""

    layer_ids: Sequence[LayerId]
    transform: OutputTransform


@dataclass(frozen=True)
class Explained:
    """What ``explain`` returns for a batch of B images.

    logits: (B, K) detached, in the forward pass's dtype, or None when the engine ran no forward
    pass (classes given, no method needing one: run the model to get them); classes: (B,) int64,
    the class each image was explained for; features: {layer_id: transform(output)} for a ``FeatureCapture``,
    else empty; maps: {method name: display array} as each method documents, e.g.
    "gradcam" (B, S, S) float16 in [0, 1], "guided_backprop" / "guided_gradcam" (B, S, S, 3) uint8.
    extras: {method name: {extra name: (B, ...) array}} for methods that return a
    ``MethodResult`` (occlusion's probabilities), else absent.
    """

    logits: torch.Tensor | None
    classes: torch.Tensor
    features: dict[LayerId, torch.Tensor]
    maps: dict[str, np.ndarray]
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def explain(
    model: torch.nn.Module,
    target_layer: torch.nn.Module | None,
    images: torch.Tensor,
    classes: torch.Tensor | None,
    methods: Sequence[str],
    out_size: int,
    *,
    features: FeatureCapture | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Progress = no_progress,
    decode: Callable[[torch.Tensor], torch.Tensor] = softmax_probabilities,
) -> Explained:
    """Explain a batch with the named methods, in one forward pass (or none, see ``run_passes``).

    images: (B, C, H, W) float32 model-ready on the model's device, C in {1, 3}; target_layer:
    the module whose output Grad-CAM weighs (may be None when no method needs it); classes:
    (B,) int64, the class to explain per image, or None for each image's top-1 prediction of
    this same pass; methods: registry names (``EXPLAINERS``); out_size: S of the maps.
    ``autocast_dtype`` runs the forward pass under autocast (the backward passes in the dtypes it
    chose, the maps in float32). ``progress(done, total)`` hears from methods that run many
    passes and may raise ``Cancelled`` to stop them; ``decode`` turns logits into probabilities
    for methods that need them. The model is left as it was: training flags,
    ``requires_grad``, ``.grad``, ReLU modules, no hooks, even when a pass fails.
    """
    check_out_size(out_size)
    chosen = explainers(methods)
    needs = frozenset().union(*(explainer.needs for explainer in chosen))
    with torch.enable_grad(), preserved_model_state(model):
        passes, captured = run_passes(
            model,
            target_layer,
            images,
            classes,
            needs,
            features=features,
            autocast_dtype=autocast_dtype,
        )
        passes = replace(passes, report=progress, decode=decode)
        with classes_checked(model, passes.classes):
            results = {explainer.name: explainer.explain(passes, out_size) for explainer in chosen}
    maps = {
        name: result.maps if isinstance(result, MethodResult) else result
        for name, result in results.items()
    }
    extras = {
        name: dict(result.extras)
        for name, result in results.items()
        if isinstance(result, MethodResult) and result.extras
    }
    return Explained(passes.lazy_logits.computed, passes.classes, captured, maps, extras)


def run_passes(
    model: torch.nn.Module,
    target_layer: torch.nn.Module | None,
    images: torch.Tensor,
    classes: torch.Tensor | None,
    needs: frozenset[Gradient],
    *,
    features: FeatureCapture | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Passes, dict[LayerId, torch.Tensor]]:
    """One forward pass and one backward pass per needed gradient; arguments as ``explain``.

    Returns the ``Passes`` the methods read and the captured features (empty without
    ``features``). The model is restored as ``explain`` says. With ``classes`` given, nothing
    needed and no ``features``, no pass runs here: the logits are computed on first read, and
    only then are the classes checked against the model's outputs (``explain`` checks them at
    the methods' own forward passes).
    """
    check_eager(model)
    check_images(images)
    if classes is not None:
        check_classes(classes, images.shape[0])
        classes = classes.to(device=images.device, dtype=torch.int64)
        if not needs and features is None:
            known = classes

            def forward() -> torch.Tensor:
                return forward_logits(model, images, known, autocast_dtype)

            return Passes(model, images, classes, Logits(forward), None, {}), {}
    keep_target = Gradient.TARGET_LAYER in needs
    if keep_target:
        check_submodule(model, target_layer)
    switch = GuideSwitch()
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.enable_grad())
        stack.enter_context(preserved_model_state(model))
        kept = stack.enter_context(kept_output(target_layer)) if keep_target else {}
        if any(which.guided for which in needs):
            stack.enter_context(guided_relus(model, switch))
        captured: dict[LayerId, torch.Tensor] = (
            stack.enter_context(
                capturing(model, images, list(features.layer_ids), features.transform)
            )
            if features is not None
            else {}
        )
        # Pixels are a leaf only when a gradient is taken there; otherwise nothing before the
        # target layer builds a graph (see ``kept_output``).
        pixels = images.detach().requires_grad_(any(which.at_pixels for which in needs))
        with autocast_to(pixels.device, autocast_dtype):
            logits = check_logits(model(pixels))
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        check_classes_in_range(classes, logits.shape[1])
        target_acts = checked_target(kept) if keep_target else None
        gradients = backward_passes(logits, classes, needs, pixels, target_acts, switch)
    passes = Passes(
        model=model,
        images=images,
        classes=classes,
        lazy_logits=Logits.known(logits.detach()),
        target_acts=None if target_acts is None else target_acts.detach().float(),
        gradients=gradients,
    )
    return passes, captured


def forward_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """The logits the engine's forward pass would have given, (B, K) detached, for a batch whose
    methods needed none of its gradients; the classes are checked against them."""
    with (
        torch.no_grad(),
        preserved_model_state(model),
        autocast_to(images.device, autocast_dtype),
    ):
        logits = check_logits(model(images))
    check_classes_in_range(classes, logits.shape[1])
    return logits


@contextlib.contextmanager
def classes_checked(model: torch.nn.Module, classes: torch.Tensor) -> Iterator[None]:
    """Within the block, every forward pass of ``model`` that returns (N, K) logits checks the
    classes against K before the caller can index the logits with them. When the engine ran no
    forward pass, a method's own is the first to show the model's outputs, and a class out of
    range would otherwise surface as an index error inside a library (a device-side assert on
    CUDA) instead of the user error. The hook is removed when the block ends."""
    highest = int(classes.max()) if len(classes) else -1  # one host sync, not one per pass

    def check(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 2:
            check_class_in_range(highest, output.shape[1])

    handle = model.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def backward_passes(
    logits: torch.Tensor,
    classes: torch.Tensor,
    needs: frozenset[Gradient],
    pixels: torch.Tensor,
    target_acts: torch.Tensor | None,
    switch: GuideSwitch,
) -> dict[Gradient, torch.Tensor]:
    """d (sum_b logits[b, classes[b]]) w.r.t. each needed point: one backward of the summed
    scores gives every image its own gradient, as eval-mode images do not interact.

    Passes run in ``Gradient``'s declared order, which puts the pass that stops at the target
    layer first, so the last, full-depth pass can free the graph as it goes.
    logits: (B, K); classes: (B,) int64. Returns each gradient as float32.
    """
    score = logits.gather(1, classes.view(-1, 1)).sum()
    order = [which for which in Gradient if which in needs]
    gradients = {}
    for index, which in enumerate(order):
        switch.guided = which.guided
        point = pixels if which.at_pixels else target_acts
        assert point is not None  # kept whenever TARGET_LAYER is needed
        (gradient,) = torch.autograd.grad(score, point, retain_graph=index < len(order) - 1)
        gradients[which] = gradient.float()
    return gradients


@contextlib.contextmanager
def kept_output(layer: torch.nn.Module | None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the yielded dict holds ``"acts"``: ``layer``'s output at its last call
    (a module called more than once, as ResNet blocks reuse one ReLU, is the layer of its last
    call everywhere in LayerScope: the block's output). The hook is removed when the block ends.
    """
    assert layer is not None  # callers check the target layer first
    kept: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return None
        if not output.requires_grad:
            # No gradient is taken before this layer: starting the graph here means the forward
            # up to it builds none and the backward to it runs only the layers after it.
            output = output.detach().requires_grad_(True)
        kept["acts"] = output
        # The rest of the network gets a copy, so an in-place op after the layer (a ReLU with
        # inplace=True, ``out += identity``) cannot change the activations Grad-CAM weighs.
        return output.clone()

    handle = layer.register_forward_hook(keep)
    try:
        yield kept
    finally:
        handle.remove()


def checked_target(kept: dict[str, torch.Tensor]) -> torch.Tensor:
    """The kept target-layer output, (B, C, h, w), or a user error naming the fix."""
    if "acts" not in kept:
        raise UserError(
            "the Grad-CAM layer was not reached by the model's forward pass; pick a layer that "
            "is used to compute the prediction"
        )
    acts = kept["acts"]
    if acts.ndim != 4:
        raise UserError(
            f"Grad-CAM needs a layer with (C, H, W) output, got shape {tuple(acts.shape[1:])}; "
            "pick a convolutional layer"
        )
    return acts
