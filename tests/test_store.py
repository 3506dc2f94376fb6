"""The run store: addressing, atomic round-trips, schema checks and the single-writer lock."""

import multiprocessing
import time

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.store import (
    SCHEMA_VERSION,
    RunStore,
    embedding_key,
    list_run_dirs,
    perplexity_key,
)


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "runs" / "r1")
    store.write_manifest({"run_id": "r1", "stages": {}})
    return store


def test_artifact_paths_are_derived_from_kind_and_parameters(store):
    path = store.artifact_path(
        "embedding", layer="features.0", subset=100, method="tsne", perplexity="30"
    )
    assert (
        path
        == store.run_dir
        / "embedding"
        / "layer=features.0"
        / "subset=100"
        / "method=tsne"
        / "perplexity=30.npy"
    )
    assert store.artifact_path("samples") == store.run_dir / "samples.json"


def test_bad_addresses_fail_loudly(store):
    with pytest.raises(KeyError):
        store.artifact_path("nonsense")
    with pytest.raises(TypeError):
        store.artifact_path("embedding", layer="x")
    with pytest.raises(ValueError):
        store.artifact_path("reduction", layer="../../etc/passwd")


def test_array_json_and_npz_round_trip(store):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.save_array("features", array, layer="conv1", chunk=0)
    assert np.array_equal(store.load_array("features", layer="conv1", chunk=0), array)
    store.save_arrays("predictions", {"a": array, "b": np.array([1, 2], dtype=np.int8)})
    loaded = store.load_arrays("predictions")
    assert np.array_equal(loaded["a"], array) and loaded["b"].dtype == np.int8
    store.save_json("samples", {"uid": ["x", "y"]})
    assert store.load_json("samples") == {"uid": ["x", "y"]}
    assert store.has("samples") and not store.has("thumbnails")
    leftovers = [p for p in store.run_dir.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert store.array_names("predictions") == ["a", "b"]
    assert list(store.load_members("predictions", ["b"])) == ["b"]


def test_an_array_filled_in_place_appears_only_when_complete(store):
    with store.array_writer("thumbnails", (4, 2, 2, 3), np.uint8) as out:
        assert not store.has("thumbnails")  # not before the block ends
        out[:2] = 7
        out[2:] = 9
    thumbs = store.load_array("thumbnails")
    assert thumbs.shape == (4, 2, 2, 3) and thumbs.dtype == np.uint8
    assert thumbs[:2].max() == 7 and thumbs[2:].min() == 9
    with pytest.raises(RuntimeError), store.array_writer("explanation", (3,), "f2", method="m"):
        raise RuntimeError("killed halfway")
    assert not store.has("explanation", method="m")
    assert [p for p in store.run_dir.rglob("*") if ".tmp-" in p.name] == []


def test_manifest_schema_version_is_checked(store):
    manifest = store.read_manifest()
    assert manifest["schema_version"] == SCHEMA_VERSION
    store.manifest_path.write_text('{"schema_version": 999}')
    with pytest.raises(UserError, match="schema version 999"):
        store.read_manifest()
    store.manifest_path.write_text("{not json")
    with pytest.raises(UserError, match="corrupt manifest"):
        store.read_manifest()


def test_update_stage_merges_fields(store):
    store.update_stage("forward", state="running", done=1, total=4)
    store.update_stage("forward", done=2)
    assert store.read_manifest()["stages"]["forward"] == {"state": "running", "done": 2, "total": 4}


def _hold_lock(run_dir, ready, release):
    with RunStore(run_dir).writer_lock():
        ready.set()
        release.wait(10)


def test_writer_lock_is_exclusive_across_processes(store):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(store.run_dir, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert store.is_being_written()
        with pytest.raises(UserError, match="another precompute"):
            with store.writer_lock():
                pass
    finally:
        release.set()
        holder.join(10)
    deadline = time.time() + 5
    while store.is_being_written() and time.time() < deadline:
        time.sleep(0.05)
    assert not store.is_being_written()
    with store.writer_lock():  # free again once the holder exited
        assert store.is_being_written()
    assert not store.is_being_written()


def test_list_run_dirs_only_lists_runs_with_a_manifest(store, tmp_path):
    (tmp_path / "runs" / "half-made").mkdir()
    assert list_run_dirs(tmp_path) == [store.run_dir]
    assert list_run_dirs(tmp_path / "missing") == []


def test_the_writer_lock_removes_temp_files_of_killed_writes(tmp_path):
    store = RunStore(tmp_path / "run")
    store.save_array("thumbnails", np.zeros((2, 4, 4, 3), dtype=np.uint8))
    leftovers = [
        store.run_dir / ".manifest.json.tmp-4242",
        store.run_dir / "embedding" / "layer=input" / ".subset=10.npy.tmp-4242.npy",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    with store.writer_lock():
        assert not any(path.exists() for path in leftovers)
    assert store.load_array("thumbnails").shape == (2, 4, 4, 3)


def test_the_store_spells_every_embedding_key(store):
    """One spelling of a perplexity for files and dashboard values: 30.0 and 30 are one key."""
    assert perplexity_key(30.0) == perplexity_key(30) == "30"
    assert perplexity_key(7.5) == "7.5" and perplexity_key(None) == "none"
    key = embedding_key("features.0", 100, "tsne", 30.0)
    assert key == {"layer": "features.0", "subset": 100, "method": "tsne", "perplexity": "30"}
    assert store.artifact_path("embedding", **key).name == "perplexity=30.npy"
    assert embedding_key("input", 10, "pca", None)["perplexity"] == "none"


def test_pending_stages_follow_the_order_asked(store):
    store.update_stage("model", state="done")
    store.update_stage("index", state="running")
    assert store.pending_stages(["model", "index", "forward"]) == ["index", "forward"]
