"""Which layer Grad-CAM looks at by default, chosen from a run's layer records."""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.errors import UserError
from pipelines.records import LayerSpec
from pipelines.types import LayerId

# Element-wise layers that may follow a conv without changing what its maps mean spatially.
_RECTIFIED_FOLLOWERS = {"ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "BatchNorm2d", "Hardswish"}


def last_spatial_conv_layer(layers: Sequence[LayerSpec]) -> LayerId:
    """The default Grad-CAM layer: the rectified output of the last Conv2d whose output is larger
    than 1x1 — the paper's "last convolutional layer" (finest semantics that still have a place),
    taken after its BatchNorm/ReLU as the paper's feature maps A^k are. The raw conv output can
    be mostly negative, which leaves ReLU(sum_k alpha_k A^k) empty for most images.

    layers: the run's layers in execution order (``output_shape`` excludes the batch dim).
    """
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        shape = layer.output_shape
        if layer.type == "Conv2d" and len(shape) == 3 and shape[1] * shape[2] > 1:
            chosen = layer
            for follower in layers[index + 1 :]:
                if follower.type not in _RECTIFIED_FOLLOWERS or follower.output_shape != shape:
                    break
                chosen = follower
            return chosen.id
    raise UserError(
        "Grad-CAM needs a Conv2d layer with spatial output larger than 1x1, and this model has "
        "none; use a convolutional model or a larger input size"
    )
