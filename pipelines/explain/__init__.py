"""Explanation methods of the precompute: Grad-CAM, guided backprop and guided Grad-CAM.

One method per module around ``base.Explainer``; ``EXPLAINERS`` maps each registry name (the
store's ``explanation`` method parameter) to its explainer, and ``explain_batch`` runs them on
one batch, sharing the Grad-CAM and guided-backprop passes with guided Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipelines.errors import UserError
from pipelines.explain.base import ExplainBatch, Explainer
from pipelines.explain.gradcam import GradCAMExplainer, gradcam_maps, last_spatial_conv_layer
from pipelines.explain.guided_backprop import GuidedBackpropExplainer, guided_backprop_gradients
from pipelines.explain.guided_gradcam import GuidedGradCAMExplainer, guided_gradcam_gradients

EXPLAINERS: dict[str, Explainer] = {
    explainer.name: explainer
    for explainer in (GradCAMExplainer(), GuidedBackpropExplainer(), GuidedGradCAMExplainer())
}

__all__ = [
    "EXPLAINERS",
    "Explainer",
    "explain_batch",
    "gradcam_maps",
    "guided_backprop_gradients",
    "guided_gradcam_gradients",
    "last_spatial_conv_layer",
]


def explain_batch(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    images: torch.Tensor,
    class_indices: torch.Tensor,
    out_size: int,
    *,
    methods: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Explain a batch with every registered method (or the named ``methods``).

    images: (B, C, H, W) float32 model-ready (normalised) on the model's device, C in {1, 3};
    class_indices: (B,) int64, the class to explain per image.
    Returns display-ready arrays resized to out_size x out_size:
      "gradcam":         (B, S, S) float16 in [0, 1]
      "guided_backprop": (B, S, S, 3) uint8 (per-image normalised; 1-channel replicated to 3)
      "guided_gradcam":  (B, S, S, 3) uint8
    The model is left as it was: training flags, ``requires_grad``, ``.grad``, modules, no hooks.
    """
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size < 1:
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")
    names = list(EXPLAINERS) if methods is None else list(methods)
    unknown = [name for name in names if name not in EXPLAINERS]
    if unknown:
        raise UserError(
            f"unknown explanation method {unknown[0]!r}; choose from {', '.join(EXPLAINERS)}"
        )
    batch = ExplainBatch(model, target_layer, images, class_indices.to(images.device))
    return {name: EXPLAINERS[name].explain(batch, out_size) for name in names}
