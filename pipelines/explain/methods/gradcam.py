"""Grad-CAM (Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations
from Deep Networks via Gradient-based Localization", ICCV 2017, arXiv:1610.02391)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.explain.base import Display, Explainer, Gradient, Passes, cam_display
from pipelines.explain.registry import register


def cam_from(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from the target layer's activations and the class score's gradient there.

    acts, grads: (B, C, h, w) float32 -> (B, h, w) float32, non-negative, unscaled.
    """
    # Eq. 1 of the paper: alpha_k^c = global average of d y^c / d A^k.
    alpha = grads.mean(dim=(2, 3))
    # Eq. 2: L^c = ReLU(sum_k alpha_k^c A^k), one batched contraction over channels.
    return F.relu(torch.einsum("bc,bchw->bhw", alpha, acts))


def gradcam_maps(passes: Passes) -> torch.Tensor:
    """(B, h, w) float32 Grad-CAM at the target layer's resolution, unscaled, on the device."""
    return cam_from(passes.acts(), passes.gradient(Gradient.TARGET_LAYER))


@register
class GradCAM(Explainer):
    """Grad-CAM: the target layer's activations weighted by the spatially averaged gradient of
    the class score, ReLU'd; display (B, S, S) float16 in [0, 1]."""

    name = "gradcam"
    title = "Grad-CAM"
    display = Display.HEAT
    needs = frozenset({Gradient.TARGET_LAYER})

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return cam_display(gradcam_maps(passes), out_size)
