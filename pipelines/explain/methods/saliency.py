"""Saliency, the vanilla gradient (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional
Networks: Visualising Image Classification Models and Saliency Maps", ICLR 2014 workshop,
arXiv:1312.6034), through Captum's ``Saliency``."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.explain.base import Display, Explainer, Passes, cam_display
from pipelines.explain.progress import reported_forwards
from pipelines.explain.registry import register


def saliency_maps(passes: Passes) -> torch.Tensor:
    """|d y^c / d x| of the class logit, its largest value over the colour channels (section 3.1
    of the paper), from one forward and one backward pass of the whole batch.

    Returns (B, H, W) float32, non-negative, at the input resolution, on the images' device.
    """
    from captum.attr import Saliency as CaptumSaliency

    # A detached leaf of our own: Captum would otherwise set requires_grad on the caller's
    # tensor (and warn that it did).
    images = passes.images.detach().requires_grad_(True)
    with reported_forwards(passes.model, passes.report, total=1):
        grads = CaptumSaliency(passes.model).attribute(images, target=passes.classes, abs=True)
    return grads.float().amax(dim=1)


@register
class Saliency(Explainer):
    """Saliency: the magnitude of the class logit's gradient at each pixel; display (B, S, S)
    float16 in [0, 1], scaled per image as Grad-CAM is."""

    name = "saliency"
    title = "Saliency (gradient)"
    display = Display.HEAT
    # Captum runs its own forward and backward pass: the engine's gradients are not used.
    needs = frozenset()

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return cam_display(saliency_maps(passes), out_size)
