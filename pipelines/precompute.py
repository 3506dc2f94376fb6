"""The precompute: dataset x model -> a complete, resumable run.

This module only orchestrates: it checks the settings, takes the run's writer lock, asks the
store which stages are missing and runs those, in order (``pipelines.stages.STAGES``: model,
index, forward, embeddings, explanations, quality; each stage is its own module under
``pipelines/stages/``; the explanations of a ``--maps-first`` run are computed while the
workers make the t-SNE maps). A failure is recorded in the manifest; a finished run is only
read.

Killing the process at any point loses at most the chunk or layer in flight.

The forward chunks and the layers' maps are independent units (``pipelines/units.py``): they run
in this process and its worker processes, or, given a ``remote`` runner, on other machines
(``pipelines/precompute_celery.py``); the rest of the run is this process's either way.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol, TypeVar

from pipelines import report
from pipelines.datasets import Dataset, open_dataset
from pipelines.errors import UserError
from pipelines.explain import STORED_METHODS
from pipelines.fingerprint import (
    Fingerprint,
    change_since,
    changed_source_error,
    dataset_fingerprint,
)
from pipelines.layer_jobs import LayerRunner, LayerWorkers
from pipelines.models import ModelAdapter, rebuild_adapter, resolve_device
from pipelines.records import Manifest, RunFailure, RunSettings, StageState
from pipelines.run_config import PrecomputeConfig, run_id_for, stored_methods
from pipelines.stages import (
    STAGES,
    embeddings,
    explanations,
    follow_free_cores,
    forward,
    index,
    model,
    quality,
    use_threads_for,
)
from pipelines.stages.index import SamplePlan
from pipelines.store import RunStore, datasets_dir, runs_dir
from pipelines.training import TrainingCurves

__all__ = ["Precompute", "PrecomputeConfig", "usable"]

T = TypeVar("T")


class RemoteUnits(LayerRunner, forward.ChunkRunner, Protocol):
    """Runs a run's forward chunks and layer phases on other machines that share its data dir
    (``pipelines.precompute_celery.CeleryUnits``)."""


class Precompute:
    """Runs the stages of one run; construct, then call ``run()``."""

    def __init__(
        self,
        config: PrecomputeConfig,
        data_dir: Path,
        run_id: str | None,
        progress: bool = True,
        *,
        on_training_point: Callable[[TrainingCurves], None] | None = None,
        until: str | None = None,
        remote: RemoteUnits | None = None,
        maps_first: bool = False,
    ):
        """``on_training_point``: called with the curves at every point of a training in the
        run (after they are saved). ``until``: the last stage to run (``main.py train`` stops
        after "model"); None: every stage. A run left with stages pending is completed by a
        later precompute of the same settings. ``remote``: where the forward chunks and the
        layers' maps are computed; None: here. ``maps_first``: the stored explanations after
        the layers' PCA maps rather than in the forward pass, for a page that watches the run
        (``stages/explanations.py``; not with ``remote``, whose units compute them in their
        pass)."""
        self.config = config
        self.data_dir = Path(data_dir)
        self.run_id = run_id_for(config, run_id)
        self.store = RunStore(runs_dir(self.data_dir) / self.run_id)
        self.progress = progress
        self.on_training_point = on_training_point
        self.until = until
        self.remote = remote
        self.maps_first = maps_first and remote is None

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    def run(self) -> RunStore:
        """Compute what is missing. Everything the user can get wrong is checked before the
        run folder is made; a failure after that is recorded in the manifest; a finished run
        is only read, so re-running its command works on a read-only data dir."""
        self.config.check()
        if self.store.exists():
            self.check_same_settings()
        dataset = open_dataset(self.config.dataset, datasets_dir(self.data_dir), self.progress)
        content = dataset_fingerprint(dataset)
        if self.store.exists():
            self.check_same_source(content)
            if self.until is not None and not self.store.pending_stages(self.wanted_stages()):
                self.log(f"run '{self.run_id}' has its {self.until} stage done already")
                return self.store
            if self.finished():
                self.log(f"run '{self.run_id}' is already complete in {self.store.run_dir}")
                return self.store
        plan, warning = index.plan_samples(self.config, dataset)
        if warning:
            report.warn(warning)
        with self.store.writer_lock(), self.layer_runner() as workers:
            self.check_or_create_manifest(content)
            try:
                self.compute(dataset, content, plan, workers)
            except Exception as exc:
                self.record_failure(exc)
                raise
            return self.store

    def layer_runner(self) -> LayerRunner:
        """What reduces the layers: the remote runner, else worker processes on this machine."""
        if self.remote is not None:
            return self.remote
        device = self.config.device
        return LayerWorkers(embeddings.worker_processes(device), embeddings.blas_threads(device))

    def compute(
        self, dataset: Dataset, content: Fingerprint, plan: SamplePlan, workers: LayerRunner
    ) -> None:
        """The missing stages (up to ``until``), in order; each skips what of its own work is
        already on disk."""
        wanted = self.wanted_stages()
        missing = self.store.pending_stages(wanted)
        reduce_layers = "embeddings" in wanted and (
            "embeddings" in missing or embeddings.outdated(self.store)
        )
        adapter: ModelAdapter | None = None

        def run_model() -> ModelAdapter:
            """The model this process built, else the one an earlier run of the stage made."""
            nonlocal adapter
            if adapter is None:
                adapter = self.reopen_model()
            return adapter

        if "model" in missing or model.outdated(self.store):
            use_threads_for(self.config.model, self.config.device, "model")
            adapter = self.timed("model", lambda: self.model_stage(dataset, content))
        if wanted == ["model"]:
            self.clear_failure()
            return
        if "quality" in missing:
            # A wrong --quality-layer fails now, not after the forward pass and the maps.
            record = self.store.read_record()
            quality.quality_layer(
                record.layers, quality.layer_request(self.config, record.require_config())
            )
        use_threads_for(self.config.model, self.config.device, "forward")
        if reduce_layers:
            # Started now so their imports overlap the forward pass, not training (which
            # may use every core) or the first layer.
            workers.start()
        if "index" in missing or index.outdated(self.store):
            self.timed("index", lambda: index.run(self.store, self.config, dataset, plan))
        if "forward" in missing:
            forward.run(
                self.store,
                dataset,
                run_model(),
                self.config.batch_size,
                self.progress,
                self.remote,
                explanations=not self.maps_first,
            )

        def explanations_stage() -> None:
            if "explanations" in self.store.pending_stages(["explanations"]):
                explanations.run(
                    self.store, dataset, run_model, self.config.batch_size, self.progress
                )

        if reduce_layers:
            # Layers of a run computed before image placement need their features again.
            recapture = embeddings.layers_without_features(self.store)
            if recapture:
                forward.capture_features(
                    self.store,
                    dataset,
                    run_model(),
                    recapture,
                    self.config.batch_size,
                    self.progress,
                )
            # The explanations a --maps-first forward pass left out: in this process while the
            # workers make the t-SNE maps, which nobody waits for either.
            embeddings.run(
                self.store,
                workers,
                self.config.device,
                self.progress,
                meanwhile=explanations_stage,
            )
        explanations_stage()
        if "quality" in missing:
            quality.run(self.store, dataset, self.config, run_model, self.progress)
        self.clear_failure()

    def wanted_stages(self) -> list[str]:
        """The stages this precompute runs: all, or those up to ``until``."""
        if self.until is None:
            return list(STAGES)
        if self.until not in STAGES:
            raise ValueError(f"until must be one of {STAGES}, not {self.until!r}")
        return list(STAGES[: STAGES.index(self.until) + 1])

    def model_stage(self, dataset: Dataset, content: Fingerprint) -> ModelAdapter:
        try:
            adapter, model_info = model.build_model(
                self.config,
                dataset,
                self.data_dir,
                self.progress,
                content,
                self.training_point,
                follow_free_cores(self.config.model, self.config.device),
            )
        except BaseException:
            # Ctrl-C, a kill signal or an error mid-training: the curves no longer grow, and a
            # page polling them must not wait for ever (a re-run trains from the start).
            self.mark_training_ended()
            raise
        model.run(self.store, dataset, adapter, model_info)
        return adapter

    def training_point(self, curves: TrainingCurves) -> None:
        self.store.save_json("training_curves", curves.to_json())
        if curves.state == "training":
            # The manifest's change is what the page's poll notices: the About panel redraws
            # the curves, and `runs` says how far training got.
            done = len(curves.epoch_points())
            self.store.update_stage(
                "model", state="running", done=done, total=curves.settings.epochs
            )
        if self.on_training_point is not None:
            self.on_training_point(curves)

    def mark_training_ended(self) -> None:
        try:
            if self.store.has("training_curves"):
                curves = TrainingCurves.from_json(self.store.load_json("training_curves"))
                if curves.state == "training":
                    self.store.save_json(
                        "training_curves", replace(curves, state="cancelled").to_json()
                    )
        except (OSError, ValueError, TypeError):
            pass  # best effort: the original error is what the user must see

    def reopen_model(self) -> ModelAdapter:
        """The model a resumed run's earlier model stage described, rebuilt the way the
        dashboard rebuilds it (the smallcnn from the run's own checkpoint)."""
        return rebuild_adapter(
            self.store.read_record(),
            self.store.artifact_path("model_checkpoint"),
            resolve_device(self.config.device),
        )

    def timed(self, stage: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = work()
        self.store.update_stage(
            stage, state="done", seconds=round(time.perf_counter() - start, 3), done=1, total=1
        )
        return result

    # ---- the run's manifest: settings, source, failure ----------------------------------------

    def check_same_settings(self) -> None:
        """Refuse to resume a run made with other settings. ``--explain`` is checked on its own:
        left out, the run keeps its list; given, it must be the run's list (in any order), since
        adding methods to stored chunks would mean recomputing them all anyway."""
        settings = self.store.read_record().require_config()
        if settings.identity != self.config.identity():
            raise UserError(
                f"run '{self.run_id}' already exists with different settings; pass a new "
                "--run-id, or delete the run folder to start over"
            )
        quality.check_settings(self.store.read_manifest(), self.config)
        stored = stored_methods(settings)
        if self.config.explain is not None and set(self.config.explain) != set(stored):
            raise UserError(
                f"run '{self.run_id}' stores the explanations {','.join(stored)}, not "
                f"{','.join(self.config.explain)}; leave out --explain (or pass --explain "
                f"{','.join(stored)}) to resume it, or pass a new --run-id to store another set"
            )

    def check_same_source(self, content: Fingerprint) -> None:
        """Refuse to resume (or call complete) a run whose dataset changed since it began."""
        recorded = self.store.read_record().source_fingerprint
        recorded_files = (
            self.store.load_json("dataset_files") if self.store.has("dataset_files") else None
        )
        change = change_since(recorded, recorded_files, content)
        if change:
            raise changed_source_error(self.run_id, self.config.dataset, change)

    def finished(self) -> bool:
        return not self.store.pending_stages(STAGES) and not embeddings.outdated(self.store)

    def check_or_create_manifest(self, content: Fingerprint) -> None:
        if self.store.exists():
            # Again under the lock: another precompute may have changed the run meanwhile.
            self.check_same_settings()
            self.check_same_source(content)
            manifest = self.store.read_record()
            if manifest.source_fingerprint is None:  # a run begun before fingerprints
                self.record_source(content, manifest)
            self.clear_failure()
            self.log(f"resuming run '{self.run_id}' in {self.store.run_dir}")
            return
        settings = {
            **asdict(self.config),
            "explain": list(self.config.explain or STORED_METHODS),
            "identity": self.config.identity(),
        }
        created = Manifest(
            run_id=self.run_id,
            created=time.time(),
            # The settings as JSON: those no record types (samples, device, ...) are kept too.
            config=RunSettings.from_json(settings),
            stages={name: StageState() for name in STAGES},
            versions=library_versions(),
        )
        self.record_source(content, created)

    def record_source(self, content: Fingerprint, manifest: Manifest) -> None:
        """Store the dataset's file table (first: the manifest names it), then the manifest
        with the fingerprint."""
        if content.files is not None:
            self.store.save_json("dataset_files", content.files)
        self.store.write_record(replace(manifest, source_fingerprint=content.to_json()))

    def record_failure(self, exc: Exception) -> None:
        """Mark the run failed with its one-line error, so `runs` and the dashboard show why
        (a resume clears it). Best effort: the original error is what the user must see."""
        if isinstance(exc, UserError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            manifest = self.store.read_record()
            self.store.write_record(replace(manifest, failure=RunFailure(message, time.time())))
        except (OSError, UserError):
            pass

    def clear_failure(self) -> None:
        manifest = self.store.read_record()
        if manifest.failure is not None:
            self.store.write_record(replace(manifest, failure=None))


def usable(store: RunStore) -> bool:
    """The run can be explored: its model, sample index and forward pass are done and every
    layer has its PCA map (``embeddings.pca_maps_done``), although t-SNE maps and the quality
    stage may still be computing (the page shows what is missing and fills it in)."""
    record = store.read_record()
    if any(record.stage(name).state != "done" for name in ("model", "index", "forward")):
        return False
    return record.stage("embeddings").state == "done" or embeddings.pca_maps_done(store)


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for package in (
        "torch",
        "torchvision",
        "numpy",
        "openTSNE",
        "grad-cam",
        "scikit-learn",
        "dash",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
