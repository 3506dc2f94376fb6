"""The optional 3-D view: the pure 3-D maps, the Scatter3d builder, and its callbacks called as
plain functions on the session's small run (3-D PCA at once; 3-D t-SNE through its job, kept in
the store, or in memory where the run cannot be written)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.embedding import embedding_figure, embedding_figure_3d, label_groups
from components.packing import unpack
from dashboard import data as dashboard_data
from dashboard import ids
from dashboard.app import create_app
from dashboard.panels import embedding
from pipelines.embed3d import pca_3d, tsne_3d
from pipelines.store import RunStore, embedding_key
from tests.embedding_checks import blobs, knn_accuracy
from tests.test_dashboard_callbacks import call, page_selection, view_key

# ---- the pure maps ------------------------------------------------------------------------------


def test_pca_3d_is_the_first_three_scores_and_pads_with_zeros():
    scores = np.arange(20, dtype=np.float32).reshape(4, 5)
    found = pca_3d(scores)
    assert found.coords.dtype == np.float32 and found.coords.shape == (4, 3)
    np.testing.assert_array_equal(found.coords, scores[:, :3])
    assert found.pca_dims == 5 and not found.padded
    narrow = pca_3d(scores[:, :2])
    np.testing.assert_array_equal(narrow.coords[:, :2], scores[:, :2])
    np.testing.assert_array_equal(narrow.coords[:, 2], 0.0)
    assert narrow.pca_dims == 2 and narrow.padded
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        pca_3d(np.zeros(4, dtype=np.float32))


def test_tsne_3d_keeps_blobs_apart():
    x, labels = blobs(per_class=40)
    coords = tsne_3d(x, perplexity=15.0, seed=0)
    assert coords.shape == (len(x), 3) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    assert knn_accuracy(coords, labels) > 0.95
    np.testing.assert_array_equal(coords, tsne_3d(x, perplexity=15.0, seed=0))  # seeded
    with pytest.raises(ValueError, match="below n / 3"):
        tsne_3d(x[:30], perplexity=15.0, seed=0)


# ---- the figure builder -------------------------------------------------------------------------


def test_3d_figure_has_the_2d_traces_colours_and_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50).astype(np.int64)
    groups = label_groups(labels, ["a", "b", "c", "d"])
    coords = rng.standard_normal((50, 3)).astype(np.float32)
    flat = embedding_figure(coords[:, :2], groups, "t", "s", "u")
    deep = embedding_figure_3d(coords, groups, "t", "s|3d", "u3")
    points = deep["data"][:-1]  # less the pinned ring
    assert [t["type"] for t in points] == ["scatter3d"] * len(groups)
    same = ("name", "customdata", "marker", "hovertemplate", "x", "y")
    assert [{k: t[k] for k in same} for t in points] == [
        {k: t[k] for k in same} for t in flat["data"][: len(groups)]
    ]
    for trace, group in zip(points, groups, strict=True):
        assert unpack(trace["z"]) == pytest.approx(coords[group.rows, 2], abs=1e-3)
    assert deep["data"][-1]["name"] == "pinned sample" and deep["data"][-1]["z"] == []
    layout = deep["layout"]
    assert layout["meta"] == {"structure": "s|3d", "n": 50, "dims": 3, "pinnedTrace": len(groups)}
    assert layout["uirevision"] == layout["scene"]["uirevision"] == "u3"
    assert layout["paper_bgcolor"] == flat["layout"]["paper_bgcolor"]  # the dark theme
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        embedding_figure_3d(coords[:, :2], groups, "t", "s", "u")


# ---- the callbacks, on the small run -------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory):
    data_dir, run_id = small_run
    copy = tmp_path_factory.mktemp("embedding3d-data")
    shutil.copytree(data_dir / "runs", copy / "runs")
    return copy, run_id


@pytest.fixture(scope="module")
def app(run_dir: tuple[Path, str]) -> Any:
    return create_app(run_dir[0])


@pytest.fixture(scope="module")
def selection(app: Any, run_dir: tuple[Path, str]) -> dict[str, Any]:
    return page_selection(app, run_dir[1])


@pytest.fixture(scope="module")
def token(app: Any) -> str:
    store = next(c for c in app.layout.children if getattr(c, "id", None) == ids.APP_TOKEN)
    return store.data


@pytest.fixture(autouse=True)
def empty_memory_cache():
    dashboard_data.MAPS_3D.clear()
    yield
    dashboard_data.MAPS_3D.clear()


def rows_of(figure: dict[str, Any]) -> list[int]:
    return sorted(
        int(r)
        for t in figure["data"]
        if t["name"] != "pinned sample"
        for r in unpack(t["customdata"])
    )


def test_3d_pca_view_has_the_2d_colours_legend_and_rows(app, selection, run_dir):
    key = view_key(selection, method="pca", perplexity="none", color="prediction")
    flat, _ = call(app, embedding.load, key, None)
    payload, message, request = call(app, embedding.load_view, key, None, True)
    figure = payload["figure"]
    # The same view, drawn as another figure.
    view = embedding.view_key_text(key)
    assert message is None and payload["key"].startswith(view) and payload["key"].endswith("|3d")
    assert flat["key"].startswith(view) and flat["key"] != payload["key"]
    assert request is embedding.no_update  # PCA needs no job
    traces = figure["data"][:-1]
    assert {t["type"] for t in traces} == {"scatter3d"}
    assert rows_of(figure) == list(range(selection["subset"]))
    two_d = flat["figure"]["data"][:-2]  # less the uploads and the pinned ring
    for field in ("name", "marker", "customdata", "hovertemplate"):
        assert [t[field] for t in traces] == [t[field] for t in two_d]
    assert figure["layout"]["title"]["text"].startswith("3-D PCA — layer features.7 (ReLU)")
    # Points are the first three PCA scores of their rows.
    scores = RunStore(run_dir[0] / "runs" / run_dir[1]).load_array("pca_scores", layer="features.7")
    first = traces[0]
    row = unpack(first["customdata"])[0]
    assert [unpack(first[axis])[0] for axis in "xyz"] == pytest.approx(
        scores[row, :3].tolist(),
        rel=0,
        abs=1e-3 * float(np.ptp(scores[:, :3])),  # 16-bit levels over each axis's range
    )
    # Another colouring keeps the camera (same uirevision), and the 2-D map is back when off.
    recoloured, _, _ = call(app, embedding.load_view, {**key, "color": "label"}, None, True)
    assert recoloured["figure"]["layout"]["uirevision"] == figure["layout"]["uirevision"]
    back, _, _ = call(app, embedding.load_view, key, None, False)
    assert back == flat


def test_3d_pca_of_a_layer_with_fewer_than_3_dims_says_so(app, selection, run_dir, monkeypatch):
    key = view_key(selection, method="pca", perplexity="none")
    real = dashboard_data.RunData.pca_scores

    def two_columns(self, layer_id, subset):
        return real(self, layer_id, subset)[:, :2]

    monkeypatch.setattr(dashboard_data.RunData, "pca_scores", two_columns)
    payload, _, _ = call(app, embedding.load_view, key, None, True)
    figure = payload["figure"]
    assert "2 PCA dimension(s): the other axes are zero" in figure["layout"]["title"]["text"]
    assert {float(z) for t in figure["data"][:-1] for z in unpack(t["z"])} == {0.0}


def test_3d_tsne_is_computed_by_its_job_once_and_stored(app, selection, run_dir, token):
    key = view_key(selection, subset=100, perplexity="10")
    pending, message, request = call(app, embedding.load_view, key, None, True)
    assert "computing 3-D t-SNE" in pending["figure"]["layout"]["annotations"][0]["text"]
    assert message is None and pending["pending"] is True
    assert request["layer"] == "features.7" and request["subset"] == 100
    assert request["perplexity"] == 10.0 and request["key"] == pending["key"]
    ready = call(app, embedding.compute_3d, request, token)
    store = RunStore(run_dir[0] / "runs" / run_dir[1])
    stored_key = embedding_key("features.7", 100, "tsne", 10.0)
    coords = store.load_array("embedding3d", **stored_key)
    assert coords.shape == (100, 3) and coords.dtype == np.float32
    # The answer is the view drawn with the map, for the very payload that waited for it.
    assert ready["key"] == pending["key"]
    figure = ready["payload"]["figure"]
    assert figure["layout"]["title"]["text"].startswith(
        "3-D t-SNE, perplexity 10 — layer features.7"
    )
    assert rows_of(figure) == list(range(100))
    # Found from now on, without a job; read back from the store by a fresh process too.
    dashboard_data.MAPS_3D.clear()
    again, message, request = call(app, embedding.load_view, key, None, True)
    assert message is None and request is embedding.no_update
    assert again["figure"] == figure and "pending" not in again


def test_3d_tsne_of_a_read_only_run_is_kept_in_memory(app, selection, run_dir, token, monkeypatch):
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(RunStore, "save_array", refuse)
    key = view_key(selection, subset=100, perplexity="30")
    _, _, request = call(app, embedding.load_view, key, None, True)
    ready = call(app, embedding.compute_3d, request, token)
    assert rows_of(ready["payload"]["figure"]) == list(range(100))
    store = RunStore(run_dir[0] / "runs" / run_dir[1])
    assert not store.has("embedding3d", **embedding_key("features.7", 100, "tsne", 30.0))
    payload, message, request = call(app, embedding.load_view, key, None, True)
    assert message is None and request is embedding.no_update
    assert payload["figure"] == ready["payload"]["figure"]


def test_a_3d_job_that_cannot_make_the_map_says_why_in_its_place(app, selection, token):
    key = view_key(selection, layer="features.3", subset=100, perplexity="10")
    _, _, request = call(app, embedding.load_view, key, None, True)
    bad = call(app, embedding.compute_3d, {**request, "layer": "features.99"}, token)
    assert bad["key"] == request["key"]
    assert "features.99" in bad["payload"]["figure"]["layout"]["annotations"][0]["text"]
    late = embedding.compute_3d_timed_out(600, request, token)
    assert "longer than 600 s" in late["payload"]["figure"]["layout"]["annotations"][0]["text"]
    assert call(app, embedding.compute_3d, None, token)["payload"]["figure"]["data"] == []
