"""Out-of-fold probabilities for the built-in CNN: what cleanlab needs for the samples the run's
model was trained on.

The run's model has seen its training samples, so its probabilities for them are in-sample: it
has learnt their labels, wrong ones included, and would call them right. Instead, k fold models,
each built and trained like it (``pipelines.smallcnn``: same architecture, initial weights,
optimiser, schedule and seed) on the training samples outside one fold, predict that fold.

They are trained ``FOLD_EPOCHS`` = 3 epochs against the run's model's 8, to keep the stage
within 10% of a digits precompute (issue 12). Measured with ``benchmarks/bench_quality.py`` on the
2-core VM (shared, load 2-6; ``benchmarks/README.md``), the stage's share of the rest of the
command and the precision@90 of 90 misfiled digits, end to end, by fold epochs: 8: 12.5%, 0.97;
5: 7.3-10.7%, 0.93; 4: 5.5-6.2%, 0.89; 3: 2.9-5.7%, 0.86. On an idle machine the share is
larger (5 folds on 2 cores leave one idle for the last fold), so 3 keeps a margin. The quality
record says how the fold models were trained wherever the probabilities are named.

Fold models train in parallel threads, each on one core: models trained at once equal the same
models trained one after another, bit for bit (each uses one intra-op thread and its own
generator), so a resumed run's folds match an uninterrupted run's. A second intra-op thread
per model instead changed the weights' last bits and, on a busy machine, spin-waited: 34 s
against 7 s for two folds.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.smallcnn import SmallCNN, TrainingResult, train_small_cnn
from pipelines.types import IntArray

DEFAULT_FOLDS = 5
FOLD_EPOCHS = 3
PREDICT_BATCH = 256


def assign_folds(labels: IntArray, k: int, seed: int) -> IntArray:
    """labels: (M,) int64 class of each training sample -> (M,) int64 fold in [0, k).

    Stratified: each class's samples, in a seeded random order, are dealt to the folds in turn
    (continuing where the previous class stopped), so every fold holds about 1/k of each class
    and the folds' sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        folds[members] = (dealt + np.arange(len(members))) % k
        dealt += len(members)
    return folds


@dataclass(frozen=True)
class FoldJob:
    """One fold model to train: ``module`` (fresh, seeded initial weights), the rows of the
    inputs it must not train on (``is_test``: (N,) bool, the fold and every held-out sample)
    and the rows it predicts (``predict``: (m,) int64)."""

    fold: int
    module: SmallCNN
    is_test: np.ndarray
    predict: IntArray


@dataclass(frozen=True)
class FoldResult:
    """A trained fold: its ``log_prob`` (m, K) float32 for the job's ``predict`` rows."""

    fold: int
    log_prob: np.ndarray
    training: TrainingResult
    seconds: float


def fit_fold(
    job: FoldJob,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    epochs: int,
    stop: threading.Event,
) -> FoldResult:
    started = time.perf_counter()
    job.module.to(memory_format=torch.channels_last)
    training = train_small_cnn(
        job.module, inputs, labels, job.is_test, seed, epochs=epochs, progress=False, stop=stop
    )
    rows = torch.as_tensor(job.predict, device=inputs.device)
    with torch.no_grad():
        log_prob = torch.cat(
            [
                torch.log_softmax(job.module(inputs[part]), dim=1)
                for part in rows.split(PREDICT_BATCH)
            ]
        )
    return FoldResult(job.fold, log_prob.cpu().numpy(), training, time.perf_counter() - started)


def train_folds(
    jobs: Sequence[FoldJob],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    epochs: int,
    workers: int,
    on_done: Callable[[FoldResult], None],
) -> None:
    """Train every job, ``workers`` at a time in threads of this process (one torch thread
    each), calling ``on_done`` in the calling thread as each fold finishes.

    inputs: (N, C, H, W) float32 model-ready; labels: (N,) int64. On an error or Ctrl-C the
    folds still training stop at their next batch, and this returns only once they have.
    """
    stop = threading.Event()
    # channels_last: one 3-epoch digits fold on one thread took 2.6 s against 3.8 s contiguous
    # (4 alternated runs each, 2-core VM), same accuracy: oneDNN's convolutions are written for it.
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="fold")
    try:
        futures = [pool.submit(fit_fold, job, inputs, labels, seed, epochs, stop) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            on_done(future.result())
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous_threads)
