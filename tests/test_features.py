"""Layer discovery (execution order, shapes, data-flow parents), activation capture and pooling."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipelines.features import (
    capture_layers,
    discover_layers,
    leaf_modules,
    pool_activations,
    pooled_shape,
)


def all_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_resnet_layers_have_skip_connection_parents_and_form_a_dag():
    model = torchvision.models.resnet18(weights=None).eval()
    layers = discover_layers(model, torch.randn(1, 3, 64, 64))
    ids = [layer.id for layer in layers]
    assert ids[0] == "input" and ids[-1] == "fc"
    by_id = {layer.id: layer for layer in layers}
    # The block's output relu joins the residual branch and the block input.
    assert set(by_id["layer1.0.relu"].parents) == {"layer1.0.bn2", "maxpool"}
    assert set(by_id["layer2.0.relu"].parents) == {"layer2.0.bn2", "layer2.0.downsample.1"}
    position = {layer_id: i for i, layer_id in enumerate(ids)}
    for layer in layers:
        assert all(position[parent] < position[layer.id] for parent in layer.parents)
    assert by_id["layer3.1.conv2"].output_shape == (256, 4, 4)
    assert by_id["fc"].params == 512 * 1000 + 1000
    assert by_id["layer3.1.conv2"].block == "layer3.1"


def test_nested_sequential_is_a_chain_of_every_leaf_in_order():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(8 * 7 * 7, 5)),
    ).eval()
    layers = discover_layers(model, torch.randn(1, 3, 16, 16))
    assert [layer.id for layer in layers] == ["input", "0.0", "0.1", "0.2", "1.0", "1.1"]
    assert len(layers) == 1 + len(leaf_modules(model))
    for previous, layer in itertools.pairwise(layers):
        assert layer.parents == (previous.id,)


def test_capture_keeps_conv_output_before_an_inplace_relu():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(inplace=True)).eval()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.zero_()
    images = torch.ones(1, 1, 2, 2)
    _, captured = capture_layers(model, images, ["input", "0", "1"])
    assert torch.equal(captured["0"], -torch.ones(1, 2, 2, 2))
    assert torch.equal(captured["1"], torch.zeros(1, 2, 2, 2))
    assert torch.equal(captured["input"], images)


def test_capture_leaves_no_hooks_behind_even_after_many_runs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    ids = ["input", *leaf_modules(model)]
    for _ in range(100):
        capture_layers(model, torch.randn(1, 3, 8, 8), ids)
    assert all_hooks(model) == 0


def test_capture_of_a_reused_module_is_its_last_call():
    model = torchvision.models.resnet18(weights=None).eval()
    _, captured = capture_layers(
        model, torch.randn(2, 3, 32, 32), ["layer1.0.relu", "layer1.1.conv1"]
    )
    # layer1.1 takes layer1.0's output, which is layer1.0.relu's last call.
    with torch.no_grad():
        expected = model.layer1[1].conv1(captured["layer1.0.relu"])
    assert torch.allclose(captured["layer1.1.conv1"], expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((64, 224, 224), (64, 5, 5)),  # VGG16 conv1
        ((512, 14, 14), (512, 2, 2)),
        ((10,), (10,)),
        ((3, 32, 32), (3, 26, 26)),  # 3 * 26 * 26 = 2028 <= 2048 < 3 * 27 * 27
        ((4096, 7, 7), (4096, 1, 1)),  # more channels than max_dims: at least s = 1
        ((16, 20, 10), (16, 10, 10)),  # s is capped by the smaller side
        ((8, 4, 4), (8, 4, 4)),  # small maps are never up-sampled
        ((8, 1000), (8, 256)),  # (C, L) follows the same rule
    ],
)
def test_pooled_shape_cases(shape, expected):
    assert pooled_shape(shape, 2048) == expected


def test_pooled_shape_is_the_largest_side_that_fits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        c, h, w = int(rng.integers(1, 600)), int(rng.integers(1, 80)), int(rng.integers(1, 80))
        max_dims = int(rng.integers(1, 5000))
        _, s, s2 = pooled_shape((c, h, w), max_dims)
        assert s == s2 and 1 <= s <= min(h, w)
        assert c * s * s <= max_dims or s == 1
        # one step larger would break a rule
        assert s == min(h, w) or c * (s + 1) ** 2 > max_dims


def test_pool_activations_equals_adaptive_avg_pool2d():
    acts = torch.randn(3, 64, 17, 23)
    pooled = pool_activations(acts, 2048)
    expected = F.adaptive_avg_pool2d(acts, (5, 5)).reshape(3, -1)
    assert pooled.shape == (3, 64 * 5 * 5)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected)


def test_pool_activations_keeps_vectors_and_small_maps_and_casts_to_float32():
    vectors = torch.randn(4, 10, dtype=torch.float64)
    out = pool_activations(vectors)
    assert out.dtype == torch.float32 and out.shape == (4, 10)
    torch.testing.assert_close(out, vectors.float())
    small = torch.randn(2, 8, 4, 4, dtype=torch.float16)
    out = pool_activations(small)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, small.float().reshape(2, -1))


def test_pool_activations_rejects_unbatched_input():
    with pytest.raises(ValueError, match="batch"):
        pool_activations(torch.randn(5))
