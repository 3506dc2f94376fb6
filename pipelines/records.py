"""Typed records of a run's manifest, owned by the store that writes them.

Each record is frozen and converts to and from the manifest's JSON with ``to_json`` /
``from_json``; the JSON on disk is exactly what earlier versions wrote, so existing runs open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.types import LayerId


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
