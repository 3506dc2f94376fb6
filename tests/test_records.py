"""The manifest's typed records: they read and write exactly the JSON earlier versions wrote."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import torch
import torchvision

from pipelines.records import (
    ClassMapping,
    DatasetInfo,
    ForwardPrecision,
    LayerSpec,
    Manifest,
    ModelInfo,
    RunFailure,
    RunSettings,
    SplitAccuracy,
    StageState,
    layers_from_json,
    layers_to_json,
)
from pipelines.stages.model import describe_layers
from tests.test_reshape_layers import Branchy, adapter_for

DATA = Path(__file__).parent / "data"
# Layer lists as the model stage wrote them before LayerSpec existed (Branchy: pass-throughs and
# a two-parent layer; ResNet-18 at 32 px: skip connections, nested blocks, pooled shapes).
LAYERS_V1 = json.loads((DATA / "layers_v1.json").read_text())


def test_layer_spec_round_trips_through_json() -> None:
    spec = LayerSpec(
        id="layer1.0.relu",
        type="ReLU",
        output_shape=(64, 8, 8),
        params=0,
        parents=("layer1.0.bn2", "maxpool"),
        block="layer1.0",
        pooled_shape=(64, 5, 5),
        same_as=None,
    )
    data = json.loads(json.dumps(spec.to_json()))
    assert LayerSpec.from_json(data) == spec
    assert list(data) == [
        "id",
        "type",
        "output_shape",
        "params",
        "parents",
        "block",
        "pooled_shape",
        "same_as",
    ]
    alias = LayerSpec("flatten", "Flatten", (128,), 0, ("relu",), "", (128,), "relu")
    assert LayerSpec.from_json(json.loads(json.dumps(alias.to_json()))) == alias


def test_undescribed_layer_writes_neither_pooled_shape_nor_same_as() -> None:
    spec = LayerSpec("0", "Conv2d", (4, 8, 8), 112, ("input",), "")
    assert spec.to_json() == {
        "id": "0",
        "type": "Conv2d",
        "output_shape": [4, 8, 8],
        "params": 112,
        "parents": ["input"],
        "block": "",
    }
    assert LayerSpec.from_json(spec.to_json()) == spec


def test_layer_spec_is_frozen() -> None:
    spec = LayerSpec("0", "Conv2d", (4, 8, 8), 112, ("input",), "")
    with pytest.raises(FrozenInstanceError):
        spec.same_as = "input"  # type: ignore[misc]


@pytest.mark.parametrize("model", sorted(LAYERS_V1))
def test_layers_written_before_layer_spec_load_and_write_back_unchanged(model: str) -> None:
    stored = LAYERS_V1[model]
    layers = layers_from_json(stored)
    assert [layer.id for layer in layers] == [entry["id"] for entry in stored]
    assert all(isinstance(layer.output_shape, tuple) for layer in layers)
    # Byte for byte, key order included: the manifest on disk keeps its format.
    assert json.dumps(layers_to_json(layers), indent=1) == json.dumps(stored, indent=1)


def test_describe_layers_writes_the_format_of_earlier_versions() -> None:
    torch.manual_seed(0)
    branchy = describe_layers(adapter_for(Branchy()), torch.randn(1, 1, 4, 4))
    assert json.dumps(layers_to_json(branchy)) == json.dumps(LAYERS_V1["branchy"])
    adapter = adapter_for(torchvision.models.resnet18(weights=None))
    adapter.class_names = []
    resnet = describe_layers(adapter, torch.randn(1, 3, 32, 32))
    assert json.dumps(layers_to_json(resnet)) == json.dumps(LAYERS_V1["resnet18"])


def test_a_hand_written_layer_without_optional_fields_reads_with_defaults() -> None:
    layer = LayerSpec.from_json({"id": "layer2.1.conv1", "type": "Conv2d"})
    assert layer.block == "layer2.1" and layer.output_shape == () and layer.params == 0
    assert layer.parents == () and layer.pooled_shape is None and layer.same_as is None


def test_a_run_written_before_layer_spec_opens(tmp_path: Path) -> None:
    """The manifest of a real digits + smallcnn run made by the code before LayerSpec."""
    from components.architecture import architecture_figure, layer_summary
    from dashboard.data import RunCatalog
    from dashboard.state import layer_options
    from pipelines.store import RunStore, runs_dir

    text = (DATA / "manifest_v1_digits_smallcnn.json").read_text()
    run_dir = runs_dir(tmp_path) / "digits-small"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(text)
    stored = json.loads(text)["layers"]

    layers = layers_from_json(RunStore(run_dir).read_manifest()["layers"])
    assert json.dumps(layers_to_json(layers), indent=1) == json.dumps(stored, indent=1)

    run = RunCatalog(tmp_path).open("digits-small")
    assert run.layers == tuple(layers)
    assert run.layer_ids == [entry["id"] for entry in stored]
    assert run.layer("classifier.0").same_as == "features.8"
    assert run.default_layer() == json.loads(text)["model"]["gradcam_layer"]
    assert layer_summary(run.layer("features.0")).startswith("features.0 · Conv2d · output ")
    assert [option["value"] for option in layer_options(run)] == run.layer_ids
    assert architecture_figure(run.layers)["data"]


# ---- the manifest ------------------------------------------------------------------------------

MANIFEST_V1 = (DATA / "manifest_v1_digits_smallcnn.json").read_text()


def test_a_manifest_written_before_the_manifest_record_writes_back_unchanged() -> None:
    stored = json.loads(MANIFEST_V1)
    manifest = Manifest.from_json(stored)
    assert json.dumps(manifest.to_json(), indent=1) == json.dumps(stored, indent=1)
    assert manifest.run_id == "digits-small"
    assert manifest.config is not None and manifest.dataset is not None
    assert manifest.model is not None
    assert (manifest.config.dataset, manifest.config.model, manifest.config.seed) == (
        "digits",
        "smallcnn",
        0,
    )
    assert manifest.config.weights is None
    assert manifest.config.identity == stored["config"]["identity"]
    assert manifest.dataset.num_samples == 300 and manifest.dataset.dataset_size == 1797
    assert manifest.dataset.class_names == tuple(str(i) for i in range(10))
    assert manifest.model.gradcam_layer == "features.7" and manifest.model.input_size == 32
    assert manifest.model.checkpoint == stored["model"]["checkpoint"]
    assert manifest.layers == tuple(layers_from_json(stored["layers"]))
    assert list(manifest.stages) == ["model", "index", "forward", "embeddings"]
    assert manifest.stage("embeddings") == StageState.from_json(stored["stages"]["embeddings"])
    assert manifest.stage("embeddings").done == 14 and manifest.stage("later").state == "pending"


def test_a_changed_field_is_written_in_its_place_and_the_rest_kept() -> None:
    stored = json.loads(MANIFEST_V1)
    manifest = Manifest.from_json(stored)
    assert manifest.model is not None
    changed = replace(manifest, model=replace(manifest.model, gradcam_layer="features.4"))
    data = changed.to_json()
    assert list(data) == list(stored) and list(data["model"]) == list(stored["model"])
    assert data["model"]["gradcam_layer"] == "features.4"
    assert data["model"]["training"] == stored["model"]["training"]
    assert {k: v for k, v in data.items() if k != "model"} == {
        k: v for k, v in stored.items() if k != "model"
    }


def test_a_manifest_before_its_stages_ran_round_trips() -> None:
    for stored in ({"run_id": "r1", "stages": {}}, {"run_id": "r1"}):
        manifest = Manifest.from_json(stored)
        assert manifest.model is None and manifest.layers == () and manifest.dataset is None
        assert manifest.to_json() == stored


def test_records_built_in_code_round_trip() -> None:
    manifest = Manifest(
        run_id="r2",
        config=RunSettings("digits", "vgg16", "none", 3, {"dataset": "digits"}),
        dataset=DatasetInfo("digits", "digits", 50, ("a", "b"), "two classes", 1797),
        model=ModelInfo("vgg16", "VGG-16", ("a", "b"), 224, 3, 10, "cpu", "features.29"),
        layers=(LayerSpec("input", "Input", (3, 224, 224), 0, (), "", (3, 26, 26), None),),
        stages={"model": StageState("done", 1, 1, 0.5), "index": StageState()},
    )
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))).to_json() == (
        manifest.to_json()
    )
    assert Manifest.from_json(manifest.to_json()) == manifest
    # The order the precompute has always written them in.
    assert list(manifest.to_json()) == ["run_id", "config", "stages", "model", "layers", "dataset"]


def test_the_store_reads_the_manifest_as_a_record(tmp_path: Path) -> None:
    from pipelines.store import RunStore, runs_dir

    store = RunStore(runs_dir(tmp_path) / "digits-small")
    store.write_manifest(json.loads(MANIFEST_V1))
    record = store.read_record()
    assert record == Manifest.from_json(json.loads(MANIFEST_V1))
    assert record.to_json() == store.read_manifest()


# ---- the fields the stages write (issue 10: no more dicts) ---------------------------------------


def round_trips(record: object) -> dict:
    """The record's JSON, through text and back; asserts the record reads back equal and writes
    the same JSON again."""
    data = json.loads(json.dumps(record.to_json()))  # type: ignore[attr-defined]
    again = type(record).from_json(data)  # type: ignore[attr-defined]
    assert again == record
    assert again.to_json() == data
    return data


def test_class_mapping_round_trips_as_labels_wrote_it() -> None:
    mapping = ClassMapping("wnid", (0, 217, -1))
    # ``dataclasses.asdict`` of the old ClassMapping: the warning always there, null included.
    assert round_trips(mapping) == {
        "method": "wnid",
        "dataset_to_model": [0, 217, -1],
        "warning": None,
    }
    warned = ClassMapping("none", (-1, -1), "2 of 2 dataset classes have no matching output")
    assert round_trips(warned)["warning"] == warned.warning


def test_split_accuracy_round_trips_with_an_unknown_accuracy() -> None:
    assert round_trips(SplitAccuracy(0.986, 360)) == {"accuracy": 0.986, "samples": 360}
    assert round_trips(SplitAccuracy(None, 0)) == {"accuracy": None, "samples": 0}


def test_forward_precision_keeps_the_bf16_check_it_was_chosen_by() -> None:
    assert round_trips(ForwardPrecision("float32", "bfloat16 is used on CUDA GPUs only")) == {
        "dtype": "float32",
        "reason": "bfloat16 is used on CUDA GPUs only",
    }
    chosen = {"dtype": "bfloat16", "reason": "kept 100%", "accepted": True, "worst_layer": "fc"}
    precision = ForwardPrecision.from_json(chosen)
    assert precision.dtype == "bfloat16" and precision.to_json() == chosen


def test_run_failure_round_trips() -> None:
    assert round_trips(RunFailure("UserError: boom", 1796100191.5)) == {
        "error": "UserError: boom",
        "time": 1796100191.5,
    }


def test_dataset_info_writes_what_the_index_stage_wrote() -> None:
    info = DatasetInfo("digits", "digits", 300, ("0", "1"), "digits", 1797, None, 1)
    assert list(round_trips(info)) == [
        "name",
        "spec",
        "description",
        "num_samples",
        "dataset_size",
        "class_names",
        "class_wnids",
        "native_channels",
    ]
    assert info.to_json()["class_wnids"] is None
    wnids = replace(info, class_wnids=("n01440764",), native_channels=3)
    assert round_trips(wnids)["class_wnids"] == ["n01440764"]


def test_every_stage_field_reads_typed_from_a_stored_manifest() -> None:
    manifest = Manifest.from_json(json.loads(MANIFEST_V1))
    assert manifest.subsets == (100, 300)
    assert manifest.perplexities == {100: (10.0, 30.0), 300: (10.0, 30.0)}
    assert manifest.perplexities_of(300) == (10.0, 30.0) and manifest.perplexities_of(7) == ()
    assert manifest.class_mapping == ClassMapping("name", tuple(range(10)))
    assert manifest.dataset_to_model == tuple(range(10))
    assert manifest.explanation_size == 32 and manifest.thumbnail_size == 64
    assert manifest.forward_precision == ForwardPrecision(
        "float32", "bfloat16 is used on CUDA GPUs only"
    )
    assert manifest.accuracy_by_split == {
        "held-out": SplitAccuracy(1.0, 68),
        "train": SplitAccuracy(1.0, 232),
    }
    assert manifest.accuracy == 1.0 and manifest.failure is None
    assert manifest.created == 1796100191.2220418 and manifest.updated == 1796100218.9460976
    assert manifest.versions["torch"] == "2.14.1"
    assert manifest.source_fingerprint == json.loads(MANIFEST_V1)["source_fingerprint"]
    assert manifest.dataset is not None and manifest.dataset.native_channels == 1


def test_a_manifest_built_stage_by_stage_has_the_keys_of_earlier_versions_in_order() -> None:
    """What the precompute writes, stage after stage, through ``replace``: every key where the
    dict-writing code put it (compared with the stored manifest of a run it made)."""
    stored = json.loads(MANIFEST_V1)
    full = Manifest.from_json(stored)
    created = Manifest(
        run_id=full.run_id,
        created=full.created,
        config=full.config,
        stages={name: StageState() for name in full.stages},
        versions=full.versions,
        source_fingerprint=full.source_fingerprint,
    )
    written = dict(created.to_json(), schema_version=1, updated=full.updated)  # as the store
    for fields in (
        ("model", "class_mapping", "layers", "explanation_size"),
        ("dataset", "subsets", "perplexities", "thumbnail_size"),
        ("forward_precision",),
        ("accuracy_by_split", "accuracy"),
    ):
        record = Manifest.from_json(written)
        written = replace(record, **{name: getattr(full, name) for name in fields}).to_json()
    assert list(written) == list(stored)
    for name in ("model", "class_mapping", "dataset", "forward_precision", "accuracy_by_split"):
        assert written[name] == stored[name], name


def test_held_out_accuracy_is_written_even_when_unknown() -> None:
    manifest = Manifest(run_id="r3")
    unknown = replace(
        manifest,
        accuracy_by_split={"held-out": SplitAccuracy(None, 0), "train": SplitAccuracy(None, 9)},
        accuracy=None,
    )
    assert round_trips(unknown)["accuracy"] is None
    assert "accuracy" not in manifest.to_json()


def test_a_cleared_failure_leaves_the_manifest() -> None:
    stored = json.loads(MANIFEST_V1)
    failed = replace(Manifest.from_json(stored), failure=RunFailure("boom", 1.0)).to_json()
    assert failed["failure"] == {"error": "boom", "time": 1.0}
    assert list(failed) == [*stored, "failure"]
    cleared = replace(Manifest.from_json(failed), failure=None).to_json()
    assert cleared == stored and list(cleared) == list(stored)


def test_a_stage_update_merges_its_fields_in_place() -> None:
    stage = StageState.from_json({"state": "pending"})
    running = stage.updated(state="running", done=0, total=4)
    assert running.to_json() == {"state": "running", "done": 0, "total": 4}
    done = running.updated(state="done", seconds=1.5, done=4)
    assert list(done.to_json()) == ["state", "done", "total", "seconds"]
    assert done == StageState("done", 4, 4, 1.5)


def test_the_store_writes_a_record_and_keeps_what_no_record_types(tmp_path: Path) -> None:
    from pipelines.store import RunStore, runs_dir

    store = RunStore(runs_dir(tmp_path) / "digits-small")
    stored = json.loads(MANIFEST_V1)
    store.write_manifest(stored)
    record = store.read_record()
    store.write_record(replace(record, explanation_size=64))
    written = store.read_manifest()
    assert written["explanation_size"] == 64 and written["versions"] == stored["versions"]
    assert list(written) == list(stored)
    assert written["updated"] >= stored["updated"]
    assert store.update_stage("forward", state="running", done=1)["stages"]["forward"] == {
        "state": "running",
        "done": 1,
        "total": 1,
        "seconds": stored["stages"]["forward"]["seconds"],
    }
    assert store.pending_stages(["model", "forward", "quality"]) == ["forward", "quality"]


def old_stages(forward_state: str) -> dict:
    """The stages of a manifest written before the explanations stage existed."""
    return {
        "run_id": "old",
        "stages": {
            "model": {"state": "done"},
            "index": {"state": "done"},
            "forward": {"state": forward_state},
            "embeddings": {"state": "pending"},
            "quality": {"state": "pending"},
        },
    }


def test_a_run_from_before_the_explanations_stage_has_it_in_its_forward_stages_state():
    done = Manifest.from_json(old_stages("done"))
    assert done.stage("explanations").state == "done"  # stored by its forward pass
    assert "explanations" not in done.to_json()["stages"]  # the manifest is left as it was
    running = Manifest.from_json(old_stages("running"))
    assert running.stage("explanations").state == "pending"  # for its precompute to do
    stages = {**old_stages("done")["stages"], "explanations": {"state": "running"}}
    assert Manifest.from_json({"run_id": "new", "stages": stages}).stage("explanations").state == (
        "running"
    )
