"""Dashboard callbacks called as plain functions, image routes through Flask's test client, and
the model service's caches, all against the real small digits + smallcnn run."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from collections.abc import Callable
from contextvars import copy_context
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dash import Patch, no_update
from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.exceptions import PreventUpdate
from PIL import Image

from components.activations import grid_geometry
from components.packing import unpack
from dashboard import ids
from dashboard.app import create_app
from dashboard.caches import ByteLRU
from dashboard.context import current
from dashboard.data import NotReady, RunCatalog, RunData, run_label
from dashboard.on_demand import OnDemand
from dashboard.panels import (
    about,
    activations,
    controls,
    embedding,
    explain,
    inspector,
    model_view,
    new_run,
)
from dashboard.state import aspect_versions
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, STORED_METHODS
from pipelines.records import LayerSpec
from pipelines.store import RunStore

# ---- helpers ----------------------------------------------------------------------------------


def call(app: Any, function: Any, *args: Any, triggered: str | None = None) -> Any:
    """Run a callback function as Dash would: inside the app and a callback context whose
    ``triggered_id`` is the component id of ``triggered`` ("component.prop")."""

    def run() -> Any:
        inputs = [{"prop_id": triggered, "value": None}] if triggered else []
        context_value.set(AttributeDict(triggered_inputs=inputs))
        with app.server.app_context():
            return function(*args)

    return copy_context().run(run)


def apply_patch(data: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a dash ``Patch`` made of Assign operations to a copy of ``data``."""
    result = json.loads(json.dumps(data))
    if not isinstance(patch, Patch):
        return result
    for operation in patch.to_plotly_json()["operations"]:
        assert operation["operation"] == "Assign", operation
        target = result
        *path, last = operation["location"]
        for key in path:
            target = target[key]
        target[last] = operation["params"]["value"]
    return result


def text_of(component: Any) -> str:
    """All text inside a Dash component tree (alerts, tables, lists)."""
    if component is None:
        return ""
    if isinstance(component, str | int | float):
        return str(component)
    if isinstance(component, list | tuple):
        return " ".join(text_of(c) for c in component)
    return text_of(getattr(component, "children", None))


