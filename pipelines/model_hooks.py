"""A model file's own pre- and post-processing, checked every time it runs.

A ``python:FILE.py`` model may define, besides ``get_model()``:

- ``preprocess(image) -> tensor``: a PIL image (mode ``L`` for ``in_channels = 1``, else
  ``RGB``, any size) to the model's input, a (C, S, S) float tensor (C = ``in_channels``,
  S = ``input_size``), for models that were not trained on ImageNet-normalised pixels (a
  torchvision ``weights.transforms()`` object qualifies as it is);
- ``decode(logits) -> probabilities``: (B, K) logits to (B, K) class probabilities, for models
  whose outputs need more than a softmax (temperature, calibration, a log-softmax head).

Without them LayerScope resizes the shorter side, crops the centre and normalises with the
file's ``mean``/``std`` (``ModelAdapter.view`` / ``to_tensor``), and takes the softmax. The same
hooks run everywhere the model does: the precompute's forward pass and its stored top-10
probabilities, the dashboard's on-demand passes and explanations, image placement, the CLI.
What a hook returns is checked on every call, so a wrong hook fails with a ``UserError`` that
names the file and the fix instead of producing quietly wrong maps or probabilities.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from pipelines.errors import UserError
from pipelines.explain.base import softmax_probabilities

# decode's rows must sum to 1 within this, and no probability may fall below -this: float32
# softmax rounding is ~1e-7, a hand-normalised output a little more.
PROBABILITY_TOLERANCE = 1e-3

PREPROCESS_FIX = (
    "define preprocess(image) to take a PIL image and return a (C, S, S) float tensor "
    "(C = in_channels, S = input_size), e.g. torchvision.transforms.functional.to_tensor(image)"
)
DECODE_FIX = (
    "define decode(logits) to turn a (batch, classes) tensor of logits into class "
    "probabilities of the same shape, each row >= 0 and summing to 1, "
    "e.g. torch.softmax(logits / T, dim=1)"
)


@dataclass(frozen=True)
class ModelHooks:
    """The ``preprocess`` and ``decode`` functions of a model file (``source``), each None where
    the file has none."""

    source: str = ""
    preprocess: Callable[[Image.Image], Any] | None = None
    decode: Callable[[torch.Tensor], Any] | None = None

    @classmethod
    def of_module(cls, user: Any, source: str) -> ModelHooks:
        """The hooks an imported model file defines, or a UserError for one that is not a
        function."""
        found: dict[str, Any] = {}
        for name, fix in (("preprocess", PREPROCESS_FIX), ("decode", DECODE_FIX)):
            hook = getattr(user, name, None)
            if hook is not None and not callable(hook):
                raise UserError(
                    f"{name} in {source} is a {type(hook).__name__}, not a function; {fix}, or "
                    f"remove {name} to use LayerScope's default"
                )
            found[name] = hook
        return cls(source=source, preprocess=found["preprocess"], decode=found["decode"])

    def input_of(self, image: Image.Image, channels: int, size: int) -> torch.Tensor:
        """The file's ``preprocess(image)``, checked: (channels, size, size) float32 on the CPU.
        image: a PIL image in mode L (channels 1) or RGB (channels 3)."""
        if self.preprocess is None:
            raise RuntimeError("this model file has no preprocess hook")
        expected = (channels, size, size)
        try:
            result = self.preprocess(image)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's hook
            raise UserError(
                f"preprocess() in {self.source} raised {type(exc).__name__}: {exc}; it is called "
                f"with a {image.mode} PIL image of any size; {PREPROCESS_FIX}"
            ) from None
        if not isinstance(result, torch.Tensor):
            raise UserError(
                f"preprocess() in {self.source} returned a {type(result).__name__}, not a "
                f"torch.Tensor; {PREPROCESS_FIX} (torch.as_tensor turns an array into one)"
            )
        if tuple(result.shape) != expected:
            raise UserError(
                f"preprocess() in {self.source} returned shape {tuple(result.shape)}, but the "
                f"model takes {expected} (in_channels = {channels}, input_size = {size}); "
                f"{PREPROCESS_FIX}, or set in_channels / input_size in the file to match"
            )
        if not result.is_floating_point():
            raise UserError(
                f"preprocess() in {self.source} returned {result.dtype} values; {PREPROCESS_FIX} "
                "(scale integer pixels, e.g. image_tensor.float() / 255)"
            )
        result = result.detach().to("cpu", torch.float32)
        if not torch.isfinite(result).all():
            raise UserError(
                f"preprocess() in {self.source} returned NaN or infinite values; {PREPROCESS_FIX}"
            )
        return result

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) float32 class probabilities: the file's ``decode``,
        checked, or the softmax."""
        if self.decode is None:
            return softmax_probabilities(logits)
        try:
            result = self.decode(logits.float())
        except Exception as exc:  # noqa: BLE001 - any failure is the user's hook
            raise UserError(
                f"decode() in {self.source} raised {type(exc).__name__}: {exc}; {DECODE_FIX}"
            ) from None
        self.check_probabilities(result, tuple(logits.shape))
        return result.float()

    def check_probabilities(self, result: Any, shape: tuple[int, ...]) -> None:
        """A UserError unless ``result`` is a float tensor of ``shape`` whose rows are
        probability distributions."""
        if not isinstance(result, torch.Tensor):
            problem = f"a {type(result).__name__}, not a torch.Tensor"
        elif tuple(result.shape) != shape:
            problem = f"shape {tuple(result.shape)} for logits of shape {shape}"
        elif not result.is_floating_point():
            problem = f"{result.dtype} values"
        else:
            values = result.detach().double()
            sums = values.sum(dim=1)
            if not torch.isfinite(values).all():
                problem = "NaN or infinite values"
            elif values.min() < -PROBABILITY_TOLERANCE:
                problem = f"negative values (down to {float(values.min()):.3g})"
            elif (sums - 1.0).abs().max() > PROBABILITY_TOLERANCE:
                shown = reprlib.repr([round(float(s), 4) for s in sums[:4]])
                problem = f"rows that do not sum to 1 (sums {shown})"
            else:
                return
        raise UserError(f"decode() in {self.source} returned {problem}; {DECODE_FIX}")

    def log_probabilities(
        self, logits: torch.Tensor, probabilities: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, K) float32 log class probabilities: ``log_softmax`` (exact for tiny
        probabilities) without a ``decode`` hook, else the log of its probabilities (a zero
        probability becomes the log of float32's smallest normal number, not -inf).
        ``probabilities``: this same ``logits``' ``probabilities``, if already computed."""
        if self.decode is None:
            return torch.log_softmax(logits.float(), dim=1)
        if probabilities is None:
            probabilities = self.probabilities(logits)
        return torch.log(probabilities.clamp_min(torch.finfo(torch.float32).tiny))
