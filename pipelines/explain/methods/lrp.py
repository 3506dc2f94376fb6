"""Layer-wise Relevance Propagation (Bach, Binder, Montavon, Klauschen, Müller & Samek, PLoS ONE
10(7) e0130140, 2015) as two explanation methods, ``lrp`` and ``lrp_alpha_beta``, computed with
zennit (Anders et al., arXiv:2106.13200, 2021). The rules, canonizers and composites, and the
papers behind each, are ``pipelines/explain/lrp_rules.py``, imported when a method first runs:
zennit brings torchvision (2 s of a core), which a run without LRP never needs.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipelines.explain.base import Display, Explainer, Passes, signed_display
from pipelines.explain.registry import register

if TYPE_CHECKING:
    from zennit.canonizers import Canonizer
    from zennit.core import Composite


class LayerwiseRelevance(Explainer):
    """LRP with one of zennit's composites (``composite``); display (B, S, S) float16 in
    [-1, 1], the relevance summed over input channels and divided by each map's largest
    magnitude (``signed_display``). One forward and one backward pass per batch, and on a model
    that needs canonizing the engine's plain forward pass too, whose logits the canonized ones
    must match (``check_canonized_logits``; the engine runs it only when read)."""

    needs = frozenset()
    display = Display.SIGNED
    slow = False

    @abstractmethod
    def composite(self, canonizers: list[Canonizer]) -> Composite:
        """A fresh composite (zennit registers one per model at a time) with ``canonizers``."""

    def relevance(self, passes: Passes) -> torch.Tensor:
        """(B, C, H, W) float32 relevance of each image's class at its pixels."""
        from pipelines.explain.lrp_rules import (
            canonizers_for,
            check_canonized_logits,
            relevance_at_pixels,
        )

        canonizers = canonizers_for(passes.model)
        logits, relevance = relevance_at_pixels(
            passes.model, passes.images, passes.classes, self.composite(canonizers)
        )
        if canonizers:
            check_canonized_logits(logits, passes.logits)
        return relevance

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return signed_display(self.relevance(passes).sum(dim=1), out_size)


@register
class LRPEpsilonPlusFlat(LayerwiseRelevance):
    """LRP, zennit's EpsilonPlusFlat: relevance for (red) and against (blue) the class."""

    name = "lrp"
    title = "LRP"

    def composite(self, canonizers: list[Canonizer]) -> Composite:
        from pipelines.explain.lrp_rules import epsilon_plus_flat

        return epsilon_plus_flat(canonizers)


@register
class LRPAlpha2Beta1Flat(LayerwiseRelevance):
    """LRP, zennit's EpsilonAlpha2Beta1Flat: alpha-beta at convolutions weighs positive
    contributions twice and subtracts negative ones, so more evidence against the class shows."""

    name = "lrp_alpha_beta"
    title = "LRP (alpha-beta)"

    def composite(self, canonizers: list[Canonizer]) -> Composite:
        from pipelines.explain.lrp_rules import epsilon_alpha2_beta1_flat

        return epsilon_alpha2_beta1_flat(canonizers)