@pytest.fixture(scope="module")
def run_dir(
    small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A private copy of the small run (tests here delete and corrupt files)."""
    data_dir, run_id = small_run
    copy = tmp_path_factory.mktemp("callbacks-data")
    shutil.copytree(data_dir / "runs", copy / "runs")
    return copy, run_id


@pytest.fixture(scope="module")
def app(run_dir: tuple[Path, str]) -> Any:
    return create_app(run_dir[0])


@pytest.fixture(scope="module")
def selection(app: Any, run_dir: tuple[Path, str]) -> dict[str, Any]:
    return page_selection(app, run_dir[1])


def page_selection(app: Any, run_id: str) -> dict[str, Any]:
    """The selection a page opened at ``?run=run_id`` starts with."""
    search = f"?run={run_id}"
    return call(app, controls.setup_run, search, None, None, None, triggered=f"{ids.URL}.search")[0]


def sample_key(selection: dict[str, Any], **changes: Any) -> dict[str, Any]:
    key = {"run": selection["run"], "layer": selection["layer"], "pinned": 3}
    key.update(changes)
    return key


def view_key(selection: dict[str, Any], **changes: Any) -> dict[str, Any]:
    key = {k: selection[k] for k in ("run", "layer", "subset", "method", "perplexity", "color")}
    key.update(changes)
    return key


# ---- page setup -------------------------------------------------------------------------------


def test_setup_reads_run_layer_and_row_from_the_url(app, run_dir):
    search = f"?run={run_dir[1]}&layer=features.3&row=7&method=pca&color=prediction&subset=100"
    out = call(app, controls.setup_run, search, None, None, None, triggered=f"{ids.URL}.search")
    chosen = out[0]
    assert chosen["run"] == run_dir[1] and chosen["layer"] == "features.3" and chosen["pinned"] == 7
    assert chosen["method"] == "pca" and chosen["color"] == "prediction" and chosen["subset"] == 100
    assert [o["value"] for o in out[1]] == [run_dir[1]]
    assert [o["value"] for o in out[3]] == ["100", "300"]
    assert out[9][0]["value"] == "input" and out[10] == "features.3"
    assert out[12] == []  # no alerts


def test_unknown_layer_and_run_in_the_url_fall_back_with_a_message(app, run_dir):
    out = call(
        app, controls.setup_run, f"?run={run_dir[1]}&layer=features.99&row=99999", None, None, None
    )
    assert out[0]["layer"] == "features.7"  # the run's Grad-CAM layer, the default
    assert out[0]["pinned"] is None
    alerts = text_of(out[12])
    assert "features.99" in alerts and "features.7" in alerts and "99999" in alerts
    out = call(app, controls.setup_run, "?run=no-such-run", None, None, None)
    assert out[0]["run"] == run_dir[1]
    assert "no-such-run" in text_of(out[12])


def test_empty_data_dir_says_how_to_precompute(tmp_path):
    empty_app = create_app(tmp_path)
    out = call(empty_app, controls.setup_run, "", None, None, None)
    assert out[0]["run"] is None
    message = text_of(out[12])
    assert (
        "No runs in" in message
        and "python main.py precompute --dataset digits --model smallcnn" in message
    )
    figure = call(empty_app, model_view.render, None, [], None)
    assert "No run selected" in figure["layout"]["annotations"][0]["text"]
    assert call(empty_app, model_view.describe, None, []) == ""
    payload, note = call(empty_app, embedding.load, {"run": None}, None)
    assert payload["figure"]["data"] == [] and note is None


def test_switching_runs_keeps_method_and_colour(app, run_dir, selection):
    previous = {**selection, "method": "pca", "color": "correct", "layer": "features.0"}
    out = call(
        app, controls.setup_run, "", "ghost", None, previous, triggered=f"{ids.CONTROLS_RUN}.value"
    )
    assert out[0]["run"] == run_dir[1] and "ghost" in text_of(out[12])
    assert out[0]["method"] == "pca" and out[0]["color"] == "correct"


def test_update_view_patches_only_changed_fields(app, selection):
    patch, options, value = call(app, controls.update_view, "100", "tsne", "30", "label", selection)
    updated = apply_patch(selection, patch)
    assert updated["subset"] == 100 and updated["perplexity"] == "30"
    assert [o["value"] for o in options] == ["10", "30"]
    patch, options, value = call(app, controls.update_view, "300", "pca", "30", "label", selection)
    assert apply_patch(selection, patch)["method"] == "pca"
    assert all(o["disabled"] for o in options)
    unchanged = call(
        app,
        controls.update_view,
        str(selection["subset"]),
        selection["method"],
        selection["perplexity"],
        selection["color"],
        selection,
    )
    assert not isinstance(unchanged[0], Patch)


def test_the_run_list_picks_up_new_and_finished_runs_and_leaves_the_selection(small_run, tmp_path):
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    live_app = create_app(tmp_path)
    loaded = call(live_app, controls.setup_run, "", None, None, None)
    options = loaded[1]
    assert call(live_app, controls.refresh_runs, 1, options) is no_update  # nothing new
    # Another precompute starts a run while the page is open ...
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / "later")
    later = RunStore(tmp_path / "runs" / "later")
    manifest = later.read_manifest()
    manifest["stages"]["embeddings"] = {"state": "running", "done": 3, "total": 14}
    later.write_manifest(manifest)
    listed = call(live_app, controls.refresh_runs, 2, options)
    assert [o["value"] for o in listed] == [run_id, "later"]
    assert "precompute not finished" in listed[1]["label"]
    assert call(live_app, controls.refresh_runs, 3, listed) is no_update
    # ... and finishes it.
    manifest["stages"]["embeddings"] = {"state": "done", "done": 14, "total": 14}
    later.write_manifest(manifest)
    finished = call(live_app, controls.refresh_runs, 4, listed)
    assert "precompute not finished" not in finished[1]["label"]
    # The menu's options are all it writes: the chosen run is never touched.
    polled = [
        outputs.split("@")[0]
        for outputs, entry in live_app.callback_map.items()
        if any(i["id"] == ids.CONTROLS_RUN_POLL for i in entry["inputs"])
    ]
    assert polled == [f"{ids.CONTROLS_RUN}.options"]


# ---- model view -------------------------------------------------------------------------------


def test_model_view_draws_the_run_and_describes_the_selected_layer(app, selection):
    figure = call(app, model_view.render, selection["run"], [], None)
    assert figure["layout"]["meta"]["nodeOfLayer"]["features.3"] == "features.3"
    info = call(app, model_view.describe, {"run": selection["run"], "layer": "features.3"}, [])
    assert info == "features.3 · Conv2d · output 32 × 16 × 16 · 4,640 parameters"
    info = call(app, model_view.describe, {"run": selection["run"], "layer": "nope"}, [])
    assert "not in run" in info
    figure = call(app, model_view.render, "no-such-run", [], None)
    assert "is not in" in figure["layout"]["annotations"][0]["text"]


# ---- embedding --------------------------------------------------------------------------------


def test_embedding_payload_has_every_sample_and_a_descriptive_title(app, selection):
    payload, message = call(app, embedding.load, view_key(selection), None)
    figure = payload["figure"]
    assert message is None and payload["run"] == selection["run"]
    rows = sorted(r for t in figure["data"][:-2] for r in unpack(t["customdata"]))  # no overlays
    assert rows == list(range(selection["subset"]))
    assert figure["layout"]["title"]["text"] == (
        f"t-SNE, perplexity 30 — layer {selection['layer']} (ReLU), {selection['subset']} samples"
    )
    other, _ = call(app, embedding.load, view_key(selection, layer="features.3"), None)
    # Same samples, same traces: the browser can animate between the two layers.
    assert other["figure"]["layout"]["meta"]["structure"] == figure["layout"]["meta"]["structure"]
    assert [t.get("customdata") for t in other["figure"]["data"]] == [
        t.get("customdata") for t in figure["data"]
    ]
    assert other["key"] != payload["key"]
    flat, _ = call(app, embedding.load, view_key(selection, layer="classifier.0"), None)
    assert "same values as features.8" in flat["figure"]["layout"]["title"]["text"]
    # A newer manifest (another layer's map written, a training epoch) that leaves this map as
    # it is keeps the payload's key: the browser does not draw the same map again.
    newer = {"run": selection["run"], "stamp": 12345.0, "complete": False}
    again, _ = call(app, embedding.load, view_key(selection), newer)
    assert again["key"] == payload["key"]


def test_embedding_colourings_and_bad_parameters(app, selection):
    by_correct, _ = call(app, embedding.load, view_key(selection, color="correct"), None)
    names = [t["name"] for t in by_correct["figure"]["data"][:-2]]  # less the two overlays
    assert set(names) <= {"correct", "wrong", "unknown label"}
    payload, message = call(app, embedding.load, view_key(selection, perplexity="77"), None)
    assert "perplexity 77" in text_of(message) and payload["figure"]["data"] == []


def view_route(app: Any, key: Any, version: Any = None, dims: str = "2") -> Any:
    query = {"key": json.dumps(key), "version": json.dumps(version), "dims": dims}
    return app.server.test_client().get(embedding.VIEW_URL, query_string=query)


def test_the_map_route_answers_what_the_view_builds(app, selection):
    key = view_key(selection, layer="features.3")
    response = view_route(app, key)
    assert response.status_code == 200 and response.mimetype == "application/json"
    answer = response.get_json()
    built, _ = call(app, embedding.load, key, None)
    assert answer["data"]["key"] == built["key"] and answer["message"] is None
    assert answer["request3d"] is None
    assert answer["data"]["figure"]["layout"]["title"] == built["figure"]["layout"]["title"]
    assert [t.get("customdata") for t in answer["data"]["figure"]["data"]] == [
        t.get("customdata") for t in built["figure"]["data"]
    ]
    # What the user can fix is said where the map would be, as the callback did.
    answer = view_route(app, view_key(selection, perplexity="77")).get_json()
    assert (
        "perplexity 77" in json.dumps(answer["message"]) and answer["data"]["figure"]["data"] == []
    )
    answer = view_route(app, {**key, "run": "no-such-run"}).get_json()
    assert "is not in" in json.dumps(answer["message"])


@pytest.mark.parametrize(
    "query",
    [
        {"key": "{not json"},
        {"key": json.dumps({"run": "x", "layer": 5})},
        {"key": json.dumps({"run": "x", "subset": "١٢"})},
        {"key": json.dumps(["a"])},
        {"key": "null", "version": json.dumps({"stamp": [1]})},
        {"key": "null", "dims": "4"},
    ],
)
def test_the_map_route_refuses_malformed_queries_with_one_line(app, query):
    response = app.server.test_client().get(embedding.VIEW_URL, query_string=query)
    assert response.status_code == 400 and response.mimetype == "text/plain"
    assert len(response.data.decode().splitlines()) == 1 and b"Traceback" not in response.data


# ---- inspector and image routes -------------------------------------------------------------


def test_page_shares_ids_output_names_and_method_names_with_the_javascript(app):
    """The page carries what assets/*.js and Python must agree on, each from its one Python
    source; every clientside function with named outputs is defined by an asset file."""
    page = app.server.test_client().get("/").get_data(as_text=True)
    start = page.index("window.layerscopeShared = ") + len("window.layerscopeShared = ")
    shared = json.loads(page[start : page.index(";</script>", start)])
    assert shared["ids"]["INSPECTOR_TOP10"] == ids.INSPECTOR_TOP10
    methods = shared["constants"]["explainers"]
    assert list(methods) == list(EXPLAINERS)  # every registered method, plugins included
    for name, explainer in EXPLAINERS.items():
        assert methods[name] == {
            "title": explainer.title,
            "display": explainer.display.value,
            "slow": explainer.slow,
            "layer": explainer.uses_target_layer,
        }
    assert [o["name"] for o in shared["outputs"]["renderInspector"]] == [
        "image",
        "uid",
        "labels",
        "hint",
        "caption",
        "shown",
        "unpinDisabled",
    ]
    assets = Path(__file__).resolve().parent.parent / "assets"
    defined = set()
    for script in assets.glob("*.js"):
        defined |= set(re.findall(r'ls\.define\("(\w+)"', script.read_text()))
    assert set(shared["outputs"]) <= defined
    # Dash loads assets in name order: the shared core must come before every panel's file.
    assert sorted(p.name for p in assets.glob("*.js"))[0] == "00-core.js"


def test_inspector_table_and_url_templates(app, selection):
    table, info = call(app, inspector.load_table, selection["run"], None, None)
    assert len(table["uids"].split("\n")) == 300 and table["top_idx"]["shape"] == [300, 10]
    assert info["explanations"] == ["gradcam", "guided_backprop", "guided_gradcam"]
    assert info["urls"]["thumb"].startswith(f"/runs/{selection['run']}/thumb/{{row}}.png?v=")
    # Same run, nothing new computed: the (up to 1 MB) table is not sent again.
    unchanged = call(app, inspector.load_table, selection["run"], {"stamp": 1}, info)
    assert not isinstance(unchanged[0], dict) and not isinstance(unchanged[1], dict)


def png(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB"))


def test_image_routes_serve_run_pictures(app, run_dir):
    client = app.server.test_client()
    run_id = run_dir[1]
    store = RunStore(run_dir[0] / "runs" / run_id)
    thumbs = store.load_array("thumbnails")
    assert (png(client.get(f"/runs/{run_id}/thumb/4.png")) == thumbs[4]).all()
    guided = store.load_array("explanation", method="guided_backprop")
    assert (png(client.get(f"/runs/{run_id}/explain/guided_backprop/4.png")) == guided[4]).all()
    overlay = png(client.get(f"/runs/{run_id}/explain/gradcam/4.png"))
    assert overlay.shape[:2] == (64, 64)


@pytest.mark.parametrize(
    "path",
    [
        "/runs/{run}/thumb/300.png",  # row outside the run
        "/runs/{run}/thumb/-1.png",
        "/runs/nope/thumb/0.png",
        "/runs/..%2F..%2Fetc/thumb/0.png",
        "/runs/{run}/explain/passwd/0.png",
        "/runs/{run}/activations/..%2Fmanifest/0.png",
        "/runs/{run}/activations/features.3/0.png?sort=name",
        "/runs/{run}/explain-class/999/gradcam/0.png",
        "/runs/{run}/explain-class/3/nope/0.png",
        "/runs/{run}/explain-class/3/gradcam/0.png?layer=..%2Fmanifest",
        "/runs/{run}/explain-class/3/gradcam/0.png?layer=classifier.1",  # no channel maps
        "/runs/{run}/upload/../../etc/passwd/thumb.png",
        "/runs/{run}/upload/0123456789abcdef0123456789abcdef/..%2Fnames/thumb.png",
        "/runs/{run}/upload/0123456789abcdef0123456789abcdef/0123456789abcdef/thumb.png",
        "/runs/{run}/upload/NOTASESSION/0123456789abcdef/thumb.png",
        "/runs/{run}/upload/0123456789abcdef0123456789abcdef/0123456789abcdef/explain/3/gradcam.png",
    ],
)
def test_image_routes_refuse_anything_outside_the_run(app, run_dir, path):
    response = app.server.test_client().get(path.format(run=run_dir[1]))
    assert response.status_code == 404
    assert response.mimetype == "text/plain"
    assert b"Traceback" not in response.data


STORED = list(STORED_METHODS)


def test_a_chosen_class_gets_its_explanations_from_the_quick_job(app, run_dir, selection):
    store = next(c for c in app.layout.children if getattr(c, "id", None) == ids.APP_TOKEN)
    token = store.data
    # What explainRequest sends when class 7 is picked for pinned row 4.
    request = {
        "run": run_dir[1],
        "row": 4,
        "cls": 7,
        "name": "7",
        "layer": "features.3",
        "methods": STORED,
    }
    result = call(app, explain.explain_quick, request, token)
    assert result["cls"] == 7 and result["row"] == 4 and "error" not in result
    client = app.server.test_client()
    sizes = {"gradcam": (64, 64), "guided_backprop": (32, 32), "guided_gradcam": (32, 32)}
    for method, url in result["urls"].items():
        assert f"/explain-class/7/{method}/4.png" in url
        assert png(client.get(url)).shape[:2] == sizes[method]
    context = call(app, current)
    run = context.catalog.open(run_dir[1])
    for_seven = context.service.class_explanations(run, 4, 7, STORED)
    for_three = context.service.class_explanations(run, 4, 3, STORED)
    assert for_seven["guided_backprop"]["map"].shape == (32, 32, 3)
    assert not np.array_equal(
        for_seven["guided_backprop"]["map"], for_three["guided_backprop"]["map"]
    )
    assert call(app, explain.explain_quick, None, token)["error"].startswith("pin a sample")
    bad = call(app, explain.explain_quick, {**request, "cls": 55}, token)
    assert "not one of the model's 10 classes" in bad["error"]
    # Hand-made payloads get a sentence, never a traceback.
    for hostile in (
        {**request, "row": "4"},
        {**request, "methods": "gradcam"},
        {**request, "layer": 3},
    ):
        assert "error" in call(app, explain.explain_quick, hostile, token)
    unknown_layer = call(app, explain.explain_quick, {**request, "layer": "../manifest"}, token)
    assert "is not in run" in unknown_layer["error"]


def test_the_quick_job_leaves_slow_methods_to_the_slow_one(app, run_dir):
    """A request naming only slow methods is not the quick job's: it answers no update."""
    slow = [name for name, explainer in EXPLAINERS.items() if explainer.slow]
    if not slow:
        pytest.skip("no slow method is registered")
    token = next(c for c in app.layout.children if getattr(c, "id", None) == ids.APP_TOKEN).data
    request = {"run": run_dir[1], "row": 4, "cls": 7, "name": "7", "layer": None, "methods": slow}
    with pytest.raises(PreventUpdate):
        call(app, explain.explain_quick, request, token)


def test_explaining_the_predicted_class_gives_the_stored_maps(run_dir):
    """The dashboard's on-demand path and the precompute run one engine: for the class the
    precompute explained (the prediction), the same sample gives the maps it stored, up to the
    float rounding of a batch of one against the precompute's larger batches (identical maps for
    identical batches: tests/test_explain.py)."""
    run = RunCatalog(run_dir[0]).open(run_dir[1])
    service = OnDemand(run_dir[0])
    predicted = run.predictions()["predicted"]
    for row in (0, 17):
        computed = service.class_explanations(run, row, int(predicted[row]), STORED)
        for method in STORED:
            shown = computed[method]["map"]
            stored = np.asarray(run.explanation(method)[row])
            assert shown.dtype == stored.dtype and shown.shape == stored.shape
            difference = np.abs(shown.astype(np.float32) - stored.astype(np.float32))
            # One float16 step near 1 (2^-11 ~ 4.9e-4) for Grad-CAM; one grey level for the others.
            assert difference.max() <= (5e-4 if method == "gradcam" else 1), (method, row)


# ---- activations ------------------------------------------------------------------------------


def test_activation_grid_shows_every_channel(app, run_dir, selection):
    figure, style, header, message = call(
        app, activations.render_grid, sample_key(selection, layer="features.3"), "score", None
    )
    assert style == {} and message is None
    markers = figure["data"][0]
    assert sorted(c[0] for c in markers["customdata"]) == list(range(32))
    scores = [c[1] for c in markers["customdata"]]
    assert scores == sorted(scores, reverse=True)
    assert "32 channels of 16×16" in header and "sample 3" in header
    url = figure["layout"]["images"][0]["source"]
    image = png(app.server.test_client().get(url))
    geometry = grid_geometry(32)
    assert image.shape[:2] == (geometry.height, geometry.width)
    by_index, _, _, _ = call(
        app, activations.render_grid, sample_key(selection, layer="features.3"), "index", None
    )
    assert [c[0] for c in by_index["data"][0]["customdata"]] == list(range(32))


def test_dense_layers_are_one_heatmap_and_no_pin_says_what_to_do(app, selection):
    figure, _, header, _ = call(
        app, activations.render_grid, sample_key(selection, layer="classifier.1"), "score", None
    )
    assert figure["data"][0]["type"] == "heatmap" and "128 neurons" in header
    _, style, _, message = call(
        app, activations.render_grid, sample_key(selection, pinned=None), "score", None
    )
    assert style == {"display": "none"} and "Click a point" in text_of(message)


def test_clicking_a_channel_opens_its_raw_values(app, selection):
    key = sample_key(selection, layer="features.0")
    is_open, title, figure = call(
        app, activations.open_channel, {"points": [{"customdata": [5, 1.0]}]}, key, None
    )
    assert is_open is True and "channel 5" in title
    z = np.array(figure["data"][0]["z"])
    assert z.shape == (32, 32)
    context = call(app, current)
    run = context.catalog.open(selection["run"])
    raw = context.service.layer_activation(run, 3, "features.0").values[5]
    np.testing.assert_allclose(z, raw, atol=1e-4)
    dense_click = call(app, activations.open_channel, {"points": [{"customdata": 17}]}, key, None)
    assert not isinstance(dense_click[0], bool)  # no_update: dense cells open nothing


def test_one_forward_pass_serves_every_layer_of_a_sample(run_dir, monkeypatch):
    import dashboard.model_service as service_module

    calls = []
    real = service_module.capture_layers

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(service_module, "capture_layers", counting)
    service = OnDemand(run_dir[0])
    run = RunCatalog(run_dir[0]).open(run_dir[1])
    first = service.layer_activation(run, 11, "features.0")
    assert first.source == "computed" and first.values.shape == (16, 32, 32)
    for layer in ("features.3", "classifier.1", "input", "classifier.3"):
        assert service.layer_activation(run, 11, layer).source == "memory"
    assert len(calls) == 1
    # The logits layer agrees with the stored predictions.
    predicted = run.predictions()["predicted"][11]
    assert int(np.argmax(service.layer_activation(run, 11, "classifier.3").values)) == predicted


def test_disk_cache_survives_a_restart_and_corrupt_entries_are_recomputed(run_dir):
    run = RunCatalog(run_dir[0]).open(run_dir[1])
    first = OnDemand(run_dir[0])
    computed = first.layer_activation(run, 21, "features.6")
    restarted = OnDemand(run_dir[0])
    from_disk = restarted.layer_activation(run, 21, "features.6")
    assert from_disk.source == "disk"
    np.testing.assert_array_equal(from_disk.values, computed.values)
    assert (run_dir[0] / "cache" / "activations").is_dir()
    key = f"act/{run.run_id}/{run.version}/21/features.6"
    restarted.results.disk.set(key, b"\x93NUMPY garbage, not an array")
    fresh = OnDemand(run_dir[0])
    repaired = fresh.layer_activation(run, 21, "features.6")
    assert repaired.source == "computed" and "unreadable" in repaired.notice
    np.testing.assert_allclose(repaired.values, computed.values, atol=1e-5)
    assert OnDemand(run_dir[0]).layer_activation(run, 21, "features.6").source == "disk"


def test_corrupt_cache_file_on_disk_is_reported_in_place(app, run_dir, selection):
    context = call(app, current)
    run = context.catalog.open(run_dir[1])
    row = 42
    context.service.layer_activation(run, row, "features.3")
    # Truncate the file diskcache keeps the value in, as a crash or full disk would.
    cache_files = sorted((run_dir[0] / "cache" / "activations").rglob("*.val"))
    assert cache_files, "expected diskcache to keep large values in files"
    for path in cache_files:
        path.write_bytes(path.read_bytes()[:40])
    context.service.results.memory.clear()
    _, style, _, message = call(
        app,
        activations.render_grid,
        sample_key(selection, layer="features.3", pinned=row),
        "score",
        None,
    )
    assert style == {} and "unreadable" in text_of(message) and "recomputed" in text_of(message)


def test_forward_threads_are_restored():
    import torch

    from dashboard.model_service import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_request_threads_split_only_big_passes(monkeypatch):
    import dashboard.model_service as service_module

    def shaped(*shapes: tuple[int, ...]) -> list[LayerSpec]:
        return [LayerSpec(f"{i}", "Conv2d", shape, 0, (), "") for i, shape in enumerate(shapes)]

    vgg16_layers = shaped((64, 224, 224), (64, 224, 224), (1000,))
    smallcnn_layers = shaped((32, 8, 8), (10,), ())
    assert service_module.activation_values(vgg16_layers) == 2 * 64 * 224 * 224 + 1000
    assert service_module.activation_values(smallcnn_layers) == 32 * 64 + 10
    monkeypatch.setattr(service_module, "idle_cores", lambda seconds: 2)
    vgg16 = service_module.activation_values(vgg16_layers)
    assert service_module.request_threads(vgg16) == 2  # big pass, idle cores
    assert service_module.request_threads(2058) == 1  # smallcnn-sized: not worth a thread
    monkeypatch.setattr(service_module, "idle_cores", lambda seconds: 1)
    assert service_module.request_threads(vgg16) == 1  # a busy machine


def test_byte_lru_is_bounded():
    lru = ByteLRU(max_bytes=1000)
    for i in range(5):
        lru.put(i, np.zeros(300, dtype=np.uint8))
    assert lru.nbytes <= 1000 and len(lru) == 3 and lru.get(0) is None and lru.get(4) is not None
    lru.put("big", np.zeros(5000, dtype=np.uint8))
    assert len(lru) == 1 and lru.get("big") is not None


# ---- about, incomplete and deleted runs ---------------------------------------------------------


def test_about_describes_the_run(app, selection):
    body, note, status, poll_disabled, _ = call(app, about.render, selection["run"], None)
    text = text_of(body)
    assert (
        "digits" in text
        and "SmallCNN" in text
        and "Accuracy" in text
        and "14 (input included)" in text
    )
    assert "embeddings: done" in text
    assert note is None and poll_disabled is True and text_of(status) == "complete"


@pytest.fixture
def with_accuracy(small_run: tuple[Path, str], tmp_path: Path) -> Callable[..., RunData]:
    """A copy of the small run whose manifest gets the accuracy fields given (and no
    ``accuracy_by_split`` unless given: a run made before held-out accuracy existed)."""
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    store = RunStore(tmp_path / "runs" / run_id)

    def rewrite(**fields: Any) -> RunData:
        manifest = store.read_manifest()
        manifest.pop("accuracy_by_split", None)
        manifest.update(fields)
        store.write_manifest(manifest)
        return RunCatalog(tmp_path).open(run_id)

    return rewrite


def by_split(held_out: float | None, held_out_n: int, train: float | None, train_n: int) -> dict:
    return {
        "held-out": {"accuracy": held_out, "samples": held_out_n},
        "train": {"accuracy": train, "samples": train_n},
    }


def accuracy_row(run: RunData) -> str:
    rows = [text_of(row.children[1]) for row in about.about_rows(run)]
    labels = [text_of(row.children[0]) for row in about.about_rows(run)]
    return rows[labels.index("Accuracy")]


def test_picker_and_about_show_held_out_accuracy_beside_train(with_accuracy):
    run = with_accuracy(accuracy=0.986, accuracy_by_split=by_split(0.986, 60, 0.996, 240))
    label = run_label(run)
    assert "held-out acc 98.6%" in label and "99.6" not in label
    assert accuracy_row(run) == "held-out 98.6% (60 samples) · train 99.6% (240 samples)"
    big = with_accuracy(accuracy=0.986, accuracy_by_split=by_split(0.986, 360, 0.996, 1437))
    assert accuracy_row(big) == "held-out 98.6% (360 samples) · train 99.6% (1,437 samples)"


def test_a_pretrained_model_is_held_out_on_every_row(with_accuracy):
    run = with_accuracy(accuracy=0.951, accuracy_by_split=by_split(0.951, 300, None, 0))
    assert "held-out acc 95.1%" in run_label(run)
    assert accuracy_row(run) == "held-out 95.1% (all 300 samples; pretrained model)"


def test_a_run_from_before_held_out_accuracy_says_its_accuracy_is_over_all_rows(with_accuracy):
    run = with_accuracy(accuracy=0.994)
    label = run_label(run)
    assert "acc 99.4% (all rows; recompute for held-out)" in label and "held-out acc" not in label
    row = accuracy_row(run)
    assert "99.4%" in row and "all 300 samples" in row and "recompute" in row
    assert not row.startswith("held-out")


def test_unmapped_classes_show_no_accuracy(with_accuracy):
    run = with_accuracy(accuracy=None, accuracy_by_split=by_split(None, 60, None, 240))
    assert "acc" not in run_label(run)
    assert accuracy_row(run).startswith("unknown: the dataset's labels do not map")
    old = with_accuracy(accuracy=None)
    assert "acc" not in run_label(old) and accuracy_row(old).startswith("unknown")


def test_a_run_with_no_held_out_rows_still_shows_its_train_accuracy(with_accuracy):
    run = with_accuracy(accuracy=None, accuracy_by_split=by_split(None, 0, 0.996, 300))
    assert "acc" not in run_label(run)
    assert accuracy_row(run) == "held-out – (0 samples) · train 99.6% (300 samples)"


def test_a_randomly_initialised_model_is_not_called_pretrained(with_accuracy):
    fields = {"accuracy": 0.1, "accuracy_by_split": by_split(0.1, 300, None, 0)}
    config = with_accuracy(**fields).manifest["config"]
    run = with_accuracy(**fields, config={**config, "weights": "none"})
    assert accuracy_row(run) == "held-out 10.0% (all 300 samples; randomly initialised model)"


@pytest.fixture
def partial_run(small_run: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A copy of the small run as a precompute leaves it mid-way: no explanations or
    predictions yet, embeddings for half the layers."""
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    store = RunStore(tmp_path / "runs" / run_id)
    manifest = store.read_manifest()
    manifest["stages"]["forward"] = {"state": "done", "done": 1, "total": 1}
    manifest["stages"]["embeddings"] = {"state": "running", "done": 7, "total": 14}
    store.write_manifest(manifest)
    store.delete_kind("explanation")
    store.delete("predictions")
    for layer in [layer["id"] for layer in manifest["layers"]][7:]:
        shutil.rmtree(store.run_dir / "embedding" / f"layer={layer}")
    return tmp_path, run_id


def test_a_run_still_being_computed_says_what_is_ready(partial_run):
    data_dir, run_id = partial_run
    partial_app = create_app(data_dir)
    store = RunStore(data_dir / "runs" / run_id)
    with store.writer_lock():
        body, note, status, poll_disabled, _ = call(partial_app, about.render, run_id, None)
        assert poll_disabled is False and text_of(status) == "precompute running"
        assert "Not ready: embeddings (running, 7 / 14)" in text_of(note)
        assert "a precompute is writing it now" in text_of(note)
    key = {
        "run": run_id,
        "layer": "classifier.1",
        "subset": 300,
        "method": "tsne",
        "perplexity": "30",
        "color": "prediction",
    }
    payload, message = call(partial_app, embedding.load, key, None)
    assert "not computed yet" in text_of(message) and "7 of 14 layers" in text_of(message)
    ready, message = call(partial_app, embedding.load, {**key, "layer": "features.3"}, None)
    assert (
        message is None
        and "predictions are not computed yet" in ready["figure"]["layout"]["title"]["text"]
    )
    with pytest.raises(NotReady, match="7 of 14 layers"):
        RunCatalog(data_dir).open(run_id).embedding("classifier.1", 300, "tsne", 30.0)
    # A layer whose PCA maps are stored but whose t-SNE is still computing: its PCA map, with
    # a badge saying so (the precompute stores every layer's PCA maps before any t-SNE).
    for tsne_map in (store.run_dir / "embedding" / "layer=features.3").glob("*/method=tsne"):
        shutil.rmtree(tsne_map)
    fallback, badge = call(partial_app, embedding.load, {**key, "layer": "features.3"}, None)
    title = fallback["figure"]["layout"]["title"]["text"]
    assert title.startswith("PCA") and title.endswith("t-SNE computing…")
    assert "t-SNE computing… 7 of 14 layers, PCA shown meanwhile" == text_of(badge)
    pca = RunCatalog(data_dir).open(run_id).embedding("features.3", 300, "pca", None)
    assert unpack(fallback["figure"]["data"][0]["x"])[:3] == pytest.approx(
        pca[unpack(fallback["figure"]["data"][0]["customdata"])[:3], 0], abs=1e-2
    )
    table, info = call(partial_app, inspector.load_table, run_id, None, None)
    assert table["top_idx"] is None and info["explanations"] == []
    assert "not stored yet" in info["explanationNote"]
    # The page's setup writes the aspect versions its panels then draw, so the page's first poll
    # of the run, finding the same contents in each, redraws no panel (runAspects).
    setup = call(partial_app, controls.setup_run, f"?run={run_id}", None, None, None)
    version, progress = call(partial_app, about.poll, 1, run_id, None, None)
    assert dict(zip(ids.RUN_ASPECT_VERSIONS, setup[13:], strict=True)) == aspect_versions(version)
    assert {aspect: value["contents"] for aspect, value in aspect_versions(version).items()} == (
        version["contents"]
    )
    # The precompute writes the next layer: polling notices and bumps the version.
    assert version["run"] == run_id and version["complete"] is False
    assert progress == {"run": run_id, "stamp": version["stamp"]}
    assert call(partial_app, about.poll, 2, run_id, version, progress) == (no_update, no_update)
    manifest = store.read_manifest()
    manifest["stages"]["embeddings"]["done"] = 8
    store.write_manifest(manifest)
    newer, newer_progress = call(partial_app, about.poll, 3, run_id, version, progress)
    assert newer["stamp"] != version["stamp"] and newer_progress["stamp"] == newer["stamp"]
    # Only the maps changed: the panels of the other aspects (the architecture, the gallery,
    # the workbench) stay as they are (the page's runAspects).
    changed = {a for a in newer["contents"] if newer["contents"][a] != version["contents"][a]}
    assert changed == {"maps"} and set(newer["contents"]) == set(ids.RUN_ASPECT_VERSIONS)
    # Progress that shows nothing new (a training epoch, a chunk of the forward pass) moves
    # the About panel only, not every panel.
    manifest = store.read_manifest()
    manifest["stages"]["quality"] = {**manifest["stages"]["quality"], "done": 2, "total": 5}
    store.write_manifest(manifest)
    same, later = call(partial_app, about.poll, 4, run_id, newer, newer_progress)
    assert same is no_update and later["stamp"] != newer_progress["stamp"]


def test_a_deleted_run_shows_a_message_everywhere(small_run, tmp_path):
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    doomed_app = create_app(tmp_path)
    chosen = call(doomed_app, controls.setup_run, "", None, None, None)[0]
    shutil.rmtree(tmp_path / "runs" / run_id)
    figure = call(doomed_app, model_view.render, run_id, [], None)
    assert "is not in" in figure["layout"]["annotations"][0]["text"]
    _, message = call(doomed_app, embedding.load, view_key(chosen), None)
    assert "deleted" in text_of(message)
    _, _, _, message = call(doomed_app, activations.render_grid, sample_key(chosen), "score", None)
    assert "deleted" in text_of(message)
    body, note, _, _, _ = call(doomed_app, about.render, run_id, None)
    assert "deleted" in text_of(note)
    assert "gone" in call(doomed_app, about.poll, 3, run_id, None, None)[0]["stamp"]
    assert doomed_app.server.test_client().get(f"/runs/{run_id}/thumb/0.png").status_code == 404
    out = call(doomed_app, controls.setup_run, "", None, None, None)
    assert "No runs in" in text_of(out[12])


def test_a_corrupt_manifest_is_listed_as_unreadable(small_run, tmp_path):
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "manifest.json").write_text("{ not json")
    catalog = RunCatalog(tmp_path)
    summaries = {s.run_id: s for s in catalog.summaries()}
    assert not summaries["broken"].readable and "corrupt manifest" in summaries["broken"].label
    broken_app = create_app(tmp_path)
    out = call(broken_app, controls.setup_run, "?run=broken", None, None, None)
    assert out[0]["run"] == run_id and "broken" in text_of(out[12])
    with pytest.raises(UserError, match="corrupt manifest"):
        catalog.open("broken")


