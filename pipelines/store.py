"""The one module that knows the on-disk format of a run.

A run lives in ``<data-dir>/runs/<run-id>/``: a ``manifest.json`` plus artifacts addressed by
``(kind, parameters)``. Callers never build paths themselves; they ask ``artifact_path`` (or the
save/load helpers built on it), and artifact parameters are built by the key functions here
(``embedding_key``, ``perplexity_key``), so the precompute and the dashboard cannot disagree on a
key. Every write is atomic (``pipelines.io``), so a killed process leaves either the old file or
the new one, never half of one. The manifest's typed records (``LayerSpec``, ``Manifest``) live in
``pipelines.records`` and convert to and from exactly the JSON written here: read with
``read_record``, change with ``dataclasses.replace``, write with ``write_record``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import UserError
from pipelines.io import (
    LockBusy,
    atomic_path,
    atomic_write_bytes,
    exclusive_lock,
    is_locked,
    remove_temp_files,
)
from pipelines.records import Manifest, StageState

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"

# kind -> (file format, parameter names in path order). The whole on-disk vocabulary.
ARTIFACT_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "samples": ("json", ()),  # sample index, column-oriented
    "thumbnails": ("npy", ()),  # (N, T, T, 3) uint8
    "predictions": ("npz", ()),  # top10_index, top10_prob, predicted, loss, correct
    # (N, C) float32: the model's probability of each dataset class, NaN for a class no output
    # maps to (pipelines.labels.class_probabilities)
    "class_probabilities": ("npy", ()),
    "explanation": ("npy", ("method",)),  # gradcam (N,S,S) f16; guided_* (N,S,S,3) u8
    "forward_chunk": ("npz", ("chunk",)),  # one chunk's per-sample outputs, until consolidated
    # one chunk's explanations, method -> array, when computed after the maps (until consolidated)
    "explanation_chunk": ("npz", ("chunk",)),
    "features": ("npy", ("layer", "chunk")),  # (n_chunk, D) float32, pooled activations
    "reduction": ("json", ("layer",)),  # pooled shape, PCA kept dims and variance
    # The same, written with the layer's PCA maps, before its t-SNE maps (``reduction`` last)
    "pca_info": ("json", ("layer",)),
    # A layer's PCA basis, to place new images in its maps: mean (D,), components (k, D) float32
    "projection": ("npz", ("layer",)),
    "pca_scores": ("npy", ("layer",)),  # (N, k) float32, the samples' PCA scores, by row
    "embedding": ("npy", ("layer", "subset", "method", "perplexity")),  # (n, 2) float32
    # (n, 3) float32: a 3-D t-SNE map the dashboard computed on demand (pipelines/embed3d.py)
    "embedding3d": ("npy", ("layer", "subset", "method", "perplexity")),
    "model_checkpoint": ("pt", ()),
    # A run's training (pipelines.training.TrainingCurves as JSON): rewritten at every point
    # while the model stage trains, so a page polling it sees the curves grow.
    "training_curves": ("json", ()),
    # source file -> [size, mtime_ns] of every file of a file dataset when the run was computed
    "dataset_files": ("json", ()),
    # The quality stage (pipelines/quality.py, pipelines/stages/quality.py). While it runs: one
    # fold's out-of-fold probabilities (rows (m,) int64, probabilities (m, C) float32) per fold
    # model trained ``epochs`` epochs, ``folds`` in all; dropped once the stage is done.
    "quality_fold": ("npz", ("folds", "epochs", "fold")),
    # (N, C) float32: the out-of-sample probabilities cleanlab ranked, in dataset classes.
    "quality_probabilities": ("npy", ()),
    # Per-sample label issues, neighbours, outliers, and how they were made (written last: its
    # presence marks the stage's output complete).
    "quality": ("npz", ()),
    "quality_info": ("json", ()),
}

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")
# A run folder's name (``run_config.RUN_ID_PATTERN``, repeated here so reading a run never
# imports the precompute's settings, and torch with them); never "." or "..".
RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def runs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "runs"


def datasets_dir(data_dir: Path) -> Path:
    """Downloaded datasets, shared by every run of the data dir."""
    return Path(data_dir) / "datasets"


def models_dir(data_dir: Path) -> Path:
    """Trained smallcnn checkpoints, shared by every run on the same dataset."""
    return Path(data_dir) / "models"


def uploaded_datasets_dir(data_dir: Path) -> Path:
    """Datasets made from uploaded zips (``pipelines.archives``): one folder each, named by
    content, opened as ``folder:PATH``."""
    return datasets_dir(data_dir) / "uploads"


def uploaded_models_dir(data_dir: Path) -> Path:
    """TorchScript files users uploaded (``pipelines.model_uploads``), named by content."""
    return models_dir(data_dir) / "uploads"


def annotations_dir(data_dir: Path, run_id: str) -> Path:
    """What users add to a run (label corrections, saved selections), kept beside it in
    ``<data-dir>/annotations/<run-id>/``: never inside the run folder, so a run's artifacts (and
    the dataset) stay exactly as the precompute wrote them."""
    if not RUN_ID.fullmatch(run_id):
        raise UserError(f"{run_id!r} is not a run id; run `python main.py runs` to list runs")
    return Path(data_dir) / "annotations" / run_id


def runs_hint(data_dir: Path) -> str:
    """The command that lists the runs (and their layers) in ``data_dir``."""
    option = "" if Path(data_dir) == Path("data") else f" --data-dir {data_dir}"
    return f"`python main.py runs{option}`"


def find_run(data_dir: Path, run_id: str) -> RunStore:
    """The run named ``run_id`` in ``data_dir`` (one with a manifest), else a UserError naming
    close matches and the command that lists the runs."""
    if RUN_ID.fullmatch(run_id):
        store = RunStore(runs_dir(data_dir) / run_id)
        if store.exists():
            return store
    known = [path.name for path in list_run_dirs(data_dir)]
    close = difflib.get_close_matches(run_id, known, n=3)
    maybe = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(
        f"unknown run '{run_id}' in {data_dir}{maybe}; list the runs with {runs_hint(data_dir)}"
    )


def list_run_dirs(data_dir: Path) -> list[Path]:
    """Run folders (those with a manifest) under ``data_dir``, sorted by name."""
    root = runs_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def _format_value(value: Any) -> str:
    text = str(value)
    if not _SAFE_VALUE.match(text):
        raise ValueError(f"artifact parameter {text!r} has characters unsafe in a file name")
    return text


def perplexity_key(perplexity: float | None) -> str:
    """The one spelling of a perplexity in keys, file names and dashboard values: 30.0 -> "30",
    7.5 -> "7.5", None (no t-SNE, e.g. PCA) -> "none"."""
    return "none" if perplexity is None else f"{float(perplexity):g}"


def embedding_key(
    layer_id: str, size: int, method: str, perplexity: float | None
) -> dict[str, Any]:
    """Artifact parameters of one embedding (``kind="embedding"``)."""
    return {
        "layer": layer_id,
        "subset": int(size),
        "method": method,
        "perplexity": perplexity_key(perplexity),
    }


class RunStore:
    """Read and write one run's manifest and artifacts."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    # ---- addressing -------------------------------------------------------------------------

    def artifact_path(self, kind: str, **params: Any) -> Path:
        """The file for ``kind`` with ``params``; the only place paths are built."""
        if kind not in ARTIFACT_KINDS:
            raise KeyError(f"unknown artifact kind {kind!r}; known: {sorted(ARTIFACT_KINDS)}")
        fmt, names = ARTIFACT_KINDS[kind]
        if set(params) != set(names):
            raise TypeError(f"artifact {kind!r} takes parameters {names}, got {tuple(params)}")
        if not names:
            return self.run_dir / f"{kind}.{fmt}"
        parts = [f"{name}={_format_value(params[name])}" for name in names]
        return self.run_dir.joinpath(kind, *parts[:-1], f"{parts[-1]}.{fmt}")

    def has(self, kind: str, **params: Any) -> bool:
        return self.artifact_path(kind, **params).is_file()

    def delete(self, kind: str, **params: Any) -> None:
        self.artifact_path(kind, **params).unlink(missing_ok=True)

    def delete_kind(self, kind: str) -> None:
        """Remove every artifact of ``kind`` (e.g. chunks once consolidated)."""
        fmt, names = ARTIFACT_KINDS[kind]
        target = self.run_dir / kind if names else self.run_dir / f"{kind}.{fmt}"
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    # ---- typed save / load ------------------------------------------------------------------

    def save_array(self, kind: str, array: np.ndarray, **params: Any) -> None:
        with atomic_path(self.artifact_path(kind, **params)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    @contextlib.contextmanager
    def array_writer(
        self, kind: str, shape: tuple[int, ...], dtype: np.dtype | str, **params: Any
    ) -> Iterator[np.ndarray]:
        """A new ``npy`` artifact filled in place: yields a writable memory-mapped array of
        ``shape`` and ``dtype``, which becomes the artifact (atomically) when the block ends
        without an error. For arrays built part by part that need not all be in memory at once
        (a 60,000-sample run's thumbnails are 737 MB)."""
        with atomic_path(self.artifact_path(kind, **params)) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=shape)
            try:
                yield array
                array.flush()
            finally:
                del array  # unmapped before the rename (or the temp file's removal)

    def load_array(self, kind: str, mmap: bool = True, **params: Any) -> np.ndarray:
        path = self.artifact_path(kind, **params)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)

    def save_arrays(self, kind: str, arrays: dict[str, np.ndarray], **params: Any) -> None:
        with atomic_path(self.artifact_path(kind, **params)) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **dict[str, Any](arrays))

    def load_arrays(self, kind: str, **params: Any) -> dict[str, np.ndarray]:
        with np.load(self.artifact_path(kind, **params), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def load_members(self, kind: str, names: Sequence[str], **params: Any) -> dict[str, np.ndarray]:
        """Only the arrays ``names`` of an ``npz`` artifact (the others are not read)."""
        with np.load(self.artifact_path(kind, **params), allow_pickle=False) as data:
            return {name: data[name] for name in names}

    def array_names(self, kind: str, **params: Any) -> list[str]:
        """The names of the arrays in an ``npz`` artifact, without reading them."""
        with np.load(self.artifact_path(kind, **params), allow_pickle=False) as data:
            return list(data.files)

    def save_state_dict(self, kind: str, state: dict, **params: Any) -> None:
        import torch

        with atomic_path(self.artifact_path(kind, **params)) as tmp:
            torch.save(state, tmp)

    def save_json(self, kind: str, obj: Any, **params: Any) -> None:
        data = json.dumps(obj, indent=1, sort_keys=False).encode()
        atomic_write_bytes(self.artifact_path(kind, **params), data, durable=True)

    def load_json(self, kind: str, **params: Any) -> Any:
        return json.loads(self.artifact_path(kind, **params).read_text())

    # ---- manifest ---------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, after checking it is one this code understands."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"run '{self.run_id}' has no manifest in {self.run_dir}; "
                "run `python main.py runs` to list runs"
            ) from None
        except json.JSONDecodeError as exc:
            raise UserError(
                f"run '{self.run_id}' has a corrupt manifest ({exc}); delete {self.run_dir} "
                "and precompute it again"
            ) from None
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"run '{self.run_id}' was written with schema version {version}, this LayerScope "
                f"reads version {SCHEMA_VERSION}; precompute it again with a new --run-id"
            )
        return manifest

    def read_record(self) -> Manifest:
        """The manifest as a typed record (``pipelines.records``), checked like ``read_manifest``."""
        return Manifest.from_json(self.read_manifest())

    def write_record(self, manifest: Manifest) -> None:
        """Write the typed manifest: ``manifest.to_json()``, so the fields no record types (read
        from disk into ``raw``) are kept, each key in its place. Change a run's manifest with
        ``dataclasses.replace`` on ``read_record()``; the writer lock makes that safe."""
        self.write_manifest(manifest.to_json())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write a manifest given as JSON (``write_record`` writes a typed one through this);
        stamps the schema version and the time of the write (``updated``)."""
        manifest = dict(manifest, schema_version=SCHEMA_VERSION, updated=time.time())
        data = json.dumps(manifest, indent=1).encode()
        atomic_write_bytes(self.manifest_path, data, durable=True)

    def pending_stages(self, names: Sequence[str]) -> list[str]:
        """Those of the stages ``names`` that the manifest does not record as done, in order."""
        record = self.read_record()
        return [name for name in names if record.stage(name).state != "done"]

    def update_stage(self, name: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``manifest['stages'][name]`` (``StageState.updated``; a stage
        the manifest does not list yet gets only ``fields``) and write the manifest back.
        Returns the manifest written, as JSON."""
        record = self.read_record()
        stage = record.stages.get(name)
        updated = stage.updated(**fields) if stage else StageState.from_json(fields)
        written = replace(record, stages={**record.stages, name: updated})
        self.write_record(written)
        return written.to_json()

    # ---- single writer ----------------------------------------------------------------------

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run so two precomputes cannot write it at once.

        ``flock`` is released by the kernel when the process dies, so a ``kill -9`` never leaves
        a stale lock behind.
        """
        with contextlib.ExitStack() as held:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive_lock(self.run_dir / LOCK_NAME, wait=False))
            except LockBusy:
                raise UserError(
                    f"another precompute is writing run '{self.run_id}'; wait for it to finish "
                    "or pass a different --run-id"
                ) from None
            except OSError as exc:
                raise UserError(
                    f"cannot write run '{self.run_id}' in {self.run_dir.parent.parent} "
                    f"({exc.strerror or exc}); pass a --data-dir you can write to"
                ) from None
            self.remove_stale_temp_files()
            yield

    def remove_stale_temp_files(self) -> None:
        """Delete the temp files of writes that a killed process never finished; only safe
        under the writer lock (no other writer can be mid-write then)."""
        remove_temp_files(self.run_dir)

    def is_being_written(self) -> bool:
        """True while some precompute holds the writer lock (for the dashboard and `runs`)."""
        return is_locked(self.run_dir / LOCK_NAME)
