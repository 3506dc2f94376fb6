"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017, arXiv:1703.01365), through Captum's ``IntegratedGradients``."""

from __future__ import annotations

import math

import numpy as np
import torch

from pipelines.explain.base import Display, Explainer, Passes, signed_display
from pipelines.explain.progress import reported_forwards
from pipelines.explain.registry import register

# Points on the path from the baseline to the image. The paper finds 20-300 steps bring the
# attributions within 5% of the score difference; Captum's default Gauss-Legendre
# rule, which we keep, is more accurate per step than the paper's Riemann sum.
STEPS = 32
# Points per forward/backward pass: bounds memory (a VGG16 pass at 224 px keeps ~100 MB of
# activations per point) and gives the progress bar STEPS / IMAGES_PER_PASS steps per image.
IMAGES_PER_PASS = 8
# The baseline is zero in model-input space. Every LayerScope model takes images standardised
# with its declared mean and std, so zero is the mean colour of the data it was trained for: a
# neutral grey-ish image, where black would carry signal of its own (and give black regions of
# an image no attribution at all); it also needs no knowledge of the normalisation.
BASELINE = 0.0


def integrated_gradients_maps(passes: Passes) -> torch.Tensor:
    """(x - x') times the class logit's gradient averaged along the straight path from the
    baseline x' to x (eq. 1 of the paper), summed over the colour channels, signed: positive
    where the pixel's difference from the baseline raises the class score. The map sums to about
    y^c(x) - y^c(x') (completeness).

    One image at a time, so memory stays at ``IMAGES_PER_PASS`` path points whatever the batch
    size. Returns (B, H, W) float32 on the images' device.
    """
    from captum.attr import IntegratedGradients as CaptumIntegratedGradients

    images = passes.images.detach()
    method = CaptumIntegratedGradients(passes.model)
    per_image = math.ceil(STEPS / IMAGES_PER_PASS)
    maps = []
    with reported_forwards(passes.model, passes.report, total=len(images) * per_image):
        for image, target in zip(images.split(1), passes.classes.split(1), strict=True):
            attributions = method.attribute(
                image,
                baselines=BASELINE,
                target=target,
                n_steps=STEPS,
                method="gausslegendre",
                internal_batch_size=IMAGES_PER_PASS,
            )
            maps.append(attributions.float().sum(dim=1))
    return torch.cat(maps)


@register
class IntegratedGradients(Explainer):
    """Integrated Gradients: each pixel's share of the class score's change from a mean-colour
    image to this one; display (B, S, S) float16 in [-1, 1], divided by each image's largest
    magnitude (red for the class, blue against it)."""

    name = "integrated_gradients"
    title = "Integrated Gradients"
    display = Display.SIGNED
    slow = True
    # Captum runs its own passes: the engine's gradients are not used.
    needs = frozenset()

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return signed_display(integrated_gradients_maps(passes), out_size)
