"""Pure figure and image builders of the dashboard: exact values, invariants, real layer lists."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torchvision
from PIL import Image

from components import activations as act
from components import architecture as arch
from components.embedding import (
    MAX_PREDICTION_GROUPS,
    RowValues,
    color_groups,
    correct_groups,
    embedding_figure,
    embedding_title,
    has_values,
    label_groups,
    prediction_groups,
)
from components.images import apply_lut, encode_png, explanation_png, gradcam_overlay
from components.inspector import inspector_table, short_name
from components.packing import LEVELS, unpack
from components.theme import ACCENT, DIVERGING_LUT, INFERNO_LUT, class_color, layer_family, shade
from pipelines.features import discover_layers
from pipelines.records import LayerSpec


@pytest.fixture(scope="module")
def vgg16_layers() -> list[dict]:
    model = torchvision.models.vgg16(weights=None).eval()
    return discover_layers(model, torch.zeros(1, 3, 224, 224))


@pytest.fixture(scope="module")
def resnet50_layers() -> list[dict]:
    model = torchvision.models.resnet50(weights=None).eval()
    return discover_layers(model, torch.zeros(1, 3, 64, 64))


@pytest.fixture(scope="module")
def resnet18_layers() -> list[dict]:
    model = torchvision.models.resnet18(weights=None).eval()
    return discover_layers(model, torch.zeros(1, 3, 64, 64))


def trace(figure: dict, name: str) -> dict:
    return next(t for t in figure["data"] if t.get("name") == name)


def valid_plotly(figure: dict) -> None:
    """The dict is a figure plotly accepts (validation raises on any unknown key)."""
    go.Figure(figure)
    json.dumps(figure)


# ---- architecture ---------------------------------------------------------------------------


def test_vgg16_draws_every_layer_as_its_own_box(vgg16_layers):
    nodes = arch.diagram_nodes(vgg16_layers, expanded=())
    assert [n.id for n in nodes] == [layer.id for layer in vgg16_layers]
    assert 38 <= len(nodes) <= 42
    figure = arch.architecture_figure(vgg16_layers)
    valid_plotly(figure)
    hover = trace(figure, "layers")
    assert {c[0] for c in hover["customdata"]} == {n.id for n in nodes}
    assert all(isinstance(c, list) for c in hover["customdata"])
    # Few enough boxes for per-box labels, and one bracket per top-level module.
    assert trace(figure, "labels")["text"][0] == "input"
    assert trace(figure, "block names")["text"] == ["features", "classifier"]


def test_resnet50_collapses_bottlenecks_and_expands_on_demand(resnet50_layers):
    assert len(resnet50_layers) > 120
    groups = arch.collapsible_groups(resnet50_layers)
    assert len(groups) == 16 and groups[0] == "layer1.0" and groups[-1] == "layer4.2"
    collapsed = arch.diagram_nodes(resnet50_layers, expanded=())
    assert len(collapsed) <= 25
    block = next(n for n in collapsed if n.id == "layer2.0")
    assert block.kind == "block" and "layer2.0.downsample.0" in block.layer_ids
    assert block.output_shape == (512, 8, 8)
    assert block.params == sum(
        layer.params for layer in resnet50_layers if layer.id.startswith("layer2.0.")
    )

    one_open = arch.diagram_nodes(resnet50_layers, expanded=["layer2.0"])
    assert len(one_open) == len(collapsed) - 1 + len(block.layer_ids)
    assert len(arch.diagram_nodes(resnet50_layers, expanded=groups)) == len(resnet50_layers)


def test_collapsed_resnet_is_a_chain_and_expanded_blocks_show_skip_arcs(resnet18_layers):
    collapsed = arch.diagram_nodes(resnet18_layers, expanded=())
    index = {n.id: i for i, n in enumerate(collapsed)}
    edges = arch.diagram_edges(resnet18_layers, collapsed)
    assert all(index[b] - index[a] == 1 for a, b in edges)
    figure = arch.architecture_figure(resnet18_layers)
    assert trace(figure, "skip connection")["x"] == []

    expanded = arch.diagram_nodes(resnet18_layers, expanded=["layer1.0"])
    position = {n.id: i for i, n in enumerate(expanded)}
    skips = [
        (a, b)
        for a, b in arch.diagram_edges(resnet18_layers, expanded)
        if position[b] - position[a] > 1
    ]
    # The identity shortcut: maxpool feeds the block's output relu directly.
    assert ("maxpool", "layer1.0.relu") in skips
    figure = arch.architecture_figure(resnet18_layers, expanded=["layer1.0"])
    arcs = trace(figure, "skip connection")
    assert arcs["showlegend"] is True and len([v for v in arcs["x"] if v is None]) == len(skips)
    valid_plotly(figure)


def test_selected_layer_inside_a_collapsed_block_rings_the_block(resnet18_layers):
    figure = arch.architecture_figure(resnet18_layers)
    meta = figure["layout"]["meta"]
    nodes = {n.id for n in arch.diagram_nodes(resnet18_layers, ())}
    # The browser rings the selected layer's box from these (assets/model_view.js).
    assert meta["nodeOfLayer"]["layer3.1.conv2"] == "layer3.1"
    assert meta["nodeOfLayer"]["fc"] == "fc"
    assert set(meta["rings"]) == set(meta["captions"]) == nodes
    xs, ys = meta["rings"]["layer3.1"]
    assert len(xs) == len(ys) == 7 and meta["accent"] == ACCENT
    # Grown beyond the box's own silhouette (the hover ring), centred above it.
    hover_xs, _ = meta["outlines"]["layer3.1"]
    assert min(xs) < min(hover_xs) and max(xs) > max(hover_xs)
    assert min(xs) < meta["captions"]["layer3.1"][0] < max(xs)
    # Nothing in the figure depends on the selection.
    assert all(t.get("name") != "selected" for t in figure["data"])
    assert not figure["layout"].get("annotations")
    expanded = arch.architecture_figure(resnet18_layers, expanded=["layer3.1"])
    assert expanded["layout"]["meta"]["nodeOfLayer"]["layer3.1.conv2"] == "layer3.1.conv2"


def test_box_size_grows_with_channels_and_spatial_size():
    w_small, h_small, _, _ = arch.box_size([16, 8, 8])
    w_wide, h_same, _, _ = arch.box_size([256, 8, 8])
    w_same, h_tall, _, _ = arch.box_size([16, 128, 128])
    assert w_wide > w_small and h_same == h_small
    assert h_tall > h_small and w_same == w_small
    dense_w, dense_h, _, _ = arch.box_size([4096])
    assert dense_w < w_small and dense_h > arch.box_size([10])[1]


def test_boxes_never_overlap_and_keep_execution_order(vgg16_layers):
    boxes = arch.place_nodes(arch.diagram_nodes(vgg16_layers, ()))
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert right.x >= left.right + arch.GAP - 1e-9


def test_large_models_drop_per_box_labels_but_keep_brackets(resnet50_layers):
    figure = arch.architecture_figure(
        resnet50_layers, expanded=arch.collapsible_groups(resnet50_layers)
    )
    assert all(t.get("name") != "labels" for t in figure["data"])
    assert trace(figure, "block names")["text"] == ["layer1", "layer2", "layer3", "layer4"]


def test_layer_summary_and_collapse_group():
    layer = LayerSpec(
        id="features.3",
        type="Conv2d",
        output_shape=(32, 16, 16),
        params=4640,
        parents=("features.2",),
        block="features",
    )
    assert (
        arch.layer_summary(layer) == "features.3 · Conv2d · output 32 × 16 × 16 · 4,640 parameters"
    )
    assert arch.collapse_group(layer) is None

    def in_block(layer_id: str, block: str) -> LayerSpec:
        return LayerSpec(layer_id, "Conv2d", (8, 4, 4), 0, (), block)

    assert arch.collapse_group(in_block("layer2.1.conv1", "layer2.1")) == "layer2.1"
    assert (
        arch.collapse_group(in_block("layer2.0.downsample.0", "layer2.0.downsample")) == "layer2.0"
    )
    assert arch.collapse_group(in_block("fc", "")) is None


def test_empty_layer_list_says_so():
    figure = arch.architecture_figure([])
    assert "not described yet" in figure["layout"]["annotations"][0]["text"]


# ---- embedding ------------------------------------------------------------------------------


def test_label_groups_partition_rows_with_class_colours():
    labels = np.array([2, 0, 2, 1, 0], dtype=np.int64)
    groups = label_groups(labels, ["zero", "one", "two"])
    assert [g.name for g in groups] == ["zero", "one", "two"]
    assert [g.rows.tolist() for g in groups] == [[1, 4], [3], [0, 2]]
    assert [g.color for g in groups] == [class_color(0), class_color(1), class_color(2)]


def test_prediction_groups_reuse_label_colours_and_merge_the_rare_tail_without_dropping_points():
    rng = np.random.default_rng(0)
    predicted = rng.integers(0, 60, size=2000)
    dataset_to_model = [5, 7, -1]  # dataset class 0 is model class 5, class 1 is model class 7
    names = [f"m{i}" for i in range(60)]
    groups = prediction_groups(predicted, names, dataset_to_model)
    assert len(groups) == MAX_PREDICTION_GROUPS + 1
    assert groups[0].name == "pred: m5" and groups[0].color == class_color(0)
    assert groups[1].name == "pred: m7" and groups[1].color == class_color(1)
    assert groups[-1].name.endswith("other classes")
    assert sorted(np.concatenate([g.rows for g in groups]).tolist()) == list(range(2000))


def test_correct_groups_and_fallback_without_predictions():
    groups = correct_groups(np.array([1, 0, -1, 1], dtype=np.int8))
    assert [(g.name, g.rows.tolist()) for g in groups] == [
        ("correct", [0, 3]),
        ("wrong", [1]),
        ("unknown label", [2]),
    ]
    labels = np.array([0, 1], dtype=np.int64)
    fallback = color_groups("correct", RowValues(labels), ["a", "b"], [], [])
    assert [g.name for g in fallback] == ["a", "b"]
    assert not has_values("label_issue", RowValues(labels))
    with pytest.raises(ValueError):
        color_groups("size", RowValues(labels), ["a", "b"], [], [])


def test_split_and_continuous_colourings():
    labels = np.array([0, 1, 0, 1], dtype=np.int64)
    values = RowValues(
        labels,
        split=["train", "held-out", "train", "train"],
        loss=np.array([0.1, np.nan, 3.0, 0.5], dtype=np.float32),
    )
    split = color_groups("split", values, ["a", "b"], [], [])
    assert [(g.name, g.rows.tolist()) for g in split] == [("held-out", [1]), ("train", [0, 2, 3])]
    loss = color_groups("loss", values, ["a", "b"], [], [])
    # The rows with a loss on the colour scale, the one without it grey.
    assert loss[0].rows.tolist() == [0, 2, 3] and loss[0].values.tolist() == pytest.approx(
        [0.1, 3.0, 0.5]
    )
    assert loss[1].name == "no loss" and loss[1].rows.tolist() == [1]
    figure = embedding_figure(np.zeros((4, 2), np.float32), loss, "t", "s", "r")
    valid_plotly(figure)
    marker = figure["data"][0]["marker"]
    assert unpack(marker["color"]) == pytest.approx([0.1, 3.0, 0.5], abs=3e-5)
    assert marker["showscale"]
    assert 0.5 < marker["cmax"] <= 3.0  # the scale ends at a high quantile of the losses


def test_embedding_figure_puts_every_row_once():
    rng = np.random.default_rng(1)
    coords = (rng.standard_normal((500, 2)) * 40).astype(np.float32)
    labels = rng.integers(0, 10, size=500)
    groups = label_groups(labels, [str(i) for i in range(10)])
    figure = embedding_figure(coords, groups, "title", "run|500|label", "rev")
    valid_plotly(figure)
    rows, xs, ys = [], [], []
    for t in figure["data"][:-2]:  # the last two are the overlays the browser fills
        assert t["type"] == "scattergl"
        rows += unpack(t["customdata"]).tolist()
        xs += unpack(t["x"]).tolist()
        ys += unpack(t["y"]).tolist()
    assert sorted(rows) == list(range(500))
    order = np.argsort(rows)
    # Packed as 16-bit levels over each axis's range: within half a level of every value.
    for axis, unpacked in enumerate((xs, ys)):
        half_level = np.ptp(coords[:, axis]) / LEVELS / 2
        np.testing.assert_allclose(
            np.array(unpacked)[order], coords[:, axis], rtol=0, atol=half_level * 1.001
        )
    pinned, uploads = figure["data"][-1], figure["data"][-2]
    assert pinned["x"] == [] and figure["layout"]["meta"]["pinnedTrace"] == len(figure["data"]) - 1
    assert (
        uploads["x"] == [] and figure["layout"]["meta"]["uploadsTrace"] == len(figure["data"]) - 2
    )
    assert figure["layout"]["meta"]["structure"] == "run|500|label"


def test_60k_point_payload_is_about_ten_bytes_a_point():
    rng = np.random.default_rng(2)
    coords = (rng.standard_normal((60000, 2)) * 50).astype(np.float32)
    groups = label_groups(rng.integers(0, 10, size=60000), [str(i) for i in range(10)])
    payload = json.dumps(embedding_figure(coords, groups, "t", "s", "u"))
    # 4 bytes of coordinates and 2 of the row (customdata), as base64: 8 bytes a point, where
    # the same map as JSON numbers was ~18.
    assert len(payload) < 60000 * 9


def test_embedding_title_names_method_parameters_and_size():
    assert (
        embedding_title("tsne", 30.0, "features.3", "Conv2d", 1797)
        == "t-SNE, perplexity 30 — layer features.3 (Conv2d), 1,797 samples"
    )
    assert embedding_title("pca", None, "classifier.0", "Flatten", 100, same_as="features.8") == (
        "PCA — layer classifier.0 (Flatten, same values as features.8), 100 samples"
    )


# ---- inspector ------------------------------------------------------------------------------


def test_inspector_table_round_trips_predictions():
    samples = {
        "uid": ["a", "b", "c"],
        "label_name": ["dog", "cat", "dog"],
        "model_label": [3, -1, 0],
    }
    predictions = {
        "predicted": np.array([3, 1, 0]),
        "correct": np.array([1, -1, 1], dtype=np.int8),
        "top10_index": np.array([[3, 1], [1, 3], [0, 2]]),
        "top10_prob": np.array([[0.912345, 0.05], [0.6, 0.4], [1.0, 0.0]], dtype=np.float32),
    }
    flags = np.array([False, True, False])
    table = json.loads(
        json.dumps(
            inspector_table(
                samples, predictions, ["c0", "c1", "c2", "c3"], (flags, ["x", "c2", "y"])
            )
        )
    )
    assert table["n"] == 3 and table["uids"].split("\n") == ["a", "b", "c"]
    names = table["labelNames"]
    assert [names[i] for i in unpack(table["label"])] == ["dog", "cat", "dog"]
    assert unpack(table["model_label"]).tolist() == [3, -1, 0]
    assert unpack(table["pred"]).tolist() == [3, 1, 0]
    assert unpack(table["correct"]).tolist() == [1, -1, 1]
    assert unpack(table["top_idx"]).tolist() == [[3, 1], [1, 3], [0, 2]]
    assert unpack(table["top_idx"]).dtype == np.uint8  # the narrowest type that holds them
    np.testing.assert_allclose(
        unpack(table["top_prob"]), predictions["top10_prob"], rtol=0, atol=0.5 / LEVELS + 1e-9
    )
    issues = [table["issueNames"][i] if i >= 0 else None for i in unpack(table["issue"])]
    assert issues == [None, "c2", None]
    empty = inspector_table(samples, None, ["c0"])
    assert empty["pred"] is None and empty["top_idx"] is None and "issue" not in empty
    with pytest.raises(ValueError, match="line break"):
        inspector_table({**samples, "uid": ["a", "b\nc", "d"]}, None, ["c0"])


def test_short_name_cuts_long_names():
    assert short_name("German shepherd, German shepherd dog, alsatian") == "German shepherd"
    assert short_name("x" * 40, limit=10) == "x" * 9 + "…"


# ---- activations ----------------------------------------------------------------------------


def reference_score(values: np.ndarray) -> float:
    counts, _ = np.histogram(values, bins=10, range=(values.min(), values.max()))
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum() * np.abs(values).mean())


def test_channel_scores_match_the_definition():
    constant = np.full((4, 4), 7.0)
    two_values = np.array([[0.0, 2.0], [0.0, 2.0]])
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[0] = constant
    maps[1] = np.kron(two_values, np.ones((2, 2)))
    maps[2] = (np.arange(16) % 10).reshape(4, 4)
    scores = act.channel_scores(maps)
    assert scores[0] == 0.0  # a constant map carries no pattern, however strong
    assert scores[1] == pytest.approx(1.0 * 1.0)  # one bit times mean |a| of 1
    np.testing.assert_allclose(scores[2], reference_score(maps[2]), rtol=1e-5)
    rng = np.random.default_rng(3)
    random_maps = (rng.standard_normal((6, 9, 7)) * rng.uniform(0.1, 5, (6, 1, 1))).astype(
        np.float32
    )
    expected = [reference_score(m) for m in random_maps]
    np.testing.assert_allclose(act.channel_scores(random_maps), expected, rtol=1e-4)


def test_constant_and_dead_channels_score_a_plain_zero_never_minus_zero():
    # A constant map's histogram is one full bin: entropy -(1 * log2 1) is -0.0 in floating point.
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[1] = 7.0
    maps[2] = -2.5
    scores = act.channel_scores(maps)
    assert scores.tolist() == [0.0, 0.0, 0.0] and not np.signbit(scores).any()
    assert [act.format_score(float(s)) for s in scores] == ["0", "0", "0"]
    figure = act.grid_figure("/g.png", act.grid_geometry(3), np.arange(3), scores)
    assert not any(math.copysign(1.0, c[1]) < 0 for c in figure["data"][0]["customdata"])
    # A score is >= 0 by definition: whatever rounding leaves below zero reads "0" too.
    for below in (-0.0, -1e-9, -0.0004):
        assert act.format_score(below) == "0"
    assert act.format_score(3.14159) == "3.14" and act.format_score(0.000123) == "0.000123"
    assert act.format_score(float("nan")) == "nan"


def test_channel_order_sorts_by_score_with_ties_by_index():
    scores = np.array([0.5, 2.0, 0.5, 3.0], dtype=np.float32)
    assert act.channel_order(scores, "score").tolist() == [3, 1, 0, 2]
    assert act.channel_order(scores, "index").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        act.channel_order(scores, "name")


@pytest.mark.parametrize("channels", [1, 16, 64, 512, 2048])
def test_grid_geometry_fits_every_channel(channels):
    geometry = act.grid_geometry(channels)
    assert geometry.rows * geometry.cols >= channels > (geometry.rows - 1) * geometry.cols
    assert geometry.width <= (1500 if channels <= 512 else 2400)
    assert geometry.tile >= 44


def test_render_grid_places_each_channel_in_its_tile_with_a_label():
    maps = np.zeros((3, 6, 6), dtype=np.float32)
    maps[0, 0, 0] = 5.0  # channel 0: hot top-left corner
    maps[1, 5, 5] = 1.0  # channel 1: hot bottom-right corner
    scores = act.channel_scores(maps)
    order = np.array([1, 0, 2])
    geometry = act.grid_geometry(3)
    image = act.render_grid(maps, scores, order, geometry)
    assert image.shape == (geometry.height, geometry.width) and image.dtype == np.uint8
    top_level = act.GRID_LEVELS - 1
    left, top = geometry.tile_origin(0)  # channel 1 first
    assert image[top + geometry.tile - 1, left + geometry.tile - 1] == top_level
    assert image[top, left] == 0
    left, top = geometry.tile_origin(1)  # channel 0 second
    assert image[top, left] == top_level
    left, top = geometry.tile_origin(2)  # constant channel 2: lowest colour everywhere
    assert (image[top : top + geometry.tile, left : left + geometry.tile] == 0).all()
    for position in range(3):
        left, top = geometry.tile_origin(position)
        strip = image[
            top + geometry.tile : top + geometry.tile + act.LABEL_HEIGHT,
            left : left + geometry.cell_w,
        ]
        assert (strip == act.TEXT_INDEX).any() and (strip == act.MUTED_INDEX).any()
    assert image[0, 0] == act.BACKGROUND_INDEX
    decoded = Image.open(io.BytesIO(encode_png(image, act.GRID_PALETTE)))
    assert decoded.mode == "P"
    rgb = np.asarray(decoded.convert("RGB"))
    assert tuple(rgb[top, left]) == tuple(act.GRID_PALETTE[0])


def test_resize_maps_averages_areas_down_and_repeats_cells_up():
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    down = act.resize_maps(maps, 2)
    np.testing.assert_allclose(down[0], [[2.5, 4.5], [10.5, 12.5]])
    up = act.resize_maps(maps[:, :2, :2], 4)
    np.testing.assert_array_equal(up[1], np.kron(maps[1, :2, :2], np.ones((2, 2))))
    odd = act.resize_maps(np.random.default_rng(5).random((3, 37, 11)).astype(np.float32), 16)
    assert odd.shape == (3, 16, 16) and odd.dtype == np.float32


def test_grid_figure_has_one_clickable_marker_per_channel():
    geometry = act.grid_geometry(5)
    scores = np.array([1.0, 5.0, 2.0, 0.0, 3.0], dtype=np.float32)
    order = act.channel_order(scores, "score")
    figure = act.grid_figure("/runs/r/activations/l/0.png?sort=score", geometry, order, scores)
    valid_plotly(figure)
    markers = figure["data"][0]
    assert [c[0] for c in markers["customdata"]] == [1, 4, 2, 0, 3]
    assert markers["customdata"][0][1] == pytest.approx(5.0)
    assert figure["layout"]["images"][0]["source"].startswith("/runs/r/activations/")
    x0, y0 = geometry.tile_origin(0)
    assert x0 < markers["x"][0] < x0 + geometry.tile


def test_dense_heatmap_holds_every_neuron_once():
    values = np.arange(4096, dtype=np.float32) / 10
    rows, cols = act.dense_shape(4096)
    assert rows * cols >= 4096 and 1.5 <= cols / rows <= 2.5
    figure = act.dense_heatmap_figure(values, "fc")
    valid_plotly(figure)
    z = figure["data"][0]["z"]
    custom = figure["data"][0]["customdata"]
    flat = [v for row in z for v in row]
    assert flat[:4096] == pytest.approx(values.tolist()) and all(v is None for v in flat[4096:])
    assert (
        custom[0][:3] == [0, 1, 2]
        and [v for row in custom for v in row].count(-1) == rows * cols - 4096
    )


def test_channel_heatmap_keeps_raw_values():
    values = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    figure = act.channel_heatmap_figure(values, "t")
    valid_plotly(figure)
    assert figure["data"][0]["z"] == values.tolist()


# ---- images and theme -----------------------------------------------------------------------


def test_gradcam_overlay_blends_by_cam_strength():
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    cold = gradcam_overlay(image, np.zeros((8, 8), dtype=np.float16))
    assert cold.shape == (8, 8, 3) and (cold == 100).all()
    hot = gradcam_overlay(image, np.ones((8, 8), dtype=np.float16), alpha=1.0)
    assert (hot == INFERNO_LUT[-1]).all()


def test_explanation_png_draws_heat_over_the_image_signed_in_red_and_blue_pictures_as_they_are():
    thumbnail = np.full((4, 4, 3), 100, dtype=np.uint8)
    cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8).astype(np.float16)
    decoded = np.asarray(Image.open(io.BytesIO(explanation_png("heat", cam, thumbnail))))
    np.testing.assert_array_equal(decoded, gradcam_overlay(thumbnail, cam))
    picture = np.random.default_rng(5).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    shown = explanation_png("picture", picture, thumbnail)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(shown))), picture)
    signed = np.zeros((8, 8), np.float16)
    signed[0, 0], signed[7, 7] = 1.0, -1.0
    drawn = np.asarray(Image.open(io.BytesIO(explanation_png("signed", signed, thumbnail))))
    # Full evidence is the colour map's end, none is the dimmed grey image.
    np.testing.assert_array_equal(drawn[0, 0], DIVERGING_LUT[-1])
    np.testing.assert_array_equal(drawn[7, 7], DIVERGING_LUT[0])
    np.testing.assert_array_equal(drawn[3, 3], [60, 60, 60])
    assert drawn[0, 0, 0] > drawn[0, 0, 2] and drawn[7, 7, 2] > drawn[7, 7, 0]  # red / blue
    with pytest.raises(ValueError, match="unknown display"):
        explanation_png("gradcam", cam, thumbnail)


def test_grid_png_is_the_rendered_grid_in_the_sort_order():
    maps = np.random.default_rng(6).random((5, 6, 6), dtype=np.float32)
    scores = act.channel_scores(maps)
    for sort in act.SORTS:
        order = act.channel_order(scores, sort)
        expected = act.render_grid(maps, scores, order, act.grid_geometry(5))
        decoded = Image.open(io.BytesIO(act.grid_png(maps, scores, sort)))
        assert decoded.mode == "P"
        np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_lut_endpoints_and_png_round_trip():
    lut = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)
    out = apply_lut(np.array([0.0, 0.4, 0.6, 1.0, np.nan]), lut)
    assert out.tolist() == [[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255], [0, 0, 0]]
    pixels = np.random.default_rng(4).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert (np.asarray(Image.open(io.BytesIO(encode_png(pixels)))) == pixels).all()
    with pytest.raises(ValueError):
        encode_png(pixels.astype(np.float32))


@pytest.mark.parametrize(
    ("layer_type", "family"),
    [
        ("Conv2d", "conv"),
        ("BatchNorm2d", "norm"),
        ("ReLU6", "activation"),
        ("AdaptiveAvgPool2d", "pool"),
        ("Linear", "linear"),
        ("Dropout", "dropout"),
        ("Flatten", "reshape"),
        ("Input", "input"),
        ("LSTM", "other"),
    ],
)
def test_layer_families(layer_type, family):
    assert layer_family(layer_type) == family


def test_shade_darkens_and_lightens():
    assert shade("#808080", 0.5) == "#404040"
    assert shade("#808080", 2.0) == "#ffffff"
    assert math.isclose(int(shade("#000000", 1.5)[1:3], 16), 128, abs_tol=1)
