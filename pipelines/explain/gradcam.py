"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, arXiv:1610.02391), batched, through pytorch-grad-cam.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from pipelines.errors import UserError
from pipelines.explain.base import (
    ExplainBatch,
    Explainer,
    cam_display,
    check_batch,
    check_classes_in_range,
    check_eager,
    check_submodule,
    preserved_model_state,
)
from pipelines.types import LayerId


class _DeviceGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM, with the map computed on the model's device for the whole
    batch at once (the package copies activations to the host and scales maps one image at a
    time in numpy). Hooks, targets, ``zero_grad`` and the backward pass stay the package's.
    """

    def __init__(self, model: torch.nn.Module, target_layers: list[torch.nn.Module]) -> None:
        super().__init__(model, target_layers)
        # Keep captured activations/gradients as device tensors; BaseCAM.detach stays True, so
        # the backward is still a plain ``loss.backward`` (no double-backward graph).
        self.activations_and_grads.detach = False

    def compute_cam_per_layer(
        self, input_tensor: torch.Tensor, targets: list[Any], eigen_smooth: bool
    ) -> torch.Tensor:
        """Return ReLU(sum_k alpha_k A^k): (B, h, w) float32, unscaled, on the device."""
        activations = self.activations_and_grads.activations
        gradients = self.activations_and_grads.gradients
        if not activations or not gradients:
            raise UserError(
                "the Grad-CAM layer was not reached by the model's forward pass; pick a layer "
                "that is used to compute the prediction"
            )
        # A module called more than once (ResNet blocks reuse one ReLU) is the layer of its
        # last call everywhere in LayerScope (see ``features``): the block's output. The package
        # records every call's activation but, as each call's output is made a leaf, only the
        # last call's gradient; pair the last of each (the first activation would be the
        # block's inner ReLU weighted by the output's gradient).
        acts, grads = activations[-1].detach(), gradients[-1].detach()
        if acts.ndim != 4:
            raise UserError(
                f"Grad-CAM needs a layer with (C, H, W) output, got shape {tuple(acts.shape[1:])}; "
                "pick a convolutional layer"
            )
        return cam_from(acts, grads)

    def aggregate_multi_layers(self, cam_per_target_layer: torch.Tensor) -> torch.Tensor:
        # One target layer, and scaling is done by the caller at the display size.
        return cam_per_target_layer


def cam_from(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from the target layer's activations and the class score's gradient there.

    acts, grads: (B, C, h, w) float32 -> (B, h, w) float32, non-negative, unscaled.
    """
    # Eq. 1 of the paper: alpha_k^c = global average of d y^c / d A^k.
    alpha = grads.mean(dim=(2, 3))
    # Eq. 2: L^c = ReLU(sum_k alpha_k^c A^k), one batched contraction over channels.
    return F.relu(torch.einsum("bc,bchw->bhw", alpha, acts))


def _leaf_output(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    # Grad-CAM only needs d y^c / d A: making A a fresh leaf stops the backward at the target
    # layer (nothing before it is differentiated) and lets the forward up to it run without
    # building a graph at all.
    return output.detach().requires_grad_(True)


def _private_copy(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
) -> torch.Tensor:
    # The package stores the layer output itself; an in-place op after the layer (a ReLU with
    # inplace=True as in torchvision VGG/ResNet, or ``out += identity``) would overwrite it on
    # CPU. Handing the rest of the network a copy keeps the stored activation pre-ReLU.
    return output.clone()


@contextlib.contextmanager
def _registered(hook_handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in hook_handles:
            handle.remove()


def gradcam_maps(
    model: torch.nn.Module,
    target_layer: torch.nn.Module,
    images: torch.Tensor,
    class_indices: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM of the given class for every image, in one forward and one backward pass.

    images: (B, C, H, W) float32 on the model's device; class_indices: (B,) int64.
    Returns (B, h, w) float32, non-negative and unscaled, at the target layer's resolution,
    on the model's device. The model's mode, ``requires_grad`` and ``.grad`` are restored and
    no hooks are left behind, even if the pass fails.
    """
    check_eager(model)
    check_submodule(model, target_layer)
    classes = check_batch(images, class_indices)
    targets = [ClassifierOutputTarget(c) for c in classes]
    with torch.enable_grad(), preserved_model_state(model):
        leaf = target_layer.register_forward_hook(_leaf_output)
        cam = None
        try:
            cam = _DeviceGradCAM(model, [target_layer])
            # Registered after the package's hooks, so they store the leaf and the rest of the
            # network runs on the copy.
            with _registered([target_layer.register_forward_hook(_private_copy)]):
                return cam(images.detach(), targets).detach()
        except IndexError:
            # ClassifierOutputTarget indexes the logits with the class; name the fix.
            outputs = getattr(cam, "outputs", None)
            if isinstance(outputs, torch.Tensor):
                check_classes_in_range(classes, outputs.shape[-1])
            raise
        finally:
            # Explicit release rather than ``with cam``: BaseCAM.__exit__ swallows IndexError.
            if cam is not None:
                cam.activations_and_grads.release()
                cam.outputs = None
            leaf.remove()


# Element-wise layers that may follow a conv without changing what its maps mean spatially.
_RECTIFIED_FOLLOWERS = {"ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "BatchNorm2d", "Hardswish"}


def last_spatial_conv_layer(layers: Sequence[dict[str, Any]]) -> LayerId:
    """The default Grad-CAM layer: the rectified output of the last Conv2d whose output is larger
    than 1x1 — the paper's "last convolutional layer" (finest semantics that still have a place),
    taken after its BatchNorm/ReLU as the paper's feature maps A^k are. The raw conv output can
    be mostly negative, which leaves ReLU(sum_k alpha_k A^k) empty for most images.

    layers: [{"id": "features.28", "type": "Conv2d", "output_shape": [512, 14, 14]}, ...] in
    execution order; output_shape excludes the batch dim.
    """
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        shape = list(layer.get("output_shape") or [])
        if layer.get("type") == "Conv2d" and len(shape) == 3 and shape[1] * shape[2] > 1:
            chosen = layer
            for follower in layers[index + 1 :]:
                if (
                    follower.get("type") not in _RECTIFIED_FOLLOWERS
                    or follower.get("output_shape") != shape
                ):
                    break
                chosen = follower
            return str(chosen["id"])
    raise UserError(
        "Grad-CAM needs a Conv2d layer with spatial output larger than 1x1, and this model has "
        "none; use a convolutional model or a larger input size"
    )


class GradCAMExplainer(Explainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017): the target layer's activations weighted by the
    spatially averaged gradient of the class score, ReLU'd; display (B, S, S) float16 in [0, 1].
    """

    name = "gradcam"

    def explain(self, batch: ExplainBatch, out_size: int) -> np.ndarray:
        return cam_display(batch_gradcam(batch), out_size)


def batch_gradcam(batch: ExplainBatch) -> torch.Tensor:
    """Grad-CAM maps of ``batch``, computed once and shared with guided Grad-CAM.

    Returns (B, h, w) float32, unscaled, on the model's device.
    """
    return batch.memo(
        GradCAMExplainer.name,
        lambda: gradcam_maps(batch.model, batch.target_layer, batch.images, batch.class_indices),
    )
