"""What every explanation method shares: the gradients a method can ask the engine for, the
record of one batch's passes that methods read, the method base class, the context manager that
leaves a model exactly as it was found, input checks, and the batched display conversions.

Every tensor op here works on whole batches on the images' device, so a GPU precompute never
loops over images in Python nor copies one image at a time to the host.
"""

from __future__ import annotations

import contextlib
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import Cancelled as Cancelled  # methods import it from here
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


class Gradient(enum.Enum):
    """A gradient of the explained class scores that a method reads. The engine runs one forward
    pass per batch and one backward pass per gradient that the requested methods need, so methods
    that need the same gradient share its pass."""

    # d y^c / d A at the target layer, plain backward rules (Grad-CAM's weights).
    TARGET_LAYER = "target_layer"
    # d y^c / d x at the pixels, with the guided rule at every nn.ReLU (guided backprop).
    PIXELS_GUIDED = "pixels_guided"

    @property
    def at_pixels(self) -> bool:
        return self is Gradient.PIXELS_GUIDED

    @property
    def guided(self) -> bool:
        return self is Gradient.PIXELS_GUIDED


class Display(enum.Enum):
    """What a method's display array holds, which says how the page and the CLI draw it."""

    # (B, S, S) float16 in [0, 1]: a heat map drawn over the image (Grad-CAM).
    HEAT = "heat"
    # (B, S, S) float16 in [-1, 1]: signed evidence, red for the class, blue against it, drawn
    # over a grey copy of the image (LRP, Integrated Gradients, occlusion's probability drop).
    SIGNED = "signed"
    # (B, S, S, 3) uint8: a picture shown as it is (guided backprop's gradients).
    PICTURE = "picture"


# progress(done, total): called between a method's passes; raising ``Cancelled`` stops it.
Progress = Callable[[int, int], None]


def no_progress(_done: int, _total: int) -> None:
    """The progress callback when nobody listens."""


def softmax_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The default ``decode``: class probabilities from (B, K) logits."""
    return torch.softmax(logits.float(), dim=1)


class Logits:
    """A batch's logits, (B, K) detached: given, or computed by ``forward`` on first read and
    kept. The engine skips its own forward pass when the classes are given and every method runs
    passes of its own (LRP, Captum's methods): a VGG16 pass is ~0.16 s of a ~1 s explanation on
    2 CPU cores, wasted unless a method reads the logits (LRP's check of a canonized model)."""

    def __init__(self, forward: Callable[[], torch.Tensor]) -> None:
        self._forward = forward
        self._value: torch.Tensor | None = None

    @classmethod
    def known(cls, logits: torch.Tensor) -> Logits:
        """Logits the engine's forward pass already computed."""
        known = cls(lambda: logits)
        known._value = logits
        return known

    def get(self) -> torch.Tensor:
        if self._value is None:
            self._value = self._forward()
        return self._value

    @property
    def computed(self) -> torch.Tensor | None:
        """The logits if they were computed (given, or read once), else None; never computes."""
        return self._value


@dataclass(frozen=True)
class Passes:
    """One batch after the engine's forward pass and the backward passes its methods need.

    model: the model, in eval mode with frozen parameters while methods run (for methods that
    run passes of their own); images: (B, C, H, W) float32 model-ready, C in {1, 3};
    classes: (B,) int64, the class explained per image; ``logits`` (read through the property):
    (B, K) detached, in the forward pass's dtype; target_acts: (B, C', h, w) float32 at the target
    layer, or None when no method needs it; gradients: each needed ``Gradient``, float32, shaped
    as what it is taken w.r.t. All tensors are on the model's device. Methods that run passes of
    their own (the library adapters: Captum, zennit) call ``report(done, total)`` between them,
    which may raise ``Cancelled``, and turn logits into probabilities with ``decode`` (a model
    file's own ``decode`` hook, else softmax).
    """

    model: torch.nn.Module
    images: torch.Tensor
    classes: torch.Tensor
    lazy_logits: Logits
    target_acts: torch.Tensor | None
    gradients: Mapping[Gradient, torch.Tensor]
    report: Progress = no_progress
    decode: Callable[[torch.Tensor], torch.Tensor] = softmax_probabilities

    @property
    def logits(self) -> torch.Tensor:
        """(B, K) detached. When the engine skipped its forward pass (classes given, no method
        needing a gradient from it) the first read runs one, on the model as it is then: read it
        outside any hooks a method attaches (LRP compares its canonized logits after detaching)."""
        return self.lazy_logits.get()

    def acts(self) -> torch.Tensor:
        """The target layer's activations; a method that reads them must say it needs
        ``Gradient.TARGET_LAYER``, which makes the engine keep them."""
        if self.target_acts is None:
            raise RuntimeError("target-layer activations were not kept; add TARGET_LAYER to needs")
        return self.target_acts

    def gradient(self, which: Gradient) -> torch.Tensor:
        if which not in self.gradients:
            raise RuntimeError(f"{which} was not computed; add it to the method's needs")
        return self.gradients[which]


@dataclass(frozen=True)
class MethodResult:
    """What a method may return instead of a bare display array: the array and named per-image
    extras, each (B, ...) (occlusion's class probability with each region hidden)."""

    maps: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)


class Explainer(ABC):
    """One explanation method: one file under ``pipelines/explain/methods/`` (or a user's
    plugin file), a class decorated with ``registry.register``. Its docstring cites the paper.

    ``name`` is the registry name (the store's ``explanation`` method parameter, the dashboard's
    method key, the CLI's ``--method``); ``title`` is what the page and the CLI show; ``needs``
    are the gradients the engine must compute for it (empty for methods that run their own
    passes); ``display`` says what the array holds; ``slow`` marks methods that cost many passes
    (never precomputed; the page runs them as background jobs with a progress bar). ``explain``
    turns the batch's passes into display-ready arrays for S = out_size, as ``display`` says.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    needs: ClassVar[frozenset[Gradient]]
    display: ClassVar[Display]
    slow: ClassVar[bool] = False

    @property
    def uses_target_layer(self) -> bool:
        """Whether the method weighs a chosen layer (the Grad-CAM family), so the page says which."""
        return Gradient.TARGET_LAYER in self.needs

    @abstractmethod
    def explain(self, passes: Passes, out_size: int) -> np.ndarray | MethodResult:
        """Display-ready explanation of the batch at ``out_size`` x ``out_size`` pixels."""


def check_out_size(out_size: object) -> int:
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size < 1:
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")
    return out_size


def check_images(images: torch.Tensor) -> None:
    """images: (B, C, H, W) floating point with C in {1, 3}."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a (B, C, H, W) float tensor, got {tuple(images.shape)} {images.dtype}"
        )
    if images.shape[1] not in (1, 3):
        raise UserError(
            f"explanations need 1-channel or 3-channel images, got {images.shape[1]} channels; "
            "use a model that takes grayscale or RGB input"
        )


