"""Explanation methods: one engine (``engine.explain``) that serves the precompute and the
dashboard, and methods registered by name, one file each under ``methods/``.

``STORED_METHODS`` are the methods the precompute stores for every sample (the store's
``explanation`` method parameter) and the dashboard computes for a clicked class.
"""

from __future__ import annotations

from pipelines.explain import methods as _methods  # noqa: F401 - importing registers them
from pipelines.explain.base import (
    Cancelled,
    Display,
    Explainer,
    Gradient,
    MethodResult,
    Passes,
    Progress,
)
from pipelines.explain.engine import Explained, FeatureCapture, explain, run_passes
from pipelines.explain.registry import EXPLAINERS, register
from pipelines.explain.target_layer import last_spatial_conv_layer

STORED_METHODS = ("gradcam", "guided_backprop", "guided_gradcam")

__all__ = [
    "EXPLAINERS",
    "STORED_METHODS",
    "Cancelled",
    "Display",
    "MethodResult",
    "Progress",
    "Explained",
    "Explainer",
    "FeatureCapture",
    "Gradient",
    "Passes",
    "explain",
    "last_spatial_conv_layer",
    "register",
    "run_passes",
]
