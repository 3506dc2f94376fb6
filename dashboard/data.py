"""Read-only access to the runs in a data dir, for callbacks and image routes.

Everything goes through ``pipelines.store.RunStore``; nothing here builds a path from user input.
A run id coming from the browser is only ever used after it matched one of the listed run
folders. Loaded artifacts are cached per run and dropped when the manifest changes (a precompute
still running adds artifacts as it goes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboard.caches import ByteLRU
from pipelines.annotations import CorrectionLog, SavedSelections, corrections_log, saved_selections
from pipelines.embed3d import Map3D, pca_3d, tsne_3d
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS
from pipelines.quality import SampleQuality, load_quality
from pipelines.records import LayerSpec, Manifest, StageState
from pipelines.sample_table import sample_frame, with_corrections
from pipelines.store import RunStore, datasets_dir, embedding_key, list_run_dirs

METHODS = ("tsne", "pca")
PRECOMPUTE_HINT = "python main.py precompute --dataset digits --model smallcnn"
# How stale the "dataset changed" check of a run may be (it lists and stats the folder's files).
SOURCE_CHECK_SECONDS = 5.0


class NotReady(UserError):
    """An artifact the precompute has not written (yet): shown in place as information."""


# 3-D t-SNE maps this process computed, by (run dir, manifest version, layer, subset,
# perplexity): the store's ``embedding3d`` artifact is the cache, this one stands in where the
# run cannot be written (a read-only data dir). 10k points x 3 float32 = 120 kB a map.
MAPS_3D = ByteLRU(64 * 1024 * 1024)


# What each precompute stage makes, for "Run 'x' is being built (now: the forward pass)".
STAGE_WORK = {
    "model": "the model",
    "index": "the sample index",
    "forward": "the forward pass",
    "embeddings": "the maps",
    "explanations": "the stored explanations",
    "quality": "label issues and near-duplicates",
}


def precompute_command(data_dir: Path) -> str:
    return f"{PRECOMPUTE_HINT} --data-dir {data_dir}"


@dataclass(frozen=True)
class RunSummary:
    """One entry of the run picker."""

    run_id: str
    label: str
    complete: bool
    readable: bool


@dataclass
class RunData:
    """One run's manifest plus lazily loaded, cached artifacts. Arrays are memory-mapped."""

    store: RunStore
    manifest: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---- identity and layers ----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.store.run_id

    @property
    def version(self) -> int:
        """Changes when the run is recomputed under the same id: part of every image URL, so a
        browser never shows a cached picture of an older run."""
        return int(self.record.created or 0)

    @cached_property
    def record(self) -> Manifest:
        """The manifest's typed fields (a run is reopened when its manifest changes on disk)."""
        return Manifest.from_json(self.manifest)

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """Empty until the model stage has described the model."""
        return self.record.layers

    @property
    def layer_ids(self) -> list[str]:
        return [layer.id for layer in self.layers]

    def layer(self, layer_id: str) -> LayerSpec:
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise UserError(
            f"layer '{layer_id}' is not in run '{self.run_id}'; pick one in the model view "
            "(`python main.py runs` lists them)"
        )

    def default_layer(self) -> str | None:
        """The layer the page shows first (``Manifest.first_layer``)."""
        return self.record.first_layer()

    @property
    def gradcam_layer(self) -> str | None:
        """The layer Grad-CAM explains at; None before the model stage, or for a model without
        a spatial conv layer."""
        return self.record.model.gradcam_layer if self.record.model else None

    # ---- stages -----------------------------------------------------------------------------

    @property
    def stages(self) -> Mapping[str, StageState]:
        return self.record.stages

    def stage(self, name: str) -> StageState:
        return self.record.stage(name)

    @property
    def complete(self) -> bool:
        stages = self.stages
        return bool(stages) and all(s.state == "done" for s in stages.values())

    def being_written(self) -> bool:
        return self.store.is_being_written()

    def stage_lines(self) -> list[tuple[str, str, str]]:
        """(stage, state, detail) per stage, e.g. ("embeddings", "running", "12 / 39, 41 s")."""
        lines = []
        for name, stage in self.stages.items():
            state = stage.state
            parts = []
            if stage.total not in (None, 1) or (state == "running" and stage.done is not None):
                total = "?" if stage.total is None else stage.total
                parts.append(f"{stage.done or 0} / {total}")
            if stage.seconds is not None:
                parts.append(f"{stage.seconds:.1f} s")
            lines.append((name, state, ", ".join(parts)))
        return lines

    @property
    def failure(self) -> str | None:
        """The error its last precompute ended with, until a resume clears it."""
        return self.record.failure.error if self.record.failure else None

    def contents_keys(self) -> dict[str, str]:
        """For each aspect of the run that panels draw (each a store of the page,
        ``ids.RUN_ASPECT_VERSIONS``), a text that changes whenever that aspect does: the states
        of the stages it comes from, a failure, and for the maps any write of the embeddings
        stage (each is a new map). Training epochs, the forward pass's chunks and the quality
        stage's folds change none: only progress.

        A page redraws only the panels of an aspect that changed: when the first map of a run
        being built lands, the map and the controls, not the architecture, the gallery or the
        workbench, which redrawn at that moment held the browser a second before it drew the
        map (measured with `python main.py` on 2 cores)."""
        embeddings = self.stage("embeddings")
        failure = f"failure:{self.failure}"

        def states(*names: str) -> str:
            return "|".join(f"{name}:{self.stage(name).state}" for name in names)

        return {
            "layers": f"{states('model', 'index')}|{failure}",
            # The explanations the inspector can show, not their stage: a run whose forward pass
            # stored them marks that stage done seconds after its first map, and that redrew
            # the inspector, the gallery and the workbench as the page opened.
            "samples": f"{states('index', 'forward', 'quality')}"
            f"|explanations:{','.join(self.explanation_methods())}|{failure}",
            "maps": f"{states('index', 'forward', 'embeddings', 'quality')}"
            f"|maps:{embeddings.done}:{embeddings.seconds}|{failure}",
        }

    def run_version(self) -> dict[str, Any]:
        """The page's run version (``ids.RUN_VERSION``): the run, its manifest's stamp, what it
        can show (``contents_keys``) and whether it is complete."""
        return {
            "run": self.run_id,
            "stamp": self.record.updated,
            "contents": self.contents_keys(),
            "complete": self.complete,
        }

    def building_note(self) -> str:
        """For a map the run does not have yet: what its precompute is doing now, e.g. "Run
        'x' is being built (now: the model, 3 / 8). ..." (its training epochs), or why nothing
        is (``not_ready_note``)."""
        if not self.being_written():
            return self.not_ready_note() or f"Run '{self.run_id}' has no such map."
        now = next(
            (
                f"{STAGE_WORK.get(name, name)}{', ' + detail if detail else ''}"
                for name, state, detail in self.stage_lines()
                if state != "done"
            ),
            "finishing",
        )
        return (
            f"Run '{self.run_id}' is being built (now: {now}). This map appears here as soon as "
            "the forward pass and the layer's PCA map are done."
        )

    def not_ready_note(self) -> str | None:
        """One sentence saying what is still missing, or None for a complete run."""
        if self.complete:
            return None
        if self.failure and not self.being_written():
            return (
                f"Run '{self.run_id}' failed: {self.failure}. Fix that and run the precompute "
                "command again to resume it, or delete the run folder."
            )
        pending = [
            f"{name} ({state}{', ' + detail if detail else ''})"
            for name, state, detail in self.stage_lines()
            if state != "done"
        ]
        ready = [name for name, state, _ in self.stage_lines() if state == "done"]
        writer = (
            "a precompute is writing it now"
            if self.being_written()
            else "no precompute is running: run the precompute command again to resume"
        )
        return (
            f"Run '{self.run_id}' is not complete ({writer}). Ready: {', '.join(ready) or 'nothing yet'}. "
            f"Not ready: {', '.join(pending)}."
        )

    # ---- sizes and options ------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return self.record.dataset.num_samples if self.record.dataset else 0

    @property
    def subsets(self) -> list[int]:
        return list(self.record.subsets)

    def perplexities(self, subset: int) -> list[float]:
        return list(self.record.perplexities_of(subset))

    def default_subset(self) -> int | None:
        """The largest subset: every sample, since nothing is capped silently."""
        return max(self.subsets) if self.subsets else None

    def default_perplexity(self, subset: int) -> float | None:
        values = self.perplexities(subset)
        if not values:
            return None
        return min(values, key=lambda p: abs(p - 30.0))

    @property
    def class_names(self) -> list[str]:
        return list(self.record.dataset.class_names) if self.record.dataset else []

    @property
    def model_class_names(self) -> list[str]:
        return list(self.record.model.class_names) if self.record.model else []

    @property
    def dataset_to_model(self) -> list[int]:
        return list(self.record.dataset_to_model)

    # ---- artifacts --------------------------------------------------------------------------

    def _cached(self, key: str, load: Any) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = load()
        with self._lock:
            self._cache[key] = value
        return value

    def samples(self) -> dict[str, list[Any]]:
        if not self.store.has("samples"):
            raise NotReady(f"the sample index of run '{self.run_id}' is not written yet")
        return self._cached("samples", lambda: self.store.load_json("samples"))

    def predictions(self) -> dict[str, np.ndarray] | None:
        """The predictions arrays, or None while the forward stage is still running."""
        if not self.store.has("predictions"):
            return None
        return self._cached("predictions", lambda: self.store.load_arrays("predictions"))

    def thumbnails(self) -> np.ndarray:
        """(N, T, T, 3) uint8, memory-mapped."""
        if not self.store.has("thumbnails"):
            raise NotReady(f"thumbnails of run '{self.run_id}' are not written yet")
        return self._cached("thumbnails", lambda: self.store.load_array("thumbnails"))

    def explanation(self, method: str) -> np.ndarray:
        """A method the precompute stored, for every sample's predicted class, memory-mapped:
        (N, S, S) float16 or (N, S, S, 3) uint8 as the method's ``display`` says."""
        if method not in EXPLAINERS:
            raise UserError(
                f"unknown explanation method '{method}'; use one of {', '.join(EXPLAINERS)}"
            )
        if not self.store.has("explanation", method=method):
            raise NotReady(f"{method} explanations of run '{self.run_id}' are not written yet")
        return self._cached(
            f"explanation/{method}", lambda: self.store.load_array("explanation", method=method)
        )

    def explanation_methods(self) -> list[str]:
        """The registered methods the precompute stored for this run, in registry order."""
        return [m for m in EXPLAINERS if self.store.has("explanation", method=m)]

    def embedding(
        self, layer_id: str, subset: int, method: str, perplexity: float | None
    ) -> np.ndarray:
        """(subset, 2) float32, row i = sample row i; NotReady with the stage's progress if the
        precompute has not reached it."""
        self._check_view(layer_id, subset, method, perplexity)
        key = embedding_key(layer_id, subset, method, None if method == "pca" else perplexity)
        if not self.store.has("embedding", **key):
            stage = self.stage("embeddings")
            if stage.state == "pending" and self.being_written():
                raise NotReady(self.building_note())
            progress = f"{stage.done or 0} of {stage.total or len(self.layers)} layers done"
            raise NotReady(
                f"the {method.upper() if method == 'pca' else 't-SNE'} embedding of layer {layer_id} "
                f"({subset} samples) is not computed yet (embeddings stage {stage.state}, "
                f"{progress})"
            )
        coords = self.store.load_array("embedding", **key)
        if coords.ndim != 2 or coords.shape != (subset, 2):
            raise UserError(
                f"the embedding file of layer {layer_id} has shape {coords.shape}, expected ({subset}, 2); "
                "delete the run and precompute it again"
            )
        return coords

    def map_identity(
        self, layer_id: str, subset: int, method: str, perplexity: float | None
    ) -> str:
        """What a drawn map of the layer shows, in a text that changes when the map does: its
        file's write time, and whether the predictions and label-issue scores its colourings
        read exist yet. A page redraws the map only when this changes, not on every write of
        the manifest (each layer's new maps, each training epoch)."""
        key = embedding_key(layer_id, subset, method, None if method == "pca" else perplexity)
        try:
            written: int | str = self.store.artifact_path("embedding", **key).stat().st_mtime_ns
        except OSError:
            written = "gone"  # deleted since it was read (a recompute): drawn again once back
        return (
            f"{method}|{perplexity}|{written}|{self.predictions() is not None}"
            f"|{self.quality() is not None}"
        )

    def _check_view(
        self, layer_id: str, subset: int, method: str, perplexity: float | None
    ) -> None:
        """A UserError that says what to pick unless the run has this (layer, subset, method,
        perplexity) view."""
        if method not in METHODS:
            raise UserError(f"unknown method '{method}'; use tsne or pca")
        if subset not in self.subsets:
            raise UserError(
                f"subset {subset} is not in run '{self.run_id}'; choose one of {self.subsets}"
            )
        if method == "tsne" and (
            perplexity is None or float(perplexity) not in self.perplexities(subset)
        ):
            raise UserError(
                f"perplexity {perplexity} was not computed for {subset} samples; choose one of "
                f"{', '.join(f'{p:g}' for p in self.perplexities(subset))}"
            )
        self.layer(layer_id)

    def pca_scores(self, layer_id: str, subset: int) -> np.ndarray:
        """(subset, k) float32: the layer's PCA scores (90% of the variance) of the subset's
        rows, memory-mapped; NotReady until the embeddings stage wrote them."""
        self.layer(layer_id)
        if not self.store.has("pca_scores", layer=layer_id):
            raise NotReady(f"the PCA scores of layer {layer_id} are not computed yet")
        return self.store.load_array("pca_scores", layer=layer_id)[:subset]

    def _map_3d_key(self, layer_id: str, subset: int, perplexity: float) -> tuple[Any, ...]:
        return (str(self.store.run_dir), self.version, layer_id, subset, float(perplexity))

    def embedding_3d(
        self, layer_id: str, subset: int, method: str, perplexity: float | None
    ) -> Map3D | None:
        """The 3-D map of a view: PCA at once (the first three PCA scores), t-SNE if it was
        computed before (stored, or in this process's memory), else None: ask
        ``compute_tsne_3d``, which takes seconds."""
        self._check_view(layer_id, subset, method, perplexity)
        scores = self.pca_scores(layer_id, subset)
        if method == "pca" or perplexity is None:
            return pca_3d(scores)
        cached = MAPS_3D.get(self._map_3d_key(layer_id, subset, perplexity))
        if cached is not None:
            return Map3D(cached, scores.shape[1])
        key = embedding_key(layer_id, subset, "tsne", perplexity)
        if not self.store.has("embedding3d", **key):
            return None
        coords = self.store.load_array("embedding3d", mmap=False, **key)
        if coords.shape != (subset, 3):
            return None  # another run's leftover: computed again, and replaced
        return Map3D(coords, scores.shape[1])

    def compute_tsne_3d(self, layer_id: str, subset: int, perplexity: float) -> Map3D:
        """Compute the view's 3-D t-SNE map (seconds) and keep it: in the store when the run is
        writable, always in this process's memory, so a read-only data dir still shows it."""
        self._check_view(layer_id, subset, "tsne", perplexity)
        scores = np.asarray(self.pca_scores(layer_id, subset), dtype=np.float32)
        config = self.record.config
        coords = tsne_3d(scores, float(perplexity), seed=config.seed if config else 0)
        MAPS_3D.put(self._map_3d_key(layer_id, subset, perplexity), coords)
        try:
            self.store.save_array(
                "embedding3d", coords, **embedding_key(layer_id, subset, "tsne", perplexity)
            )
        except OSError:
            pass  # read-only run: the memory copy above serves this process
        return Map3D(coords, scores.shape[1])

    # ---- the workbench: quality results, the sample frame, what the user added ---------------

    @property
    def data_dir(self) -> Path:
        return self.store.run_dir.parent.parent

    def quality(self) -> SampleQuality | None:
        """The quality stage's results, None until it has run (the run is reopened when the
        manifest changes, so a stage finishing while the page is open shows up)."""
        return self._cached("quality", lambda: load_quality(self.store))

    def corrections(self) -> CorrectionLog:
        """The user's label corrections, kept beside the run (never in it)."""
        return corrections_log(self.data_dir, self.run_id)

    def corrections_count(self) -> int:
        return self.corrections().count()

    def saved_selections(self) -> SavedSelections:
        return saved_selections(self.data_dir, self.run_id)

    def frame(self, duplicate_threshold: float) -> pd.DataFrame:
        """``pipelines.sample_table.sample_frame`` with the current corrections: the frame
        without them is cached per threshold, the corrections (a small log) are joined anew."""
        key = f"frame/{duplicate_threshold:.4f}"
        base = self._cached(
            key,
            lambda: sample_frame(
                self.store,
                self.data_dir,
                duplicate_threshold,
                corrections={},
                quality=self.quality(),
            ),
        )
        return with_corrections(base, self.corrections().current(), self.class_names)

    def source_change(self) -> str | None:
        """None while the run's dataset is as it was when computed, else a sentence saying
        what changed (see ``pipelines.fingerprint``); re-checked every SOURCE_CHECK_SECONDS."""
        from pipelines.fingerprint import change_on_disk

        now = time.monotonic()
        with self._lock:
            checked = self._cache.get("source_change")
        if checked is not None and now - checked[0] < SOURCE_CHECK_SECONDS:
            return checked[1]
        files = self._cached(
            "dataset_files",
            lambda: (
                self.store.load_json("dataset_files") if self.store.has("dataset_files") else None
            ),
        )
        change = change_on_disk(
            self.record.dataset.spec if self.record.dataset else "",
            datasets_dir(self.store.run_dir.parent.parent),
            self.record.source_fingerprint,
            files,
        )
        with self._lock:
            self._cache["source_change"] = (now, change)
        return change

    def source_change_note(self) -> str | None:
        change = self.source_change()
        if change is None:
            return None
        return (
            f"The dataset of run '{self.run_id}' changed since it was computed ({change}). The "
            "maps, thumbnails and predictions shown are those of the data as it was; on-demand "
            "work on changed samples is refused. Compute a fresh run with a new --run-id."
        )

    def check_row(self, row: int) -> int:
        if not 0 <= int(row) < self.num_samples:
            raise UserError(
                f"sample row {row} is outside run '{self.run_id}' (0..{self.num_samples - 1})"
            )
        return int(row)

    def check_class(self, label: int) -> int:
        """``label`` if it is one of the dataset's class indexes, else a UserError."""
        count = len(self.class_names)
        if not 0 <= int(label) < count:
            raise UserError(
                f"class {label} is not a class of run '{self.run_id}' (0..{count - 1}); "
                "pick one in the menu"
            )
        return int(label)


