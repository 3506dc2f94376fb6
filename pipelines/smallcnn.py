"""``smallcnn``: a small real CNN trained on the run's dataset the first time it is needed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipelines import optimizers

TRAINING_EPOCHS = 8  # the run's model's; the quality stage's fold models train fewer


class SmallCNN(nn.Module):
    """Three conv blocks and a two-layer classifier; legible per-layer maps at 32x32 input."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (input_size // 8) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_channels_last(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Turn ``module``'s conv weights to channels_last in place, and return ``inputs`` (N, C, H,
    W) so too, for training: oneDNN's pooling and convolutions are written for that layout (as
    in the forward stage). Measured on 2 cores, an epoch of the digits smallcnn 1.7x faster, its
    max pooling 7x; the same values up to rounding."""
    module.to(memory_format=torch.channels_last)
    return inputs.contiguous(memory_format=torch.channels_last) if inputs.dim() == 4 else inputs


class TrainingStopped(Exception):
    """Training was asked to stop (``train_small_cnn``'s ``stop``) before it finished."""


@dataclass(frozen=True)
class TrainingResult:
    epochs: int
    seconds: float
    train_samples: int
    test_samples: int
    test_accuracy: float


def train_small_cnn(
    model: SmallCNN,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    is_test: np.ndarray,
    seed: int,
    epochs: int = TRAINING_EPOCHS,
    batch_size: int = 128,
    progress: bool = True,
    stop: threading.Event | None = None,
    before_epoch: Callable[[], None] | None = None,
) -> TrainingResult:
    """Train in place with Adam; report accuracy on the held-out rows.

    inputs: (N, C, H, W) float32 model-ready; labels: (N,) int64; is_test: (N,) bool. ``stop``:
    when set (from another thread), training ends at the next batch with ``TrainingStopped``.
    ``before_epoch``: called in this thread before each epoch after the first (the run's model
    adapts its torch threads to the cores free then).
    Random only through its own generator (``seed``), so models trained in parallel threads come
    out as they would one after another.
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    inputs = to_channels_last(model, inputs)
    train_x, train_y = inputs[~is_test], labels[~is_test]
    test_x, test_y = inputs[is_test], labels[is_test]
    optimizer = optimizers.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=4e-3, total_steps=epochs * ((len(train_x) + batch_size - 1) // batch_size)
    )
    model.train()
    bar = tqdm(range(epochs), desc="train smallcnn", unit="epoch", disable=not progress)
    for epoch in bar:
        if before_epoch is not None and epoch > 0:
            before_epoch()
        order = torch.randperm(len(train_x), generator=generator)
        for start_row in range(0, len(order), batch_size):
            if stop is not None and stop.is_set():
                raise TrainingStopped
            rows = order[start_row : start_row + batch_size]
            loss = nn.functional.cross_entropy(model(train_x[rows]), train_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    accuracy = evaluate(model, test_x, test_y) if len(test_x) else float("nan")
    return TrainingResult(
        epochs=epochs,
        seconds=time.perf_counter() - start,
        train_samples=len(train_x),
        test_samples=len(test_x),
        test_accuracy=accuracy,
    )


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(1) for batch in inputs.split(256)])
    return float((predicted == labels).float().mean())
