"""Reshape-only layers (Flatten, Identity, Dropout at inference, ...) hold their parent's values,
so the precompute gives them their parent's maps instead of reducing the same numbers again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.models import ModelAdapter
from pipelines.records import layers_from_json
from pipelines.stages.model import describe_layers
from pipelines.store import RunStore, embedding_key, runs_dir


class Branchy(nn.Module):
    """Pass-through layers on a chain, on the input, and one fed by two layers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Identity()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.merged = nn.Flatten()
        self.fc = nn.Linear(2 * 2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.skip(x)
        y = self.relu(self.conv(x))
        chain = self.drop(self.flatten(y))
        # A product of two layers: flattening it is not a reshape of either of them.
        both = self.merged(y * x)
        return self.fc(torch.cat([chain, both], dim=1))


def adapter_for(module: nn.Module) -> ModelAdapter:
    return ModelAdapter(
        module=module.eval(),
        spec="python:branchy.py",
        name="branchy",
        description="test model",
        class_names=["a", "b", "c"],
        input_size=4,
        in_channels=1,
        mean=(0.0,),
        std=(1.0,),
        device=torch.device("cpu"),
    )


def test_pass_through_layers_point_at_the_layer_whose_values_they_hold():
    layers = describe_layers(adapter_for(Branchy()), torch.randn(1, 1, 4, 4))
    same_as = {layer.id: layer.same_as for layer in layers}
    assert same_as == {
        "input": None,
        "skip": "input",  # an Identity on the input shows the input's map
        "conv": None,
        "relu": None,
        "flatten": "relu",
        "drop": "relu",  # through a chain of pass-throughs to the layer that computed the values
        "merged": None,  # two parents: its values are neither's
        "fc": None,
    }


def test_reshape_layer_of_the_session_run_has_its_parents_maps(small_run: tuple[Path, str]):
    data_dir, run_id = small_run
    store = RunStore(runs_dir(data_dir) / run_id)
    manifest = store.read_manifest()
    aliases = {
        layer.id: layer.same_as for layer in layers_from_json(manifest["layers"]) if layer.same_as
    }
    # smallcnn's classifier starts with a Flatten of the last pooling layer.
    assert aliases == {"classifier.0": "features.8"}
    for layer_id, source in aliases.items():
        for size in manifest["subsets"]:
            keys = [("pca", None)] + [("tsne", p) for p in manifest["perplexities"][str(size)]]
            for method, perplexity in keys:
                mine = store.load_array(
                    "embedding", **embedding_key(layer_id, size, method, perplexity)
                )
                theirs = store.load_array(
                    "embedding", **embedding_key(source, size, method, perplexity)
                )
                assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), (size, method)
        reduction = store.load_json("reduction", layer=layer_id)
        assert reduction == {**store.load_json("reduction", layer=source), "same_as": source}
