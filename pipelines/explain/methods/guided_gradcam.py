"""Guided Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, arXiv:1610.02391, section 3.1): guided backprop
multiplied point-wise by the Grad-CAM map upsampled to the input resolution, class-discriminative
and high-resolution."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.explain.base import (
    Display,
    Explainer,
    Gradient,
    Passes,
    gradients_display,
    resize_maps,
    unit_scale,
)
from pipelines.explain.methods.gradcam import gradcam_maps
from pipelines.explain.registry import register


def guided_gradcam_gradients(guided: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """Weight guided-backprop gradients by the Grad-CAM map at pixel resolution.

    The map is scaled, upsampled and scaled again, as the grayscale CAM pytorch-grad-cam
    multiplies with guided backprop in its guided Grad-CAM example.
    guided: (B, C, H, W) float32; cams: (B, h, w) float32, non-negative.
    Returns (B, C, H, W) float32 on the inputs' device.
    """
    height, width = guided.shape[-2:]
    upsampled = resize_maps(unit_scale(cams)[:, None], (height, width))[:, 0]
    return guided * unit_scale(upsampled)[:, None]


@register
class GuidedGradCAM(Explainer):
    """Guided Grad-CAM: guided backprop times upsampled Grad-CAM, from the same two backward
    passes as those methods; display (B, S, S, 3) uint8."""

    name = "guided_gradcam"
    title = "Guided Grad-CAM"
    display = Display.PICTURE
    needs = frozenset({Gradient.TARGET_LAYER, Gradient.PIXELS_GUIDED})

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        guided = passes.gradient(Gradient.PIXELS_GUIDED)
        return gradients_display(guided_gradcam_gradients(guided, gradcam_maps(passes)), out_size)
