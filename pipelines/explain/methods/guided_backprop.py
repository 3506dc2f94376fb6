"""Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for
Simplicity: The All Convolutional Net", ICLR 2015 workshop, arXiv:1412.6806); the guided rule
itself is in ``pipelines/explain/guided.py``."""

from __future__ import annotations

import numpy as np

from pipelines.explain.base import Display, Explainer, Gradient, Passes, gradients_display
from pipelines.explain.registry import register


@register
class GuidedBackprop(Explainer):
    """Guided backprop: the class logit's gradient w.r.t. the pixels with negative gradients
    zeroed at every ReLU; display (B, S, S, 3) uint8."""

    name = "guided_backprop"
    title = "Guided backprop"
    display = Display.PICTURE
    needs = frozenset({Gradient.PIXELS_GUIDED})

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return gradients_display(passes.gradient(Gradient.PIXELS_GUIDED), out_size)
