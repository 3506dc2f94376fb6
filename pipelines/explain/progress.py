"""Progress for methods that run their passes through a library without a progress callback
(Captum): a hook counts the model's forward calls and reports each one, so the page's bar moves
and its cancel (``Cancelled``, raised by the callback) stops the method at the next forward call
instead of after all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from pipelines.explain.base import Progress


@contextlib.contextmanager
def reported_forwards(model: torch.nn.Module, report: Progress, total: int) -> Iterator[None]:
    """Within the block, every completed ``model(...)`` call reports ``(done, total)``; the block
    starts with ``report(0, total)`` so a cancel before the first pass costs none. ``total`` is
    the number of calls the method expects (each method derives it from its own batching; the
    tests check that the last report is ``(total, total)``). The hook is removed when the block
    ends, also when the callback raises.
    """
    done = 0

    def count(_module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        nonlocal done
        done += 1
        report(done, total)

    handle = model.register_forward_hook(count)
    try:
        report(0, total)
        yield
    finally:
        handle.remove()
