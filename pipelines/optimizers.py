"""torch's own Adam and SGD, without the hooks that only ``torch.compile`` needs.

``torch.optim.Optimizer`` imports ``torch._dynamo`` the first time a parameter group is added,
and again on every step and every ``zero_grad``, only to mark those calls for ``torch.compile``,
which LayerScope never uses. That import costs 1.4-2.2 s of one core on the 2-core VM, all of it
on the path of ``python main.py`` to its first page (the default smallcnn is trained before
anything shows; the 15 s budget, PRODUCT.md). These subclasses call the very functions that
torch's classes wrap, so their updates are torch's, bit for bit (tests/test_optimizers.py trains
both side by side and checks both that, and that ``torch._dynamo`` stays unimported).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def unwrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """The function under torch's decorators (each keeps it as ``__wrapped__``)."""
    return inspect.unwrap(method)


class _WithoutCompileHooks(Optimizer):
    """The base class's group and gradient bookkeeping, undecorated."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        unwrapped(Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        unwrapped(Optimizer.zero_grad)(self, set_to_none)


class Adam(_WithoutCompileHooks, torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments, same state, same schedulers)."""

    @torch.no_grad()  # what torch's step decorator does besides marking it for torch.compile
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        return unwrapped(torch.optim.Adam.step)(self, closure)


class SGD(_WithoutCompileHooks, torch.optim.SGD):
    """``torch.optim.SGD`` (same arguments, same state, same schedulers)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        return unwrapped(torch.optim.SGD.step)(self, closure)
