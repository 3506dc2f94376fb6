"""Typed records of a run's manifest, owned by the store that writes them.

Each record is frozen and converts to and from the manifest's JSON with ``to_json`` /
``from_json``; the JSON on disk is exactly what earlier versions wrote, so existing runs open.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipelines.errors import UserError
from pipelines.types import LayerId

T = TypeVar("T")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a run's model, as the manifest's ``layers`` list describes it.

    ``output_shape`` and ``pooled_shape`` exclude the batch dim; ``parents`` are the data-flow
    predecessors; ``block`` is the enclosing module path ("" for top-level layers).
    ``pooled_shape`` is None until the model stage describes the layer; ``same_as`` names the
    layer whose values a reshape-only layer repeats (its embedding is that layer's).
    """

    id: LayerId
    type: str
    output_shape: tuple[int, ...]
    params: int
    parents: tuple[LayerId, ...]
    block: str
    pooled_shape: tuple[int, ...] | None = None
    same_as: LayerId | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LayerSpec:
        layer_id = str(data["id"])
        block = data.get("block")
        pooled = data.get("pooled_shape")
        return cls(
            id=layer_id,
            type=str(data["type"]),
            output_shape=tuple(int(v) for v in data.get("output_shape") or ()),
            params=int(data.get("params") or 0),
            parents=tuple(str(p) for p in data.get("parents") or ()),
            # Derived from the id where a hand-written manifest leaves it out.
            block=str(block) if block is not None else layer_id.rpartition(".")[0],
            pooled_shape=None if pooled is None else tuple(int(v) for v in pooled),
            same_as=None if data.get("same_as") is None else str(data["same_as"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest entry, keys in the order the manifest has always had them."""
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "parents": list(self.parents),
            "block": self.block,
        }
        if self.pooled_shape is not None:
            data["pooled_shape"] = list(self.pooled_shape)
            data["same_as"] = self.same_as
        return data


def layers_from_json(data: Iterable[Mapping[str, Any]] | None) -> list[LayerSpec]:
    """The manifest's ``layers`` list (absent before the model stage ran) as records."""
    return [LayerSpec.from_json(entry) for entry in data or ()]


def layers_to_json(layers: Iterable[LayerSpec]) -> list[dict[str, Any]]:
    return [layer.to_json() for layer in layers]


# ---- the manifest ---------------------------------------------------------------------------
#
# Each record types the fields that code reads, and keeps the JSON object it was read from in
# ``raw``: to_json writes the typed fields over it, so fields no code reads (library versions,
# training details) are written back as they were, and every key keeps its place. Equality
# compares the typed fields only. A record made in code (empty ``raw``) writes its keys in the
# order of its ``to_json``, which is the order the precompute has always written them in.


def _to_json(
    raw: Mapping[str, Any], typed: dict[str, Any], nullable: Collection[str] = ()
) -> dict[str, Any]:
    """``raw`` with ``typed`` written over it. A value equal to the one in ``raw`` keeps raw's
    spelling (``10`` stays ``10`` where the record reads ``10.0``; a null stays). A None is left
    out (a field cleared, as a resume clears ``failure``, leaves the JSON), except for the
    ``nullable`` keys, which earlier versions always wrote, null included."""
    data = dict(raw)
    for key, value in typed.items():
        if key in raw and raw[key] == value:
            continue
        if value is not None or key in nullable:
            data[key] = value
        else:
            data.pop(key, None)
    return data


def _required(value: T | None, run_id: str, what: str) -> T:
    if value is None:
        raise UserError(
            f"run '{run_id}' has no {what} in its manifest yet (its precompute stopped before "
            "writing it); run the precompute command again to resume it"
        )
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(name) for name in value or ())


def _optional(value: Any, read: Callable[[Mapping[str, Any]], T]) -> T | None:
    """``read(value)`` (a record's ``from_json``), or None for an absent (None) value."""
    return None if value is None else read(value)


@dataclass(frozen=True)
class RunSettings:
    """The manifest's ``config``: the precompute settings the run was made with."""

    dataset: str
    model: str
    weights: str | None = None
    seed: int = 0
    # The settings that define the run (compared when a precompute resumes it), as JSON.
    identity: Mapping[str, Any] = field(default_factory=dict)
    # The explanation methods stored for every sample (``--explain``); None in runs made
    # before the list was recorded, which store the three built-in ones
    # (``run_config.stored_methods`` reads it).
    explain: tuple[str, ...] | None = None
    # The quality stage's ``--folds`` and ``--quality-layer`` as given when the run was made;
    # None: left out (the stage's defaults), or a run made before the stage existed.
    folds: int | None = None
    quality_layer: str | None = None
    # The ``--device`` and ``--batch-size`` the run was begun with (not part of its identity: a
    # resume may pass others). Celery workers compute its units with them (``pipelines/units.py``).
    device: str | None = None
    batch_size: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSettings:
        weights = data.get("weights")
        explain = data.get("explain")
        quality_layer = data.get("quality_layer")
        device = data.get("device")
        return cls(
            dataset=str(data.get("dataset", "?")),
            model=str(data.get("model", "?")),
            weights=None if weights is None else str(weights),
            seed=int(data.get("seed") or 0),
            identity=dict(data.get("identity") or {}),
            explain=None if explain is None else _names(explain),
            folds=_optional_int(data.get("folds")),
            quality_layer=None if quality_layer is None else str(quality_layer),
            device=None if device is None else str(device),
            batch_size=_optional_int(data.get("batch_size")),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {
                "dataset": self.dataset,
                "model": self.model,
                "weights": self.weights,
                "seed": self.seed,
                "identity": dict(self.identity)
                if self.identity or "identity" in self.raw
                else None,
                "explain": None if self.explain is None else list(self.explain),
                "folds": self.folds,
                "quality_layer": self.quality_layer,
                "device": self.device,
                "batch_size": self.batch_size,
            },
        )


@dataclass(frozen=True)
class DatasetInfo:
    """The manifest's ``dataset``: which data the run shows."""

    name: str
    spec: str
    num_samples: int
    class_names: tuple[str, ...]
    description: str = ""
    dataset_size: int | None = None  # samples in the whole dataset, of which the run shows some
    class_wnids: tuple[str, ...] | None = None  # WordNet ids of ImageNet subsets' classes
    native_channels: int | None = None  # 1 (grey) or 3 (RGB), before the model's preprocessing
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetInfo:
        wnids = data.get("class_wnids")
        return cls(
            name=str(data.get("name", "")),
            spec=str(data.get("spec", "")),
            num_samples=int(data.get("num_samples") or 0),
            class_names=_names(data.get("class_names")),
            description=str(data.get("description", "")),
            dataset_size=_optional_int(data.get("dataset_size")),
            class_wnids=None if wnids is None else _names(wnids),
            native_channels=_optional_int(data.get("native_channels")),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {
                "name": self.name,
                "spec": self.spec,
                "description": self.description,
                "num_samples": self.num_samples,
                "dataset_size": self.dataset_size,
                "class_names": list(self.class_names),
                "class_wnids": None if self.class_wnids is None else list(self.class_wnids),
                "native_channels": self.native_channels,
            },
            # The index stage has always written it, null for datasets without WordNet ids.
            nullable=() if self.raw else ("class_wnids",),
        )


@dataclass(frozen=True)
class ModelInfo:
    """The manifest's ``model``: what the model is and how to rebuild it."""

    spec: str
    description: str
    class_names: tuple[str, ...]
    input_size: int
    in_channels: int
    num_params: int = 0
    device: str = "?"
    gradcam_layer: LayerId | None = None  # None: the model has no layer Grad-CAM can use
    checkpoint: str | None = None  # the trained smallcnn's shared checkpoint, if any
    # True: the run trained the model (``--epochs`` ..., a preset, a fine-tuned torchvision
    # model); its weights are the run's ``model_checkpoint`` and its ``training_curves``.
    trained: bool = False
    # A fine-tuned torchvision model's replaced last layer (its id), sized to the dataset.
    replaced_head: LayerId | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def trained_here(self) -> bool:
        """Whether LayerScope trained the model, on this run's training rows (smallcnn's shared
        checkpoint included): its weights are in the run's ``model_checkpoint``."""
        return self.trained or self.checkpoint is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        gradcam = data.get("gradcam_layer")
        checkpoint = data.get("checkpoint")
        head = data.get("replaced_head")
        return cls(
            spec=str(data.get("spec", "")),
            description=str(data.get("description", "")),
            class_names=_names(data.get("class_names")),
            input_size=int(data.get("input_size") or 0),
            in_channels=int(data.get("in_channels") or 0),
            num_params=int(data.get("num_params") or 0),
            device=str(data.get("device", "?")),
            gradcam_layer=None if gradcam is None else str(gradcam),
            checkpoint=None if checkpoint is None else str(checkpoint),
            trained=bool(data.get("trained", False)),
            replaced_head=None if head is None else str(head),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {
                "spec": self.spec,
                "description": self.description,
                "class_names": list(self.class_names),
                "input_size": self.input_size,
                "in_channels": self.in_channels,
                "num_params": self.num_params,
                "device": self.device,
                "gradcam_layer": self.gradcam_layer,
                "checkpoint": self.checkpoint,
                # Written only when set: older runs' manifests stay as they were.
                "trained": True if self.trained else None,
                "replaced_head": self.replaced_head,
            },
        )


@dataclass(frozen=True)
class StageState:
    """One entry of the manifest's ``stages``: how far a precompute stage got."""

    state: str = "pending"  # "pending" | "running" | "done"
    done: int | None = None
    total: int | None = None
    seconds: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageState:
        seconds = data.get("seconds")
        return cls(
            state=str(data.get("state", "pending")),
            done=_optional_int(data.get("done")),
            total=_optional_int(data.get("total")),
            seconds=None if seconds is None else float(seconds),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {"state": self.state, "done": self.done, "total": self.total, "seconds": self.seconds},
        )

    def updated(self, **fields: Any) -> StageState:
        """This state with ``fields`` (JSON values) merged in, as ``RunStore.update_stage`` does:
        known fields typed, others kept, each key in its place."""
        return StageState.from_json({**self.to_json(), **fields})


@dataclass(frozen=True)
class ClassMapping:
    """The manifest's ``class_mapping``: which model output each dataset class is
    (``labels.map_classes`` decides it; ``labels.UNMAPPED`` where none is)."""

    method: str  # "wnid" | "name" | "order" | "none"
    dataset_to_model: tuple[int, ...]  # model output index per dataset class
    warning: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassMapping:
        warning = data.get("warning")
        return cls(
            method=str(data.get("method", "none")),
            dataset_to_model=tuple(int(v) for v in data.get("dataset_to_model") or ()),
            warning=None if warning is None else str(warning),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {
                "method": self.method,
                "dataset_to_model": list(self.dataset_to_model),
                "warning": self.warning,
            },
            nullable=("warning",),
        )


@dataclass(frozen=True)
class SplitAccuracy:
    """Top-1 accuracy over one split of a run's samples (``metrics.accuracy_by_split``):
    ``accuracy`` over its rows whose class the model has (None when none has), ``samples``
    its rows."""

    accuracy: float | None
    samples: int
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SplitAccuracy:
        return cls(
            accuracy=_optional_float(data.get("accuracy")),
            samples=int(data.get("samples") or 0),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {"accuracy": self.accuracy, "samples": self.samples},
            nullable=("accuracy",),
        )


@dataclass(frozen=True)
class ForwardPrecision:
    """The manifest's ``forward_precision`` (``precision.choose_precision``): the forward
    stage's dtype, decided once per run, and why; the bfloat16 check's numbers stay in ``raw``."""

    dtype: str  # "float32" | "bfloat16"
    reason: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ForwardPrecision:
        return cls(
            dtype=str(data.get("dtype", "float32")),
            reason=str(data.get("reason", "")),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(self.raw, {"dtype": self.dtype, "reason": self.reason})


@dataclass(frozen=True)
class RunFailure:
    """The manifest's ``failure``: the one-line error a precompute ended with, and when (epoch
    seconds); a resume clears it."""

    error: str
    time: float
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunFailure:
        return cls(
            error=str(data.get("error", "")),
            time=float(data.get("time") or 0.0),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(self.raw, {"error": self.error, "time": self.time})


def _perplexities_from_json(data: Mapping[str, Any] | None) -> dict[int, tuple[float, ...]]:
    """The manifest's ``perplexities`` ({"100": [10.0, 30.0], ...}: JSON keys are strings)."""
    return {int(n): tuple(float(p) for p in values) for n, values in (data or {}).items()}


def _records_to_json(records: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if records is None else {name: r.to_json() for name, r in records.items()}


def _json_when(value: Any, present: bool) -> Any:
    """``value`` where the manifest has (or had) the field, else None (left out)."""
    return value if present else None


@dataclass(frozen=True)
class Manifest:
    """A run's ``manifest.json``, its fields typed where code reads them. The fields are None
    (or empty) until the stage that writes them has run; ``stages`` is in the order the
    manifest lists them.

    Written by (``RunStore.write_record``): the precompute (``run_id``, ``created``, ``config``,
    ``stages``, ``versions``, ``source_fingerprint`` as ``fingerprint.Fingerprint.to_json``
    gives it, ``failure``); the model stage (``model``, ``class_mapping``, ``layers``,
    ``explanation_size``: the side of stored explanations); the index stage (``dataset``,
    ``subsets``: nested subset sizes, ascending; ``perplexities``: the t-SNE perplexities of
    each subset; ``thumbnail_size``); the forward stage (``forward_precision``,
    ``accuracy_by_split`` {"held-out" | "train": SplitAccuracy}, ``accuracy``: held-out, None
    when unknown). ``updated`` (epoch seconds) is the store's, stamped on every write.
    """

    run_id: str
    created: float | None = None
    config: RunSettings | None = None
    stages: Mapping[str, StageState] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    source_fingerprint: Mapping[str, Any] | None = None
    # The time of the last write, stamped by the store: not part of what the manifest says.
    updated: float | None = field(default=None, compare=False)
    model: ModelInfo | None = None
    class_mapping: ClassMapping | None = None
    layers: tuple[LayerSpec, ...] = ()
    explanation_size: int | None = None
    dataset: DatasetInfo | None = None
    subsets: tuple[int, ...] = ()
    perplexities: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    thumbnail_size: int | None = None
    forward_precision: ForwardPrecision | None = None
    accuracy_by_split: Mapping[str, SplitAccuracy] | None = None
    accuracy: float | None = None
    failure: RunFailure | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        by_split = data.get("accuracy_by_split")
        fingerprint = data.get("source_fingerprint")
        return cls(
            run_id=str(data.get("run_id", "")),
            created=_optional_float(data.get("created")),
            config=_optional(data.get("config"), RunSettings.from_json),
            stages={
                name: StageState.from_json(stage)
                for name, stage in (data.get("stages") or {}).items()
            },
            versions={str(k): str(v) for k, v in (data.get("versions") or {}).items()},
            source_fingerprint=None if fingerprint is None else dict(fingerprint),
            updated=_optional_float(data.get("updated")),
            model=_optional(data.get("model"), ModelInfo.from_json),
            class_mapping=_optional(data.get("class_mapping"), ClassMapping.from_json),
            layers=tuple(layers_from_json(data.get("layers"))),
            explanation_size=_optional_int(data.get("explanation_size")),
            dataset=_optional(data.get("dataset"), DatasetInfo.from_json),
            subsets=tuple(int(n) for n in data.get("subsets") or ()),
            perplexities=_perplexities_from_json(data.get("perplexities")),
            thumbnail_size=_optional_int(data.get("thumbnail_size")),
            forward_precision=_optional(data.get("forward_precision"), ForwardPrecision.from_json),
            accuracy_by_split=None
            if by_split is None
            else {str(name): SplitAccuracy.from_json(split) for name, split in by_split.items()},
            accuracy=_optional_float(data.get("accuracy")),
            failure=_optional(data.get("failure"), RunFailure.from_json),
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        raw = self.raw
        return _to_json(
            raw,
            {
                "run_id": self.run_id,
                "created": self.created,
                "config": None if self.config is None else self.config.to_json(),
                "stages": _json_when(
                    {name: stage.to_json() for name, stage in self.stages.items()},
                    bool(self.stages) or "stages" in raw,
                ),
                "versions": _json_when(
                    dict(self.versions), bool(self.versions) or "versions" in raw
                ),
                "source_fingerprint": None
                if self.source_fingerprint is None
                else dict(self.source_fingerprint),
                "updated": self.updated,
                "model": None if self.model is None else self.model.to_json(),
                "class_mapping": None
                if self.class_mapping is None
                else self.class_mapping.to_json(),
                "layers": _json_when(
                    layers_to_json(self.layers), bool(self.layers) or "layers" in raw
                ),
                "explanation_size": self.explanation_size,
                "dataset": None if self.dataset is None else self.dataset.to_json(),
                "subsets": _json_when(list(self.subsets), bool(self.subsets) or "subsets" in raw),
                "perplexities": _json_when(
                    {str(n): list(values) for n, values in self.perplexities.items()},
                    bool(self.perplexities) or "perplexities" in raw,
                ),
                "thumbnail_size": self.thumbnail_size,
                "forward_precision": None
                if self.forward_precision is None
                else self.forward_precision.to_json(),
                "accuracy_by_split": _records_to_json(self.accuracy_by_split),
                # Written whenever the forward stage wrote its splits: None means unknown.
                "accuracy": self.accuracy,
                "failure": None if self.failure is None else self.failure.to_json(),
            },
            nullable=("accuracy",) if self.accuracy_by_split is not None else (),
        )

    def require_config(self) -> RunSettings:
        return _required(self.config, self.run_id, "config")

    def require_dataset(self) -> DatasetInfo:
        return _required(self.dataset, self.run_id, "dataset")

    def require_model(self) -> ModelInfo:
        return _required(self.model, self.run_id, "model")

    def first_layer(self) -> LayerId | None:
        """The layer a page shows first: the Grad-CAM layer (the last spatial conv) if known,
        else the last layer; deep enough that classes already separate, which makes a telling
        first view. The embeddings stage reduces it first, so that view is the first map."""
        ids = [layer.id for layer in self.layers]
        if not ids:
            return None
        preferred = self.model.gradcam_layer if self.model else None
        return preferred if preferred in ids else ids[-1]

    def stage(self, name: str) -> StageState:
        """The named stage's state; "pending" if the manifest does not list it yet. A run made
        before the explanations stage existed stored its explanations in the forward pass: that
        stage is in the forward stage's state (done when it is; pending, for its precompute to
        do, otherwise). The manifest itself is left as it was written."""
        stage = self.stages.get(name)
        if stage is not None:
            return stage
        if name == "explanations" and "forward" in self.stages:
            forward_done = self.stages["forward"].state == "done"
            return StageState(state="done", seconds=0.0) if forward_done else StageState()
        return StageState()

    def require_class_mapping(self) -> ClassMapping:
        return _required(self.class_mapping, self.run_id, "class mapping")

    def require_explanation_size(self) -> int:
        return _required(self.explanation_size, self.run_id, "explanation size")

    def perplexities_of(self, subset: int) -> tuple[float, ...]:
        """The t-SNE perplexities of subset ``subset`` (none for a size that is not a subset)."""
        return self.perplexities.get(int(subset), ())

    @property
    def dataset_to_model(self) -> tuple[int, ...]:
        """Model output per dataset class; empty before the model stage ran."""
        return self.class_mapping.dataset_to_model if self.class_mapping else ()