def check_classes(class_indices: torch.Tensor, batch_size: int) -> None:
    """class_indices: (B,) integer, all >= 0 (one host sync per batch)."""
    if class_indices.shape != (batch_size,) or class_indices.is_floating_point():
        raise ValueError(
            f"class_indices must be a ({batch_size},) integer tensor, "
            f"got {tuple(class_indices.shape)} {class_indices.dtype}"
        )
    if batch_size and int(class_indices.min()) < 0:
        raise UserError(
            f"class indices must be >= 0, got {int(class_indices.min())}; pass a valid class"
        )


def check_classes_in_range(class_indices: torch.Tensor, num_outputs: int) -> None:
    """Fail with a fix-it message if a requested class is not one of the model's outputs."""
    if len(class_indices):
        check_class_in_range(int(class_indices.max()), num_outputs)


def check_class_in_range(highest: int, num_outputs: int) -> None:
    """As ``check_classes_in_range`` for the batch's highest class index, already on the host."""
    if highest >= num_outputs:
        raise UserError(
            f"class index {highest} is out of range for a model with "
            f"{num_outputs} outputs; pass a class between 0 and {num_outputs - 1}"
        )


def check_logits(logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError(
            "explanations need a model that returns (batch, classes) logits; wrap the model "
            "so that forward returns a single logits tensor"
        )
    return logits


def check_eager(model: torch.nn.Module) -> None:
    """Explanations work through module hooks and swapped forwards, which a compiled TorchScript
    graph ignores; fail with the fix instead of returning maps from a model that was not hooked.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "explanations need an eager PyTorch model, not TorchScript; load the model with "
            "python:FILE.py exposing get_model() instead of torchscript:PATH"
        )


def check_submodule(model: torch.nn.Module, layer: torch.nn.Module | None) -> None:
    """A target layer outside the model would never fire its hooks; say so up front."""
    if layer is None or not any(module is layer for module in model.modules()):
        raise ValueError("target_layer is not a submodule of model; pass one of model.modules()")


@contextlib.contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with the model in eval mode and its parameters frozen, then restore every
    module's training flag, every parameter's ``requires_grad`` and ``.grad`` exactly.

    Eval mode because explanations must see the model as it predicts (BatchNorm running stats,
    no dropout). Frozen parameters because explanations need gradients w.r.t. activations and
    pixels only; skipping weight gradients roughly halves the backward pass. ``.grad`` is kept
    so that a caller's accumulated gradients survive whatever a method's own passes do.
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
    """Non-negative maps (Grad-CAM; saliency's gradient magnitudes) to display form: scaled,
    resized, scaled again (the order of pytorch-grad-cam, whose second scaling makes the resized
    map span [0, 1] again).

    cams: (B, h, w) float32, non-negative -> (B, S, S) float16 in [0, 1].
    """
    scaled = unit_scale(cams)
    resized = resize_maps(scaled[:, None], (out_size, out_size))[:, 0]
    return unit_scale(resized).clamp_(0.0, 1.0).to(torch.float16).cpu().numpy()


def signed_display(attributions: torch.Tensor, out_size: int) -> np.ndarray:
    """Signed attributions (LRP, Integrated Gradients) to display form: resized, then divided by
    each image's largest magnitude, so the strongest evidence of every image is +-1 and zero
    stays zero (a sign is never flipped or shifted, unlike a min-max scaling). The scaling comes
    after the resize so the shown map spans the colour scale even when shrinking smoothed its
    peak; an all-zero map stays zero.

    attributions: (B, h, w) float32 -> (B, S, S) float16 in [-1, 1].
    """
    resized = resize_maps(attributions[:, None], (out_size, out_size))[:, 0]
    peak = resized.abs().flatten(1).max(dim=1).values[:, None, None]
    scaled = resized / torch.where(peak > 0, peak, torch.ones_like(peak))
    return scaled.clamp_(-1.0, 1.0).to(torch.float16).cpu().numpy()


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
