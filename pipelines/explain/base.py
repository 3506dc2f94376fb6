"""Shared machinery for the explanation methods: the explainer base class, the per-batch memo
that lets guided Grad-CAM reuse the Grad-CAM and guided-backprop passes, the context managers
that leave a model exactly as they found it, and the batched display conversions.

Every tensor op here works on whole batches on the images' device, so a GPU precompute never
loops over images in Python nor copies one image at a time to the host.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import UserError

# Added to the divisor when scaling a CAM to [0, 1], as pytorch-grad-cam's ``scale_cam_image``
# does, so an all-zero map stays zero instead of becoming NaN.
CAM_EPS = 1e-7
# Added to the std when standardising gradients for display, as pytorch-grad-cam's
# ``deprocess_image`` (after keras-grad-cam) does, so an all-zero gradient shows as flat grey.
DEPROCESS_EPS = 1e-5
# Standardised gradients are shown as 0.5 + 0.1 * z, the convention of ``deprocess_image``:
# +-5 standard deviations span the full 0..255 range.
DEPROCESS_SCALE = 0.1


@dataclass
class ExplainBatch:
    """One batch to explain, plus a memo of intermediate results shared between methods.

    images: (B, C, H, W) float32, model-ready (normalised), on the model's device.
    class_indices: (B,) int64, the class whose score is explained for each image.
    """

    model: torch.nn.Module
    target_layer: torch.nn.Module
    images: torch.Tensor
    class_indices: torch.Tensor
    _memo: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Return ``compute()`` once per batch and key; guided Grad-CAM reuses Grad-CAM's
        and guided backprop's passes this way instead of running the model again."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


class Explainer(ABC):
    """One explanation method; subclasses live one per file and are listed in the registry."""

    name: ClassVar[str]

    @abstractmethod
    def explain(self, batch: ExplainBatch, out_size: int) -> np.ndarray:
        """Display-ready explanation of ``batch`` at ``out_size`` x ``out_size`` pixels."""


def check_batch(images: torch.Tensor, class_indices: torch.Tensor) -> list[int]:
    """Validate a batch and return the class indices as a Python list (one host sync per batch).

    images: (B, C, H, W) floating point; class_indices: (B,) integer, all >= 0.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a (B, C, H, W) float tensor, got {tuple(images.shape)} {images.dtype}"
        )
    if images.shape[1] not in (1, 3):
        raise UserError(
            f"explanations need 1-channel or 3-channel images, got {images.shape[1]} channels; "
            "use a model that takes grayscale or RGB input"
        )
    if class_indices.shape != (images.shape[0],) or class_indices.is_floating_point():
        raise ValueError(
            f"class_indices must be a ({images.shape[0]},) integer tensor, "
            f"got {tuple(class_indices.shape)} {class_indices.dtype}"
        )
    classes = [int(c) for c in class_indices.tolist()]
    if any(c < 0 for c in classes):
        raise UserError(f"class indices must be >= 0, got {min(classes)}; pass a valid class")
    return classes


def check_classes_in_range(classes: Sequence[int], num_outputs: int) -> None:
    """Fail with a fix-it message if a requested class is not one of the model's outputs."""
    if classes and max(classes) >= num_outputs:
        raise UserError(
            f"class index {max(classes)} is out of range for a model with {num_outputs} "
            f"outputs; pass a class between 0 and {num_outputs - 1}"
        )


def check_eager(model: torch.nn.Module) -> None:
    """Explanations work through module hooks and swapped forwards, which a compiled TorchScript
    graph ignores; fail with the fix instead of returning maps from a model that was not hooked.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "explanations need an eager PyTorch model, not TorchScript; load the model with "
            "python:FILE.py exposing get_model() instead of torchscript:PATH"
        )


def check_submodule(model: torch.nn.Module, layer: torch.nn.Module) -> None:
    """A target layer outside the model would never fire its hooks; say so up front."""
    if not any(module is layer for module in model.modules()):
        raise ValueError("target_layer is not a submodule of model; pass one of model.modules()")


@contextlib.contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with the model in eval mode and its parameters frozen, then restore every
    module's training flag, every parameter's ``requires_grad`` and ``.grad`` exactly.

    Eval mode because explanations must see the model as it predicts (BatchNorm running stats,
    no dropout). Frozen parameters because explanations need gradients w.r.t. activations and
    pixels only; skipping weight gradients roughly halves the backward pass. ``.grad`` is kept
    because pytorch-grad-cam calls ``model.zero_grad()``, which would wipe a caller's gradients.
    """
    training = [(module, module.training) for module in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for module, was_training in training:
            module.training = was_training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling to [0, 1], as pytorch-grad-cam's ``scale_cam_image``.

    maps: (B, h, w) float32 -> (B, h, w) float32 in [0, 1].
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    shifted = maps - low
    high = shifted.flatten(1).max(dim=1).values[:, None, None]
    return shifted / (high + CAM_EPS)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a batch of maps; anti-aliased when shrinking so that fine gradient
    detail averages out instead of aliasing.

    maps: (B, C, h, w) float32 -> (B, C, size[0], size[1]) float32.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    shrinking = size[0] < maps.shape[-2] or size[1] < maps.shape[-1]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def cam_display(cams: torch.Tensor, out_size: int) -> np.ndarray:
    """Grad-CAM maps to display form: scaled, resized, scaled again (the order of
    pytorch-grad-cam, whose second scaling makes the resized map span [0, 1] again).

    cams: (B, h, w) float32, non-negative -> (B, S, S) float16 in [0, 1].
    """
    scaled = unit_scale(cams)
    resized = resize_maps(scaled[:, None], (out_size, out_size))[:, 0]
    return unit_scale(resized).clamp_(0.0, 1.0).to(torch.float16).cpu().numpy()


def gradients_display(grads: torch.Tensor, out_size: int) -> np.ndarray:
    """Pixel-space gradients to an RGB picture, per image, as pytorch-grad-cam's
    ``deprocess_image``: standardise, scale by 0.1, centre on 0.5, clip, quantise.

    grads: (B, C, H, W) float32 with C in {1, 3} -> (B, S, S, 3) uint8; 1-channel gradients are
    replicated to grey RGB so every method has one display shape.
    """
    resized = resize_maps(grads, (out_size, out_size))
    mean = resized.mean(dim=(1, 2, 3), keepdim=True)
    std = resized.std(dim=(1, 2, 3), keepdim=True, correction=0)
    shown = ((resized - mean) / (std + DEPROCESS_EPS) * DEPROCESS_SCALE + 0.5).clamp_(0.0, 1.0)
    # Truncation, not rounding, matches np.uint8(img * 255) in deprocess_image.
    pixels = (shown * 255).to(torch.uint8).permute(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    return np.ascontiguousarray(pixels.cpu().numpy())
