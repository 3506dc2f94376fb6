"""Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for
Simplicity: The All Convolutional Net", ICLR 2015 workshop, arXiv:1412.6806), batched.

pytorch-grad-cam's ``GuidedBackpropReLUModel`` explains one image per call, copies the result
to the host, and puts back fresh ``nn.ReLU()`` modules (losing ``inplace=True``). Here the whole
batch goes through one forward and one backward on the model's device, and the model is left
exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipelines import report
from pipelines.errors import UserError
from pipelines.explain.base import (
    ExplainBatch,
    Explainer,
    check_batch,
    check_classes_in_range,
    check_eager,
    gradients_display,
    preserved_model_state,
)


@dataclass
class GuideSwitch:
    """Whether guided ReLUs apply the guided rule in the backward pass that runs next; off,
    they give the plain ReLU gradient. Lets one forward pass serve both a guided backward (to
    the pixels) and a plain one (to the Grad-CAM layer)."""

    guided: bool = True


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes a gradient only where both the input and the incoming
    gradient are positive (the "guided" rule, eq. in section 3.4 of the paper), or, with the
    switch off, wherever the input is positive (the plain ReLU gradient)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, switch: GuideSwitch
    ) -> torch.Tensor:
        # Saving the boolean mask rather than the output keeps memory at one byte per element
        # and is immune to later in-place ops on the output.
        active = x > 0
        ctx.save_for_backward(active)
        ctx.switch = switch
        return x.clamp(min=0)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (active,) = ctx.saved_tensors
        if ctx.switch.guided:
            grad_output = grad_output.clamp(min=0)
        return grad_output * active, None


@contextlib.contextmanager
def guided_relus(model: torch.nn.Module, switch: GuideSwitch | None = None) -> Iterator[int]:
    """Within the block every ``nn.ReLU`` of ``model`` applies the guided backward rule (while
    ``switch.guided`` is true; always when no switch is given).

    Works by shadowing each ReLU's ``forward`` with an instance attribute, so no module is
    replaced, no hook is registered and the ``inplace`` flags are untouched; the original
    forward is restored even if the block raises. Yields the number of ReLUs switched.
    Functional ``F.relu`` calls inside a model's ``forward`` cannot be reached this way.
    """
    switch = switch or GuideSwitch()
    relus = [module for module in model.modules() if isinstance(module, torch.nn.ReLU)]
    # A ReLU might already carry an instance-level forward (e.g. patched by the user).
    previous = [module.__dict__.get("forward") for module in relus]

    def guided_forward(x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x, switch)

    try:
        for module in relus:
            module.forward = guided_forward
        yield len(relus)
    finally:
        for module, forward in zip(relus, previous, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def guided_backprop_gradients(
    model: torch.nn.Module, images: torch.Tensor, class_indices: torch.Tensor
) -> torch.Tensor:
    """Guided-backprop gradient of each image's class logit w.r.t. its pixels.

    One backward of the sum of the selected logits gives every image's own gradient, because in
    eval mode images do not interact. images: (B, C, H, W) float32 on the model's device;
    class_indices: (B,) int64. Returns (B, C, H, W) float32 on the model's device. The model's
    mode, ``requires_grad``, ``.grad`` and ReLU modules are restored even if the pass fails.
    """
    check_eager(model)
    classes = check_batch(images, class_indices)
    with torch.enable_grad(), preserved_model_state(model), guided_relus(model) as n_relus:
        warn_if_no_relus(n_relus)
        pixels = images.detach().requires_grad_(True)
        logits = check_logits(model(pixels))
        check_classes_in_range(classes, logits.shape[1])
        index = class_indices.to(device=logits.device, dtype=torch.int64).view(-1, 1)
        score = logits.gather(1, index).sum()
        (grads,) = torch.autograd.grad(score, pixels)
    return grads


def warn_if_no_relus(count: int) -> None:
    if count == 0:
        # Checked on every batch and request: said once.
        report.warn(
            "the model has no nn.ReLU modules, so guided backprop is the plain gradient", once=True
        )


def check_logits(logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError(
            "explanations need a model that returns (batch, classes) logits; wrap the model "
            "so that forward returns a single logits tensor"
        )
    return logits


class GuidedBackpropExplainer(Explainer):
    """Guided backprop (Springenberg et al., ICLR 2015): the class logit's gradient w.r.t. the
    pixels with negative gradients zeroed at every ReLU; display (B, S, S, 3) uint8.
    """

    name = "guided_backprop"

    def explain(self, batch: ExplainBatch, out_size: int) -> np.ndarray:
        return gradients_display(batch_guided_backprop(batch), out_size)


def batch_guided_backprop(batch: ExplainBatch) -> torch.Tensor:
    """Guided-backprop gradients of ``batch``, computed once and shared with guided Grad-CAM.

    Returns (B, C, H, W) float32 on the model's device.
    """
    return batch.memo(
        GuidedBackpropExplainer.name,
        lambda: guided_backprop_gradients(batch.model, batch.images, batch.class_indices),
    )
