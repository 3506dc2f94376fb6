"""A run's units: the pieces of its precompute that any machine sharing its data dir can do.

A unit is a phase and a key: ``("forward", "3")`` is the forward stage's chunk 3
(``stages.forward.compute_chunk``); ``("pca", "features.0")`` and ``("tsne", "features.0")`` are
the embeddings stage's two phases of a layer (``LayerJob.pca_phase`` / ``tsne_phase``). A unit is
done from what the run's store holds alone (its manifest, its model checkpoint, the dataset under
the data dir), writes atomically with its commit marker last (``unit_done``), and is skipped when
done: a unit done twice, or killed half way and done again, leaves the same files.

``run_unit`` is what a Celery worker runs (``pipelines/precompute_celery.py``); it does a unit
only while a precompute holds the run's writer lock, so a unit sent by a precompute that was
stopped since (Ctrl-C, kill) is dropped rather than written into a run nobody is completing.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import threadpoolctl

from pipelines.datasets import Dataset, open_dataset
from pipelines.errors import UserError
from pipelines.fingerprint import change_since, dataset_fingerprint
from pipelines.layer_jobs import LAYER_PHASES, pca_phase_done, tsne_phase_done
from pipelines.models import ModelAdapter, rebuild_adapter, resolve_device
from pipelines.stages import embeddings, forward, use_threads_for
from pipelines.store import RunStore, datasets_dir

Phase = Literal["forward", "pca", "tsne"]
PHASES: tuple[Phase, ...] = ("forward", *LAYER_PHASES)
# What ``run_unit`` did: the unit's work; nothing, as it was on disk already; nothing, as no
# precompute was running the run (the unit was sent by one stopped since).
Outcome = Literal["done", "already done", "orphaned"]
# --device and --batch-size of runs whose manifest predates recording them (the CLI's defaults)
DEFAULT_DEVICE = "auto"
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class UnitReport:
    """What ``run_unit`` did, and where: sent back to the precompute as JSON."""

    phase: Phase
    key: str
    outcome: Outcome
    seconds: float
    worker: str  # host:pid of the process that ran the unit

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "key": self.key,
            "outcome": self.outcome,
            "seconds": self.seconds,
            "worker": self.worker,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitReport:
        return cls(
            phase=check_phase(str(data["phase"])),
            key=str(data["key"]),
            outcome=data["outcome"],
            seconds=float(data["seconds"]),
            worker=str(data["worker"]),
        )


def check_phase(name: str) -> Phase:
    for phase in PHASES:
        if name == phase:
            return phase
    raise ValueError(f"unknown unit phase {name!r}; known: {', '.join(PHASES)}")


def unit_done(store: RunStore, phase: Phase, key: str) -> bool:
    """The unit's commit marker is on disk (for a chunk: or the forward stage has consolidated
    every chunk and dropped their files)."""
    if phase == "forward":
        return store.read_record().stage("forward").state == "done" or forward.chunk_done(
            store, int(key)
        )
    if phase == "pca":
        return pca_phase_done(store, key)
    return tsne_phase_done(store, key)


def run_unit(run_dir: Path, phase: Phase, key: str) -> UnitReport:
    """Do one unit of the run in ``run_dir``, unless it is done or no precompute runs the run."""
    started = time.perf_counter()
    store = RunStore(run_dir)
    if not store.is_being_written():
        outcome: Outcome = "orphaned"
    elif unit_done(store, phase, key):
        outcome = "already done"
    else:
        do_unit(store, phase, key)
        outcome = "done"
    seconds = round(time.perf_counter() - started, 3)
    return UnitReport(phase, key, outcome, seconds, f"{socket.gethostname()}:{os.getpid()}")


def do_unit(store: RunStore, phase: Phase, key: str) -> None:
    """The unit's work, with the run's ``--device`` resolved on this machine (``auto``: its
    GPU if it has one) and the run's ``--batch-size``."""
    record = store.read_record()
    settings = record.require_config()
    device = settings.device or DEFAULT_DEVICE
    if phase != "forward":
        with threadpoolctl.threadpool_limits(limits=embeddings.blas_threads(device)):
            embeddings.layer_job(store, device).phase(phase)(key)
        return
    dataset, adapter = forward_inputs(store.run_dir, record.created, device)
    use_threads_for(settings.model, device, "forward")
    work = forward.chunk_work(store)
    batch_size = settings.batch_size or DEFAULT_BATCH_SIZE
    output = forward.compute_chunk(dataset, adapter, work, int(key), batch_size)
    # Looked at again: a unit given to a second worker (its first worker seemed lost) may find
    # the chunks consolidated meanwhile, and its files would then outlive the stage.
    if not unit_done(store, phase, key):
        forward.save_chunk(store, int(key), output)


# One run's dataset and model, kept for its next chunk: a worker usually gets several in a row.
@functools.lru_cache(maxsize=1)
def forward_inputs(
    run_dir: Path, created: float | None, device: str
) -> tuple[Dataset, ModelAdapter]:
    """The run's dataset, checked to be the one it was computed from (this machine may see
    another copy of it), and its model on this machine's ``device``. ``created`` tells a run
    from another made since under the same id."""
    store = RunStore(run_dir)
    record = store.read_record()
    spec = record.require_dataset().spec
    dataset = open_dataset(spec, datasets_dir(run_dir.parent.parent), progress=False)
    recorded_files = store.load_json("dataset_files") if store.has("dataset_files") else None
    change = change_since(record.source_fingerprint, recorded_files, dataset_fingerprint(dataset))
    if change:
        raise UserError(
            f"the dataset on {socket.gethostname()} is not the one run '{record.run_id}' is "
            f"computed from ({spec}: {change}); every machine must see the same data dir and "
            "datasets, at the same paths"
        )
    checkpoint = store.artifact_path("model_checkpoint")
    adapter = rebuild_adapter(record, checkpoint, resolve_device(device))
    return dataset, adapter
