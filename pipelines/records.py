"""Typed records of a run's manifest, owned by the store that writes them.

Each record is frozen and converts to and from the manifest's JSON with ``to_json`` /
``from_json``; the JSON on disk is exactly what earlier versions wrote, so existing runs open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
# compares the typed fields only.


def _to_json(raw: Mapping[str, Any], typed: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``typed`` written over it; a None that ``raw`` did not have stays out."""
    data = dict(raw)
    for key, value in typed.items():
        if value is not None or key in raw:
            data[key] = value
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


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(name) for name in value or ())


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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSettings:
        weights = data.get("weights")
        explain = data.get("explain")
        quality_layer = data.get("quality_layer")
        return cls(
            dataset=str(data.get("dataset", "?")),
            model=str(data.get("model", "?")),
            weights=None if weights is None else str(weights),
            seed=int(data.get("seed") or 0),
            identity=dict(data.get("identity") or {}),
            explain=None if explain is None else _names(explain),
            folds=_optional_int(data.get("folds")),
            quality_layer=None if quality_layer is None else str(quality_layer),
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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetInfo:
        return cls(
            name=str(data.get("name", "")),
            spec=str(data.get("spec", "")),
            num_samples=int(data.get("num_samples") or 0),
            class_names=_names(data.get("class_names")),
            description=str(data.get("description", "")),
            dataset_size=_optional_int(data.get("dataset_size")),
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
            },
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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        gradcam = data.get("gradcam_layer")
        checkpoint = data.get("checkpoint")
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


@dataclass(frozen=True)
class Manifest:
    """A run's ``manifest.json``, its fields typed where code reads them. ``config``,
    ``dataset`` and ``model`` are None, and ``layers`` empty, until the stage that writes them
    has run; ``stages`` is in the order the manifest lists them."""

    run_id: str
    config: RunSettings | None = None
    dataset: DatasetInfo | None = None
    model: ModelInfo | None = None
    layers: tuple[LayerSpec, ...] = ()
    stages: Mapping[str, StageState] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        config, dataset, model = data.get("config"), data.get("dataset"), data.get("model")
        return cls(
            run_id=str(data.get("run_id", "")),
            config=None if config is None else RunSettings.from_json(config),
            dataset=None if dataset is None else DatasetInfo.from_json(dataset),
            model=None if model is None else ModelInfo.from_json(model),
            layers=tuple(layers_from_json(data.get("layers"))),
            stages={
                name: StageState.from_json(stage)
                for name, stage in (data.get("stages") or {}).items()
            },
            raw=data,
        )

    def to_json(self) -> dict[str, Any]:
        return _to_json(
            self.raw,
            {
                "run_id": self.run_id,
                "config": None if self.config is None else self.config.to_json(),
                "dataset": None if self.dataset is None else self.dataset.to_json(),
                "model": None if self.model is None else self.model.to_json(),
                "layers": layers_to_json(self.layers)
                if self.layers or "layers" in self.raw
                else None,
                "stages": {name: stage.to_json() for name, stage in self.stages.items()}
                if self.stages or "stages" in self.raw
                else None,
            },
        )

    def require_config(self) -> RunSettings:
        return _required(self.config, self.run_id, "config")

    def require_dataset(self) -> DatasetInfo:
        return _required(self.dataset, self.run_id, "dataset")

    def require_model(self) -> ModelInfo:
        return _required(self.model, self.run_id, "model")

    def stage(self, name: str) -> StageState:
        """The named stage's state; "pending" if the manifest does not list it yet."""
        return self.stages.get(name) or StageState()
