"""Training a model on a run's dataset: the settings, the loop, and the curves it records.

``train_model`` is the one training loop for models a run trains (presets, ``smallcnn`` with
training settings, torchvision models being fine-tuned). It reports a ``TrainingCurves`` record
to ``on_point`` after every point (each epoch's end, and every ``eval_every`` steps inside long
epochs), so a caller can persist it and a page polling the file sees the curves grow.

The embedded default (``smallcnn`` without training settings) keeps its own loop,
``pipelines.smallcnn.train_small_cnn``, and its checkpoint shared across runs; its recipe is
``default_settings(..., "smallcnn")`` here: Adam at 2e-3 under a one-cycle schedule peaking at
twice that, batch 128, 8 epochs, which ``train_model`` reproduces weight for weight (tested).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipelines import optimizers
from pipelines.errors import UserError
from pipelines.smallcnn import TRAINING_EPOCHS, TrainingStopped, to_channels_last

Optimizer = Literal["adam", "sgd"]
FineTune = Literal["classifier", "all"]
CurvesState = Literal["training", "done", "stopped early", "cancelled"]
OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "sgd")
FINE_TUNE: tuple[FineTune, ...] = ("classifier", "all")
SGD_MOMENTUM = 0.9
# The one-cycle schedule peaks at this multiple of ``lr`` (smallcnn's recipe: 2e-3 -> 4e-3).
PEAK_LR_FACTOR = 2.0
# An epoch of at least this many steps gets points inside it (default ``eval_every``) ...
LONG_EPOCH_STEPS = 50
# ... about this many per epoch.
POINTS_PER_LONG_EPOCH = 5
# Datasets whose images mean the same mirrored; digits and clothes (a "2", a left shoe) do not.
FLIPPABLE_DATASETS = ("cifar10", "imagenette", "imagewoof")
EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainingSettings:
    """How a run trains its model. Part of the run's identity when given (see
    ``PrecomputeConfig``). ``fine_tune`` applies to torchvision models only: "classifier"
    trains the new last layer alone, "all" every layer. ``early_stopping``: patience in epochs
    without a lower held-out loss; the best epoch's weights are restored. ``eval_every``: steps
    between points inside an epoch (None: about ``POINTS_PER_LONG_EPOCH`` per epoch of at least
    ``LONG_EPOCH_STEPS`` steps, else one point per epoch)."""

    epochs: int = TRAINING_EPOCHS
    batch_size: int = 128
    optimizer: Optimizer = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    augment: bool = False
    seed: int = 0
    early_stopping: int | None = None
    fine_tune: FineTune | None = None
    eval_every: int | None = None

    def check(self) -> None:
        """Settings that make no sense, refused with the flag to fix."""
        if self.epochs <= 0:
            raise UserError(f"--epochs {self.epochs} is not a number of epochs; pass 1 or more")
        if self.batch_size <= 0:
            raise UserError(
                f"--train-batch-size {self.batch_size} is not a batch size; pass 1 or more"
            )
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown --optimizer {self.optimizer!r}; use adam or sgd")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr {self.lr:g} is not a learning rate; pass a number above 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"--weight-decay {self.weight_decay:g} must be 0 or more")
        if self.early_stopping is not None and self.early_stopping <= 0:
            raise UserError(
                f"--early-stopping {self.early_stopping} is not a patience; pass a number of "
                "epochs (1 or more), or leave it out to train every epoch"
            )
        if self.fine_tune is not None and self.fine_tune not in FINE_TUNE:
            raise UserError(f"unknown --fine-tune {self.fine_tune!r}; use classifier or all")
        if self.eval_every is not None and self.eval_every <= 0:
            raise UserError(f"eval_every {self.eval_every} must be 1 or more steps")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingSettings:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def default_settings(dataset: str, model_kind: str, seed: int = 0) -> TrainingSettings:
    """Sensible settings for a model kind ("smallcnn", "preset", "torchvision") on a dataset
    (its name: "digits", "cifar10", a folder's "folder"...). smallcnn's are its recipe; presets
    train longer on data big enough to need it; a pretrained torchvision model fine-tunes its
    new classifier briefly, at a rate that does not wreck pretrained weights."""
    small = dataset in ("digits",)
    if model_kind == "torchvision":
        return TrainingSettings(epochs=3, batch_size=32, lr=1e-3, seed=seed, fine_tune="classifier")
    if model_kind == "preset":
        return TrainingSettings(
            epochs=8,
            batch_size=64 if small else 128,
            lr=2e-3,
            weight_decay=0.0 if small else 5e-4,
            augment=not small,
            seed=seed,
        )
    return TrainingSettings(seed=seed)


def flips_for(dataset: str) -> bool:
    """Whether augmentation may mirror this dataset's images (photos yes, digits no)."""
    return dataset in FLIPPABLE_DATASETS


# ---- the curves -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPoint:
    """One point of the curves. ``epoch`` is fractional inside an epoch (1.4: 40% into the
    second); ``train_*`` average the steps since the previous point (train mode, augmented);
    ``held_out_*`` are over every held-out row in eval mode (None without held-out rows)."""

    epoch: float
    step: int
    train_loss: float
    train_accuracy: float
    held_out_loss: float | None
    held_out_accuracy: float | None
    seconds: float  # since training began

    @property
    def epoch_end(self) -> bool:
        return float(self.epoch).is_integer()


@dataclass(frozen=True)
class TrainingCurves:
    """The ``training_curves`` artifact: every point so far, the state of the training and the
    settings it ran with. ``best_epoch``: the epoch with the lowest held-out loss so far (the
    weights kept under early stopping)."""

    settings: TrainingSettings
    points: tuple[TrainingPoint, ...] = ()
    state: CurvesState = "training"
    best_epoch: int | None = None
    train_samples: int = 0
    held_out_samples: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def epoch_points(self) -> tuple[TrainingPoint, ...]:
        """The points at the end of each epoch (the CLI's table, the summary)."""
        return tuple(point for point in self.points if point.epoch_end)

    def best_held_out_accuracy(self) -> float | None:
        values = [p.held_out_accuracy for p in self.points if p.held_out_accuracy is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "best_epoch": self.best_epoch,
            "train_samples": self.train_samples,
            "held_out_samples": self.held_out_samples,
            "settings": self.settings.to_json(),
            "points": [asdict(point) for point in self.points],
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingCurves:
        best = data.get("best_epoch")
        return cls(
            settings=TrainingSettings.from_json(data.get("settings") or {}),
            points=tuple(TrainingPoint(**point) for point in data.get("points") or ()),
            state=data.get("state", "training"),
            best_epoch=None if best is None else int(best),
            train_samples=int(data.get("train_samples") or 0),
            held_out_samples=int(data.get("held_out_samples") or 0),
            extra=dict(data.get("extra") or {}),
        )


# ---- the loop -------------------------------------------------------------------------------


def points_every(settings: TrainingSettings, steps_per_epoch: int) -> int | None:
    """Steps between points inside an epoch, or None for one point per epoch."""
    if settings.eval_every is not None:
        return settings.eval_every if settings.eval_every < steps_per_epoch else None
    if steps_per_epoch < LONG_EPOCH_STEPS:
        return None
    return math.ceil(steps_per_epoch / POINTS_PER_LONG_EPOCH)


def make_optimizer(
    params: list[nn.Parameter], settings: TrainingSettings, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its one-cycle schedule (warm-up, then annealing to near zero): fast
    and forgiving of the learning rate, which is why smallcnn uses it. SGD keeps its momentum
    at 0.9 (one-cycle would otherwise cycle it); Adam's beta1 cycles as in smallcnn's recipe."""
    optimizer: torch.optim.Optimizer
    if settings.optimizer == "sgd":
        optimizer = optimizers.SGD(
            params, lr=settings.lr, momentum=SGD_MOMENTUM, weight_decay=settings.weight_decay
        )
    else:
        optimizer = optimizers.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr * PEAK_LR_FACTOR,
        total_steps=max(1, total_steps),
        cycle_momentum=settings.optimizer == "adam",
    )
    return optimizer, schedule


def augment_batch(batch: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """batch: (B, C, S, S) model-ready -> the same, each image shifted by up to 1/8 of its side
    in x and y (edges repeated) and, if ``flip``, mirrored left-right with probability 1/2.
    Random only through ``generator`` (CPU), so a seeded training repeats exactly."""
    n, side = batch.shape[0], batch.shape[-1]
    shift = torch.randint(-(side // 8), side // 8 + 1, (n, 2), generator=generator).float()
    scale = torch.ones(n)
    if flip:
        scale = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift * 2 / side  # affine_grid's coordinates span -1..1
    theta = theta.to(batch.device, batch.dtype)
    grid = nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    return nn.functional.grid_sample(
        batch, grid, mode="nearest", padding_mode="border", align_corners=False
    )


def held_out_metrics(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> tuple[float | None, float | None]:
    """Mean cross-entropy and accuracy over ``inputs`` in eval mode; (None, None) if empty."""
    if not len(inputs):
        return None, None
    was_training = module.training
    module.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for batch, truth in zip(inputs.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
            logits = module(batch)
            loss_sum += float(nn.functional.cross_entropy(logits, truth, reduction="sum"))
            correct += int((logits.argmax(1) == truth).sum())
    module.train(was_training)
    return loss_sum / len(inputs), correct / len(inputs)


def freeze_statistics(module: nn.Module) -> None:
    """Keep frozen batch-norm layers in eval mode: training only the classifier must not move
    the backbone's running statistics (they would no longer match its frozen weights)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in sub.parameters()
        ):
            sub.eval()


def train_model(
    module: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    is_test: np.ndarray,
    settings: TrainingSettings,
    on_point: Callable[[TrainingCurves], None] | None = None,
    stop: threading.Event | None = None,
    *,
    flip: bool = False,
) -> TrainingCurves:
    """Train ``module`` in place on the rows not in ``is_test``; return the final curves.

    inputs: (N, C, H, W) float32 model-ready, on the module's device; labels: (N,) int64;
    is_test: (N,) bool, the held-out rows (evaluated at every point, never trained on). Only
    parameters with ``requires_grad`` train. ``on_point(curves)`` after every point, and once
    more with the final state. ``stop`` (set from another thread): ends at the next batch with
    the state "cancelled", reported to ``on_point``, then ``TrainingStopped``. ``flip``: let
    augmentation mirror images (``flips_for``). Random only through its own generator and the
    torch seed ``settings.seed`` for what the module draws itself (dropout).
    """
    settings.check()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    inputs = to_channels_last(module, inputs)
    is_test_t = torch.as_tensor(is_test, device=inputs.device)
    train_x, train_y = inputs[~is_test_t], labels[~is_test_t]
    test_x, test_y = inputs[is_test_t], labels[is_test_t]
    steps_per_epoch = max(1, math.ceil(len(train_x) / settings.batch_size))
    every = points_every(settings, steps_per_epoch)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer, schedule = make_optimizer(params, settings, settings.epochs * steps_per_epoch)
    curves = TrainingCurves(
        settings=settings, train_samples=len(train_x), held_out_samples=len(test_x)
    )
    best_loss, best_state, stale = math.inf, None, 0
    step = 0

    def report() -> None:
        if on_point is not None:
            on_point(curves)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        module.train()
        freeze_statistics(module)
        for epoch in range(settings.epochs):
            order = torch.randperm(len(train_x), generator=generator)
            loss_sum = torch.zeros((), device=inputs.device)
            correct = torch.zeros((), device=inputs.device, dtype=torch.long)
            seen = 0
            for batch_index, start_row in enumerate(range(0, len(order), settings.batch_size)):
                if stop is not None and stop.is_set():
                    curves = replace(curves, state="cancelled")
                    report()
                    module.eval()
                    raise TrainingStopped
                rows = order[start_row : start_row + settings.batch_size].to(inputs.device)
                batch = train_x[rows]
                if settings.augment:
                    batch = augment_batch(batch, generator, flip)
                logits = module(batch)
                loss = nn.functional.cross_entropy(logits, train_y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                # Summed on the device: no synchronisation per step on a GPU.
                loss_sum += loss.detach() * len(rows)
                correct += (logits.detach().argmax(1) == train_y[rows]).sum()
                seen += len(rows)
                last = batch_index + 1 == steps_per_epoch
                if not last and not (every and (batch_index + 1) % every == 0):
                    continue
                held_loss, held_accuracy = held_out_metrics(module, test_x, test_y)
                point = TrainingPoint(
                    epoch=round(epoch + (batch_index + 1) / steps_per_epoch, 4)
                    if not last
                    # an epoch's end is exactly its number (TrainingPoint.epoch_end)
                    else float(epoch + 1),
                    step=step,
                    train_loss=float(loss_sum) / seen,
                    train_accuracy=float(correct) / seen,
                    held_out_loss=held_loss,
                    held_out_accuracy=held_accuracy,
                    seconds=round(time.perf_counter() - start, 3),
                )
                loss_sum.zero_()
                correct.zero_()
                seen = 0
                best_epoch = curves.best_epoch
                # Patience counts epochs that had a held-out loss to compare (none without
                # held-out rows: then every epoch trains).
                stale += 1 if last and held_loss is not None else 0
                if last and held_loss is not None and held_loss < best_loss:
                    best_loss, best_epoch, stale = held_loss, epoch + 1, 0
                    if settings.early_stopping is not None:
                        best_state = copy.deepcopy(module.state_dict())
                curves = replace(curves, points=(*curves.points, point), best_epoch=best_epoch)
                report()
            if settings.early_stopping is not None and stale >= settings.early_stopping:
                break
    module.eval()
    if best_state is not None:
        module.load_state_dict(best_state)  # the best epoch's weights, not the last's
    final: CurvesState = "done"
    if settings.early_stopping is not None and stale >= settings.early_stopping:
        final = "stopped early" if epoch + 1 < settings.epochs else "done"
    curves = replace(curves, state=final)
    report()
    return curves


def epoch_table_header() -> str:
    return f"{'epoch':>5}  {'train loss':>10}  {'train acc':>9}  {'held-out loss':>13}  {'held-out acc':>12}  {'seconds':>7}"


def epoch_table_row(point: TrainingPoint) -> str:
    """One row of the CLI's per-epoch table."""

    def value(number: float | None, percent: bool = False) -> str:
        if number is None:
            return "-"
        return f"{100 * number:.1f}%" if percent else f"{number:.4f}"

    return (
        f"{int(point.epoch):>5}  {value(point.train_loss):>10}  "
        f"{value(point.train_accuracy, True):>9}  {value(point.held_out_loss):>13}  "
        f"{value(point.held_out_accuracy, True):>12}  {point.seconds:>7.1f}"
    )


def summary_text(curves: TrainingCurves) -> str:
    """`runs`' training line: "8 epochs (done), best held-out 98.1% at epoch 7"."""
    epochs = len(curves.epoch_points())
    best = curves.best_held_out_accuracy()
    text = f"{epochs} of {curves.settings.epochs} epochs ({curves.state})"
    if best is not None:
        text += f", best held-out accuracy {best:.1%}"
    if curves.best_epoch is not None:
        text += f" (lowest held-out loss at epoch {curves.best_epoch})"
    return text


def training_flags(settings: TrainingSettings, defaults: TrainingSettings) -> list[str]:
    """The command-line flags that name ``settings`` (those differing from ``defaults``; always
    at least one, so the command trains), for the resume command a run prints."""
    flags = []
    for option, key in (
        ("--epochs", "epochs"),
        ("--train-batch-size", "batch_size"),
        ("--optimizer", "optimizer"),
        ("--lr", "lr"),
        ("--weight-decay", "weight_decay"),
        ("--early-stopping", "early_stopping"),
        ("--fine-tune", "fine_tune"),
    ):
        value = getattr(settings, key)
        if value is not None and value != getattr(defaults, key):
            flags.append(f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}")
    if settings.augment != defaults.augment:
        flags.append("--augment" if settings.augment else "--no-augment")
    return flags or [f"--epochs {settings.epochs}"]
