"""Guided Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, section 3.1): guided backprop multiplied point-wise by
the Grad-CAM map upsampled to the input resolution, class-discriminative and high-resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from pipelines.explain.base import (
    ExplainBatch,
    Explainer,
    gradients_display,
    resize_maps,
    unit_scale,
)
from pipelines.explain.gradcam import batch_gradcam
from pipelines.explain.guided_backprop import batch_guided_backprop


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


class GuidedGradCAMExplainer(Explainer):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backprop times upsampled
    Grad-CAM, reusing both passes of the batch; display (B, S, S, 3) uint8.
    """

    name = "guided_gradcam"

    def explain(self, batch: ExplainBatch, out_size: int) -> np.ndarray:
        weighted = guided_gradcam_gradients(batch_guided_backprop(batch), batch_gradcam(batch))
        return gradients_display(weighted, out_size)
