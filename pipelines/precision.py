"""The forward stage's precision policy: bfloat16 where it stays within tolerance, else float32.

bfloat16 keeps float32's range with an 8-bit mantissa, and a GPU's tensor cores run it several
times faster. The forward stage uses it (on CUDA only: most CPUs run it slower than float32,
VGG16 took 44.7 s instead of 8.4 s on this project's 2-core VM) where, on the run's first batch,
it changes results by no more than the bounds below, measured against a float32 pass.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.features import capture_layers, pooled_features
from pipelines.models import ModelAdapter

BF16_MIN_TOP1_AGREEMENT = 0.99  # share of images whose predicted class stays the same
BF16_MAX_FEATURE_ERROR = 0.05  # relative error of every layer's pooled features (Frobenius)
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius); 0 when both are zero, inf when only exact is."""
    difference = float(torch.linalg.vector_norm(approx.float() - exact.float()))
    scale = float(torch.linalg.vector_norm(exact.float()))
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def compare_bf16(
    adapter: ModelAdapter, images: torch.Tensor, feature_layers: list[str]
) -> dict[str, Any]:
    """Run ``images`` (B, C, S, S) through the model in float32 and under bfloat16 autocast.

    Returns {"top1_agreement": share of images with the same predicted class, "worst_layer",
    "worst_feature_error": the largest ``relative_error`` of a layer's pooled features,
    "accepted": whether both are within BF16_MIN_TOP1_AGREEMENT / BF16_MAX_FEATURE_ERROR}.
    """
    module = adapter.module
    exact_logits, exact = capture_layers(module, images, feature_layers, pooled_features)
    bf16_logits, bf16 = capture_layers(
        module, images, feature_layers, pooled_features, torch.bfloat16
    )
    same = exact_logits.float().argmax(dim=1) == bf16_logits.float().argmax(dim=1)
    agreement = float(same.float().mean())
    errors = {layer: relative_error(bf16[layer], exact[layer]) for layer in exact}
    worst_layer = max(errors, key=errors.__getitem__) if errors else None
    worst_error = errors[worst_layer] if worst_layer else 0.0
    return {
        "top1_agreement": round(agreement, 4),
        "worst_layer": worst_layer,
        "worst_feature_error": round(worst_error, 5),
        "accepted": agreement >= BF16_MIN_TOP1_AGREEMENT and worst_error <= BF16_MAX_FEATURE_ERROR,
    }


def bf16_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def choose_precision(check: dict[str, Any] | None) -> dict[str, Any]:
    """The forward stage's precision for a run, from ``compare_bf16``'s result (None: bfloat16
    is not available here): {"dtype": "bfloat16" | "float32", "reason", ...the check}. Decided
    once per run and kept in its manifest, so a resumed run goes on in the same precision."""
    if check is None:
        return {"dtype": "float32", "reason": "bfloat16 is used on CUDA GPUs only"}
    reason = (
        f"on the first batch, bfloat16 kept the top-1 class of {check['top1_agreement']:.1%} of "
        f"the images (needs {BF16_MIN_TOP1_AGREEMENT:.0%}) and changed the features by at most "
        f"{check['worst_feature_error']:.1%} (layer {check['worst_layer']}; allows "
        f"{BF16_MAX_FEATURE_ERROR:.0%})"
    )
    return {"dtype": "bfloat16" if check["accepted"] else "float32", "reason": reason, **check}
