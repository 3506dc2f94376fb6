"""pipelines/optimizers.py: torch's Adam and SGD, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines import optimizers

ROOT = Path(__file__).resolve().parent.parent


def trained(optimizer_class: Callable[..., torch.optim.Optimizer], **options: float) -> nn.Module:
    """A small conv net after 12 one-cycle steps of ``optimizer_class`` on seeded data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = optimizer_class(model.parameters(), **options)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=4 * options["lr"],
        total_steps=12,
        cycle_momentum=optimizer_class in (torch.optim.Adam, optimizers.Adam),
    )
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(32, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (32,), generator=generator)
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


@pytest.mark.parametrize(
    ("ours", "theirs", "options"),
    [
        (optimizers.Adam, torch.optim.Adam, {"lr": 2e-3}),
        (optimizers.Adam, torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-2}),
        (optimizers.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}),
    ],
)
def test_same_parameters_as_torch_optim_bit_for_bit(
    ours: Callable[..., torch.optim.Optimizer],
    theirs: Callable[..., torch.optim.Optimizer],
    options: dict[str, float],
) -> None:
    ours_model, theirs_model = trained(ours, **options), trained(theirs, **options)
    first = next(ours_model.parameters())
    assert not torch.equal(first, next(trained(theirs, **{**options, "lr": 0.5}).parameters()))
    for mine, reference in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
        assert torch.equal(mine, reference)


def test_training_the_smallcnn_never_imports_torch_dynamo() -> None:
    """The point of the module: a fresh interpreter trains the default model without the 1.4-2.2 s
    import (torch.optim's own classes import it in their constructor)."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import torch
        from pipelines.smallcnn import SmallCNN, train_small_cnn

        model = SmallCNN(1, 10)
        inputs = torch.randn(40, 1, 32, 32)
        labels = torch.arange(40) % 10
        result = train_small_cnn(
            model, inputs, labels, np.arange(40) % 4 == 0, seed=0, epochs=2, progress=False
        )
        assert result.epochs == 2, result
        print("torch._dynamo" in sys.modules)
        torch.optim.Adam(model.parameters())
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    # The second line shows the check can fail: torch's own Adam does import it.
    assert out.stdout.split() == ["False", "True"]
