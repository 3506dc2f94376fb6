"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014,
arXiv:1311.2901, section 4.2), through Captum's ``Occlusion``: hide one patch of the image at a
time and measure how much the class probability drops."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.explain.base import Display, Explainer, MethodResult, Passes, resize_maps
from pipelines.explain.progress import reported_forwards
from pipelines.explain.registry import register

# Patches per image side. The window is ceil(side / GRID) pixels and the stride equals it, so
# patches do not overlap and each pixel's value is exactly its own patch's drop (an overlapping
# window would average several drops). 8 x 8 = 64 patches: 28 px squares on a 224 px image, object
# parts rather than single edges, 64 occluded copies per image; a side that is not a multiple of the
# window ends in a narrower last patch.
GRID = 8
# A hidden patch is set to zero in model-input space: every LayerScope model takes images
# standardised with its declared mean and std, so zero is the data's mean colour, the neutral
# grey of the paper's occluder, without knowing the normalisation.
BASELINE = 0.0
# Occluded copies per forward pass (no backward): the 64 patches in 4 passes, so a GPU runs wide
# batches while memory stays bounded, and the progress bar moves 4 times per image.
PATCHES_PER_PASS = 16


@dataclass(frozen=True)
class OcclusionGrid:
    """Non-overlapping patches over an H x W image: ``window`` (h, w) pixels each, ``cells``
    (gh, gw) of them; the last row/column is narrower when the side is not a multiple."""

    window: tuple[int, int]
    cells: tuple[int, int]


def occlusion_grid(height: int, width: int) -> OcclusionGrid:
    window = (math.ceil(height / GRID), math.ceil(width / GRID))
    return OcclusionGrid(window, (math.ceil(height / window[0]), math.ceil(width / window[1])))


@dataclass(frozen=True)
class Occluded:
    """One batch's occlusion results: ``drops`` (B, H, W) float32, p(class) - p(class | the
    pixel's patch hidden); ``probability`` (B,) float32, p(class) of the intact image;
    ``occluded_probability`` (B, gh, gw) float32, p(class) with each patch hidden."""

    drops: torch.Tensor
    probability: torch.Tensor
    occluded_probability: torch.Tensor


def occlusion_drops(passes: Passes) -> Occluded:
    """Each patch of ``occlusion_grid`` hidden in turn (set to ``BASELINE`` in every channel), the
    class probability (``passes.decode`` of the logits) measured with it hidden.

    One image at a time, so memory stays at ``PATCHES_PER_PASS`` copies whatever the batch size;
    one extra forward pass of the batch gives the intact probabilities. Tensors on the images'
    device.
    """
    from captum.attr import Occlusion as CaptumOcclusion

    images = passes.images.detach()
    channels, height, width = images.shape[1:]
    grid = occlusion_grid(height, width)
    window = (channels, *grid.window)
    per_image = 1 + math.ceil(grid.cells[0] * grid.cells[1] / PATCHES_PER_PASS)

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return passes.decode(passes.model(x))

    occlusion = CaptumOcclusion(probabilities)
    with reported_forwards(passes.model, passes.report, total=1 + len(images) * per_image):
        with torch.no_grad():
            intact = probabilities(images).float().gather(1, passes.classes[:, None])[:, 0]
        drops = torch.cat(
            [
                occlusion.attribute(
                    image,
                    sliding_window_shapes=window,
                    strides=window,
                    baselines=BASELINE,
                    target=target,
                    perturbations_per_eval=PATCHES_PER_PASS,
                )[:, 0].float()
                for image, target in zip(images.split(1), passes.classes.split(1), strict=True)
            ]
        )
    # Every pixel of a patch holds that patch's drop; its top-left pixel stands for it.
    corners = drops[:, :: grid.window[0], :: grid.window[1]]
    return Occluded(drops, intact, intact[:, None, None] - corners)


def probability_display(drops: torch.Tensor, out_size: int) -> np.ndarray:
    """Probability drops to display form, in probability units (not rescaled, so maps of
    different images and models compare): resized, clamped to [-1, 1] against resizing error.

    drops: (B, H, W) float32 in [-1, 1] -> (B, S, S) float16 in [-1, 1].
    """
    resized = resize_maps(drops[:, None], (out_size, out_size))[:, 0]
    return resized.clamp_(-1.0, 1.0).to(torch.float16).cpu().numpy()


@register
class Occlusion(Explainer):
    """Occlusion: how much the class probability drops when each patch of the image is hidden;
    display (B, S, S) float16 in [-1, 1] in probability units (red: hiding the patch lowers
    the class's probability, blue: raises it). Extras ``"probability"`` (B,) float32 and
    ``"occluded_probability"`` (B, gh, gw) float32, the class probability with each patch hidden
    (row-major over the grid of ``occlusion_grid``)."""

    name = "occlusion"
    title = "Occlusion"
    display = Display.SIGNED
    slow = True
    # Captum runs its own passes: the engine's gradients are not used.
    needs = frozenset()

    def explain(self, passes: Passes, out_size: int) -> MethodResult:
        occluded = occlusion_drops(passes)
        return MethodResult(
            probability_display(occluded.drops, out_size),
            {
                "probability": occluded.probability.cpu().numpy(),
                "occluded_probability": occluded.occluded_probability.cpu().numpy(),
            },
        )