class RunCatalog:
    """The runs of one data dir. ``open`` is the only way from a run id to its files."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._runs: dict[str, tuple[int, RunData]] = {}
        self._lock = threading.Lock()

    def run_ids(self) -> list[str]:
        return [path.name for path in list_run_dirs(self.data_dir)]

    def warm(self) -> None:
        """Read each run's per-sample tables (samples, predictions, quality) now. The server
        calls this in its master before forking, so every worker starts with them: otherwise
        each worker's first request for a run read them (0.1 s at 60,000 samples), and a layer
        switch that reached the other worker paid it. A run that cannot be read is left for
        the page to report when the user opens it."""
        for run_id in self.run_ids():
            try:
                run = self.open(run_id)
                run.samples()
                run.predictions()
                run.quality()
            except (UserError, OSError, ValueError):
                continue

    def open(self, run_id: str | None) -> RunData:
        """The run named ``run_id`` if it is one of this data dir's runs (else a UserError that
        says what to do). Reloaded when its manifest changed on disk."""
        if not run_id:
            raise UserError(
                self.empty_message()
                if not self.run_ids()
                else "no run is selected; pick one in the run menu"
            )
        by_name = {path.name: path for path in list_run_dirs(self.data_dir)}
        if run_id not in by_name:
            raise UserError(
                f"run '{run_id}' is not in {self.data_dir} (deleted or never computed); pick another "
                f"run in the menu, or compute it with `{precompute_command(self.data_dir)}`"
            )
        store = RunStore(by_name[run_id])
        try:
            stamp = store.manifest_path.stat().st_mtime_ns
        except FileNotFoundError:
            raise UserError(
                f"run '{run_id}' was just deleted; pick another run in the menu"
            ) from None
        with self._lock:
            cached = self._runs.get(run_id)
            if cached and cached[0] == stamp:
                return cached[1]
        run = RunData(store=store, manifest=store.read_manifest())
        with self._lock:
            self._runs[run_id] = (stamp, run)
        return run

    def empty_message(self) -> str:
        return (
            f"No runs in {self.data_dir.resolve()}. Compute one with `{precompute_command(self.data_dir)}` "
            "(about a minute on a laptop), or start `python main.py` with no arguments to build the "
            "embedded default; then reload this page."
        )

    def summaries(self) -> list[RunSummary]:
        """Picker entries: "digits-smallcnn — digits × smallcnn, 1,797 samples, held-out acc 98.6%"."""
        entries = []
        for run_id in self.run_ids():
            try:
                run = self.open(run_id)
            except UserError as exc:
                entries.append(RunSummary(run_id, f"{run_id} — unreadable: {exc}", False, False))
                continue
            label = run_label(run)
            if run.failure and not run.being_written():
                label += f" — FAILED: {run.failure}"
            if run.source_change():
                label += " — DATASET CHANGED since computed"
            entries.append(RunSummary(run_id, label, run.complete, True))
        return entries


def run_label(run: RunData) -> str:
    config = run.record.config
    accuracy = run.record.accuracy
    parts = [
        f"{config.dataset} × {config.model}" if config else "? × ?",
        f"{run.num_samples:,} samples",
    ]
    if accuracy is not None:
        # Runs made before held-out accuracy have no split: theirs is over every row, the
        # model's training rows included, and says so.
        held_out = run.record.accuracy_by_split is not None
        text = f"acc {100 * float(accuracy):.1f}%"
        parts.append(
            f"held-out {text}" if held_out else f"{text} (all rows; recompute for held-out)"
        )
    if not run.complete:
        parts.append("precompute not finished")
    return f"{run.run_id} — {', '.join(parts)}"


def format_time(epoch: float | None) -> str:
    if not epoch:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(epoch)))
