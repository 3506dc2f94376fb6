"""One forward pass for everything the precompute needs from a batch: the logits, every layer's
captured (pooled) activations, and Grad-CAM, guided backprop and guided Grad-CAM of the
predicted class.

Run separately, capture, Grad-CAM and guided backprop each run the model forward: three forward
passes and two backward. Here the forward runs once, with guided ReLUs (same forward values as
ReLU, so the features and logits are unchanged), and two backward passes start from the
predicted logits: a plain one that stops at the Grad-CAM layer, so it only runs the layers after
it, and a guided one down to the pixels. Measured on VGG16 (2 CPU cores, 32 images at 224 px),
see ``benchmarks/README.md``. The results equal ``explain_batch`` plus ``capture_layers``
(checked in ``tests/test_explain.py``), and ``explain_batch`` is cross-checked against
pytorch-grad-cam.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.errors import UserError
from pipelines.explain.base import (
    cam_display,
    check_eager,
    check_submodule,
    gradients_display,
    preserved_model_state,
)
from pipelines.explain.gradcam import cam_from
from pipelines.explain.guided_backprop import (
    GuideSwitch,
    check_logits,
    guided_relus,
    warn_if_no_relus,
)
from pipelines.explain.guided_gradcam import guided_gradcam_gradients
from pipelines.features import OutputTransform, autocast_to, capturing
from pipelines.types import LayerId


def predict_and_explain(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    images: torch.Tensor,
    layer_ids: list[LayerId],
    transform: OutputTransform,
    out_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, dict[LayerId, torch.Tensor], dict[str, np.ndarray]]:
    """Logits, captured layers and the three explanations of each image's top-1 class.

    images: (B, C, H, W) float32 model-ready on the model's device, C in {1, 3}; layer_ids and
    transform as for ``features.capture_layers`` (``transform`` must detach); out_size as for
    ``explain_batch``; ``autocast_dtype`` as for ``capture_layers`` (the forward pass runs under
    autocast, the backward passes in the dtypes it chose, the maps in float32). Returns
    ``(logits (B, K) detached, {layer_id: transform(output)}, {"gradcam", "guided_backprop",
    "guided_gradcam": display arrays as explain_batch})``.
    The model is left as it was: mode, ``requires_grad``, ``.grad``, ReLU modules, no hooks.
    """
    check_eager(model)
    check_submodule(model, target_layer)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(
            f"explanations need (B, 1 or 3, H, W) images, got shape {tuple(images.shape)}; "
            "use a model that takes grayscale or RGB input"
        )
    kept: dict[str, torch.Tensor] = {}

    def keep_target(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        kept["acts"] = output
        # The rest of the network gets a copy, so an in-place op after the layer (``out +=
        # identity``) cannot change the activations Grad-CAM weighs.
        return output.clone()

    switch = GuideSwitch()
    target_hook = target_layer.register_forward_hook(keep_target)
    try:
        with (
            torch.enable_grad(),
            preserved_model_state(model),
            guided_relus(model, switch) as n_relus,
            capturing(model, images, layer_ids, transform) as captured,
        ):
            warn_if_no_relus(n_relus)
            pixels = images.detach().requires_grad_(True)
            with autocast_to(pixels.device, autocast_dtype):
                logits = check_logits(model(pixels))
            if "acts" not in kept or kept["acts"].ndim != 4:
                raise UserError(
                    "the Grad-CAM layer was not reached by the model's forward pass, or has no "
                    "(C, H, W) output; pick a convolutional layer used for the prediction"
                )
            predicted = logits.detach().argmax(dim=1, keepdim=True)
            score = logits.gather(1, predicted).sum()
            switch.guided = False
            (target_grads,) = torch.autograd.grad(score, kept["acts"], retain_graph=True)
            switch.guided = True
            (pixel_grads,) = torch.autograd.grad(score, pixels)
    finally:
        target_hook.remove()
    cams = cam_from(kept.pop("acts").detach().float(), target_grads.float())
    explanations = {
        "gradcam": cam_display(cams, out_size),
        "guided_backprop": gradients_display(pixel_grads, out_size),
        "guided_gradcam": gradients_display(guided_gradcam_gradients(pixel_grads, cams), out_size),
    }
    return logits.detach(), captured, explanations
