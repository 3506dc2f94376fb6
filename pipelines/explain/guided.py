"""The guided backward rule of guided backpropagation (Springenberg, Dosovitskiy, Brox &
Riedmiller, "Striving for Simplicity: The All Convolutional Net", ICLR 2015 workshop,
arXiv:1412.6806, section 3.4), switchable per backward pass.

pytorch-grad-cam's ``GuidedBackpropReLUModel`` swaps every ReLU module for a new one (losing
``inplace=True``) and explains one image per call. Here each ``nn.ReLU``'s forward is shadowed for
the duration of a block, so one batched forward pass serves both a guided backward pass (to the
pixels) and a plain one (to the Grad-CAM layer), and the model is left exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pipelines import report


@dataclass
class GuideSwitch:
    """Whether guided ReLUs apply the guided rule in the backward pass that runs next; off,
    they give the plain ReLU gradient."""

    guided: bool = True


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes a gradient only where both the input and the incoming
    gradient are positive (the guided rule), or, with the switch off, wherever the input is
    positive (the plain ReLU gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, switch: GuideSwitch) -> torch.Tensor:
        # Saving the boolean mask rather than the output keeps memory at one byte per element
        # and is immune to later in-place ops on the output.
        active = x > 0
        ctx.save_for_backward(active)
        ctx.switch = switch
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (active,) = ctx.saved_tensors
        if ctx.switch.guided:
            grad_output = grad_output.clamp(min=0)
        return grad_output * active, None


@contextlib.contextmanager
def guided_relus(model: torch.nn.Module, switch: GuideSwitch) -> Iterator[None]:
    """Within the block every ``nn.ReLU`` of ``model`` applies the guided backward rule while
    ``switch.guided`` is true.

    Works by shadowing each ReLU's ``forward`` with an instance attribute, so no module is
    replaced, no hook is registered and the ``inplace`` flags are untouched; the original
    forward is restored even if the block raises. Functional ``F.relu`` calls inside a model's
    ``forward`` cannot be reached this way; a model without ``nn.ReLU`` modules gets a warning.
    """
    relus = [module for module in model.modules() if isinstance(module, torch.nn.ReLU)]
    if not relus:
        # Checked on every batch and request: said once.
        report.warn(
            "the model has no nn.ReLU modules, so guided backprop is the plain gradient", once=True
        )
    # A ReLU might already carry an instance-level forward (e.g. patched by the user).
    previous = [module.__dict__.get("forward") for module in relus]

    def guided_forward(x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x, switch)

    try:
        for module in relus:
            module.__dict__["forward"] = guided_forward
        yield
    finally:
        for module, forward in zip(relus, previous, strict=True):
            if forward is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = forward
