"""A run's units (pipelines/units.py) as a Celery worker runs them, without Celery: on a copy of
the session's reference run, with this test holding the run's writer lock as a precompute would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines import units
from pipelines.errors import UserError
from pipelines.store import RunStore, embedding_key, runs_dir
from pipelines.units import run_unit

LAYER = "features.3"


@pytest.fixture
def run_copy(small_run, tmp_path) -> RunStore:
    data_dir, run_id = small_run
    copy = tmp_path / "data"
    shutil.copytree(runs_dir(data_dir) / run_id, runs_dir(copy) / run_id)
    return RunStore(runs_dir(copy) / run_id)


def tsne_maps(store: RunStore, layer_id: str) -> dict[str, np.ndarray]:
    record = store.read_record()
    return {
        f"{size}/{perplexity}": store.load_array(
            "embedding", mmap=False, **embedding_key(layer_id, size, "tsne", perplexity)
        )
        for size in record.subsets
        for perplexity in record.perplexities[size]
    }


def test_a_unit_is_done_only_while_a_precompute_holds_the_run(run_copy):
    maps = tsne_maps(run_copy, LAYER)
    run_copy.delete("reduction", layer=LAYER)
    assert run_unit(run_copy.run_dir, "tsne", LAYER).outcome == "orphaned"
    assert not run_copy.has("reduction", layer=LAYER)
    with run_copy.writer_lock():
        assert run_unit(run_copy.run_dir, "pca", LAYER).outcome == "already done"
        report = run_unit(run_copy.run_dir, "tsne", LAYER)
        assert report.outcome == "done" and report.phase == "tsne" and report.key == LAYER
        assert run_unit(run_copy.run_dir, "tsne", LAYER).outcome == "already done"
    # The same maps as the precompute's own worker processes made.
    for name, coords in tsne_maps(run_copy, LAYER).items():
        np.testing.assert_allclose(coords, maps[name], atol=1e-4, err_msg=name)


def reopen_forward_stage(store: RunStore) -> None:
    """As if the forward stage were running: its chunk 0 is a pending unit again."""
    manifest = store.read_manifest()
    manifest["stages"]["forward"]["state"] = "running"
    store.write_manifest(manifest)


def test_a_forward_chunk_done_elsewhere_equals_the_precompute_s(run_copy):
    reopen_forward_stage(run_copy)
    with run_copy.writer_lock():
        assert run_unit(run_copy.run_dir, "forward", "0").outcome == "done"
    chunk = run_copy.load_arrays("forward_chunk", chunk=0)
    predictions = run_copy.load_arrays("predictions")
    assert np.array_equal(chunk["top10_index"], predictions["top10_index"])
    assert np.array_equal(chunk["thumbnails"], run_copy.load_array("thumbnails"))
    gradcam = run_copy.load_array("explanation", method="gradcam")
    np.testing.assert_allclose(chunk["gradcam"], gradcam, atol=1e-3)
    layers = [layer.id for layer in run_copy.read_record().layers if not layer.same_as]
    assert all(run_copy.has("features", layer=layer, chunk=0) for layer in layers)


def test_a_worker_refuses_a_dataset_other_than_the_run_s(run_copy):
    reopen_forward_stage(run_copy)
    manifest = json.loads(run_copy.manifest_path.read_text())
    manifest["source_fingerprint"]["sha256"] = "0" * 64  # the run was made from other data
    run_copy.write_manifest(manifest)
    units.forward_inputs.cache_clear()
    with run_copy.writer_lock(), pytest.raises(UserError, match="same data dir and datasets"):
        run_unit(run_copy.run_dir, "forward", "0")
    assert not run_copy.has("forward_chunk", chunk=0)


def test_unit_phases_are_checked():
    assert units.check_phase("tsne") == "tsne"
    with pytest.raises(ValueError, match="known: forward, pca, tsne"):
        units.check_phase("umap")


def test_a_unit_of_a_deleted_run_is_dropped(tmp_path):
    assert run_unit(Path(tmp_path) / "runs" / "gone", "pca", LAYER).outcome == "orphaned"
