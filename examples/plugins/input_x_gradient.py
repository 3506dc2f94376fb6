"""Gradient x input: an example LayerScope plugin (load it with ``--plugins examples/plugins``).

Shrikumar, Greenside, Shcherbina & Kundaje, "Not Just a Black Box: Learning Important Features
Through Propagating Activation Differences", arXiv:1605.01713 (2016): each input value times the
class score's gradient there, the first-order Taylor term of how much that value contributes.
Captum's ``InputXGradient`` computes the same thing; this file needs nothing beyond torch.

A plugin is one file holding an ``Explainer`` subclass decorated with ``@register``. Its class
attributes say how LayerScope calls and draws it; ``explain`` gets the batch after the engine's
forward pass (``passes``) and returns a display-ready array for ``display``:

- ``Display.HEAT``: (B, S, S) float16 in [0, 1], drawn over the image;
- ``Display.SIGNED``: (B, S, S) float16 in [-1, 1], red for the class, blue against it;
- ``Display.PICTURE``: (B, S, S, 3) uint8, shown as it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.explain import Display, Explainer, Passes, register

# Keeps an all-zero attribution at zero instead of dividing by zero.
EPS = 1e-12


def input_x_gradient(
    model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Sum over channels of input x d(logit of the class)/d(input).

    images: (B, C, H, W) float32 model-ready; classes: (B,) int64 -> (B, H, W) float32.
    The model is already in eval mode with frozen parameters (the engine sees to that).
    """
    pixels = images.detach().requires_grad_(True)
    score = model(pixels).gather(1, classes.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(score, pixels)
    return (pixels.detach() * gradient.float()).sum(dim=1)


@register
class InputXGradient(Explainer):
    """Gradient x input, resized to S and divided by its largest magnitude; display (B, S, S)
    float16 in [-1, 1]."""

    name = "input_x_gradient"  # --method / --explain value, file names, the page's key
    title = "Input × gradient"  # what the page and the CLI show
    display = Display.SIGNED
    # No gradient from the engine's shared backward passes: the method runs its own (the
    # engine offers only the guided gradient at the pixels and the plain one at the Grad-CAM
    # layer, ``pipelines.explain.Gradient``).
    needs = frozenset()
    slow = False  # one backward pass: cheap enough to precompute (--explain input_x_gradient)

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        maps = input_x_gradient(passes.model, passes.images, passes.classes)
        if maps.shape[-2:] != (out_size, out_size):
            maps = F.interpolate(
                maps[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False
            )[:, 0]
        # Scaled after resizing, so each displayed map spans the whole colour scale.
        scale = maps.abs().flatten(1).max(dim=1).values.clamp_min(EPS)[:, None, None]
        return (maps / scale).clamp(-1.0, 1.0).to(torch.float16).cpu().numpy()
