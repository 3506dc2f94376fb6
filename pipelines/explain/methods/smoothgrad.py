"""SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding
noise", ICML 2017 workshop, arXiv:1706.03825), through Captum's ``NoiseTunnel`` around
``Saliency``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from pipelines.explain.base import Display, Explainer, Passes, cam_display
from pipelines.explain.progress import reported_forwards
from pipelines.explain.registry import register

# Noisy copies averaged per image. The paper sees diminishing returns beyond about 50; 25 keeps
# most of the smoothing at half the passes.
SAMPLES = 25
# Noise standard deviation as a fraction of the image's value range (max - min), the paper's
# "noise level"; it finds 10-20% best, and we take the middle.
NOISE_LEVEL = 0.15
# Noisy copies per forward/backward pass: bounds memory (a VGG16 pass at 224 px keeps ~100 MB
# of activations per copy) and gives the progress bar SAMPLES / SAMPLES_PER_PASS steps per image.
SAMPLES_PER_PASS = 5
# Every image draws the same noise, so an image's map depends neither on earlier calls nor on
# its place in the batch.
SEED = 0


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Within the block, random draws on ``device`` (Captum's ``torch.normal`` uses the global
    generator) start from ``seed``; the caller's generator states are restored afterwards, so
    explaining an image never changes what a caller's later random draws give."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


def smoothgrad_maps(passes: Passes) -> torch.Tensor:
    """Mean over ``SAMPLES`` noisy copies of |d y^c / d x| (the class logit's gradient), its
    largest value over the colour channels as for saliency; noise N(0, sigma^2) per value with
    sigma = ``NOISE_LEVEL`` * (max - min) of the image.

    One image at a time: the noise level is per image, and memory stays at ``SAMPLES_PER_PASS``
    copies whatever the batch size. Returns (B, H, W) float32, non-negative, on the images' device.
    """
    from captum.attr import NoiseTunnel
    from captum.attr import Saliency as CaptumSaliency

    images = passes.images.detach()
    tunnel = NoiseTunnel(CaptumSaliency(passes.model))
    per_image = math.ceil(SAMPLES / SAMPLES_PER_PASS)
    maps = []
    with reported_forwards(passes.model, passes.report, total=len(images) * per_image):
        for image, target in zip(images.split(1), passes.classes.split(1), strict=True):
            stdev = NOISE_LEVEL * float(image.max() - image.min())
            with seeded(SEED, image.device):
                grads = tunnel.attribute(
                    image,
                    nt_type="smoothgrad",
                    nt_samples=SAMPLES,
                    nt_samples_batch_size=SAMPLES_PER_PASS,
                    stdevs=stdev,
                    target=target,
                    abs=True,
                )
            maps.append(grads.float().amax(dim=1))
    return torch.cat(maps)


@register
class SmoothGrad(Explainer):
    """SmoothGrad: saliency averaged over noisy copies of the image, which removes the gradient's
    pixel-scale noise; display (B, S, S) float16 in [0, 1], scaled per image as saliency is."""

    name = "smoothgrad"
    title = "SmoothGrad"
    display = Display.HEAT
    slow = True
    # Captum runs its own passes: the engine's gradients are not used.
    needs = frozenset()

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return cam_display(smoothgrad_maps(passes), out_size)