def test_redis_url_without_celery_is_a_clear_user_error(tmp_path, monkeypatch):
    # celery is a requirement; a None entry in sys.modules makes its import fail as if it were
    # not installed. (The working Celery path is tested in test_browser.py with a real Redis.)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setitem(sys.modules, "celery", None)
    with pytest.raises(UserError, match="celery is not installed.*requirements.txt"):
        create_app(tmp_path)


def component_ids(layout: Any) -> set[str]:
    return {c.id for c in layout._traverse() if isinstance(getattr(c, "id", None), str)}


def test_the_new_run_form_is_built_only_when_its_page_is_opened(app):
    # The explore page loads without the form: /new mounts it on its first visit, once.
    assert ids.NEW_PAGE in component_ids(app.layout)
    assert ids.NEW_START not in component_ids(app.layout)
    assert ids.NEW_START in component_ids(app.validation_layout)  # its callbacks are checked
    with pytest.raises(PreventUpdate):
        call(app, new_run.mount, "/", None)
    body = call(app, new_run.mount, new_run.NEW_PATH, None)
    assert {ids.NEW_START, ids.NEW_JOBS, ids.NEW_JOB_CURVES} <= component_ids(body)
    with pytest.raises(PreventUpdate):
        call(app, new_run.mount, new_run.NEW_PATH, body.to_plotly_json())


def test_the_samples_aspect_follows_the_stored_explanations_not_their_stage(small_run, tmp_path):
    # A run whose forward pass stored its explanations marks their stage done later: the page's
    # samples panels have nothing new to draw then. A method that lands (or vanishes) is new.
    data_dir, run_id = small_run
    shutil.copytree(data_dir / "runs" / run_id, tmp_path / "runs" / run_id)
    store = RunStore(tmp_path / "runs" / run_id)
    done = RunCatalog(tmp_path).open(run_id).contents_keys()
    manifest = store.read_manifest()
    manifest["stages"]["explanations"] = {**manifest["stages"]["explanations"], "state": "running"}
    store.write_manifest(manifest)
    running = RunCatalog(tmp_path).open(run_id)
    assert running.stage("explanations").state == "running"
    assert running.contents_keys() == done
    store.delete("explanation", method=running.explanation_methods()[-1])
    assert RunCatalog(tmp_path).open(run_id).contents_keys()["samples"] != done["samples"]
