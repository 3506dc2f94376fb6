"""Explanation methods: exact values on hand-weighted nets, agreement with pytorch-grad-cam,
batching invariance, and a model left exactly as it was found."""

from __future__ import annotations

import copy
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.image import deprocess_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.datasets import load_digits
from torch import nn

from pipelines.errors import UserError
from pipelines.explain import (
    EXPLAINERS,
    STORED_METHODS,
    Explainer,
    FeatureCapture,
    Gradient,
    Passes,
    explain,
    last_spatial_conv_layer,
    register,
    run_passes,
)
from pipelines.explain.base import Display, gradients_display
from pipelines.explain.methods.gradcam import cam_from
from pipelines.explain.methods.guided_gradcam import guided_gradcam_gradients
from pipelines.features import capture_layers
from pipelines.records import LayerSpec


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # These nets are tiny: a second OpenMP thread buys nothing and, on a busy 2-core machine,
    # its spin-waits make each call ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def explain_batch(
    model: nn.Module,
    target_layer: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    out_size: int,
    methods: list[str] | tuple[str, ...] = STORED_METHODS,
) -> dict[str, np.ndarray]:
    """The dashboard's call: chosen classes, display maps only."""
    return explain(model, target_layer, images, classes, methods, out_size).maps


def gradcam_maps(
    model: nn.Module, target_layer: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Raw Grad-CAM, (B, h, w) float32 unscaled, from the engine's passes."""
    passes, _ = run_passes(model, target_layer, images, classes, frozenset({Gradient.TARGET_LAYER}))
    return cam_from(passes.acts(), passes.gradient(Gradient.TARGET_LAYER))


def guided_backprop_gradients(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Raw guided-backprop gradients, (B, C, H, W) float32, from the engine's passes."""
    passes, _ = run_passes(model, None, images, classes, frozenset({Gradient.PIXELS_GUIDED}))
    return passes.gradient(Gradient.PIXELS_GUIDED)


HOOK_DICTS = ("_forward_hooks", "_backward_hooks", "_forward_pre_hooks", "_backward_pre_hooks")


def small_cnn(in_channels: int = 3, inplace: bool = True, seed: int = 0) -> nn.Sequential:
    """torchvision-style CNN: conv/BN/in-place ReLU blocks, pooling, a linear head."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(16, 10),
    )
    # Non-trivial running statistics, so eval-mode BatchNorm is not the identity.
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def random_batch(
    n: int, channels: int, size: int, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, channels, size, size, generator=generator)
    classes = torch.randint(0, 10, (n,), generator=generator)
    return images, classes


def digits_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits, standardised: (n, 1, 8, 8) float32 and their labels."""
    digits = load_digits()
    images = torch.from_numpy(digits.images[:n].astype(np.float32))[:, None]
    images = (images - images.mean()) / images.std()
    return images, torch.from_numpy(digits.target[:n].astype(np.int64))


def hooks_left(model: nn.Module) -> list[str]:
    return [
        f"{name or 'model'}.{attr}"
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr)
    ]


def model_snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "modules": [id(m) for m in model.modules()],
        "instance_forward": ["forward" in vars(m) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "inplace", "modules", "instance_forward"):
        assert before[key] == after[key], key
    for g0, g1 in zip(before["grad"], after["grad"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


# --- registry --------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(EXPLAINERS) == {
        "gradcam",
        "guided_backprop",
        "guided_gradcam",
        "integrated_gradients",
        "lrp",
        "lrp_alpha_beta",
        "occlusion",
        "saliency",
        "smoothgrad",
    }
    assert set(STORED_METHODS) <= set(EXPLAINERS)
    assert all(explainer.name == name for name, explainer in EXPLAINERS.items())


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_each_method_cites_its_paper_and_declares_its_gradients(name: str) -> None:
    explainer = EXPLAINERS[name]
    module = sys.modules[type(explainer).__module__]
    assert re.search(r"(19|20)\d\d", module.__doc__ or ""), "cite the paper (authors, venue, year)"
    assert "arXiv:" in (module.__doc__ or "")
    # Empty for the library adapters (Captum), which run passes of their own.
    assert explainer.needs <= set(Gradient)
    assert explainer.title and isinstance(explainer.slow, bool)


class _InputTimesGradient(Explainer):
    """A plugin written as a user would: guided gradient times input, shown as a picture."""

    name = "test_input_times_guided"
    title = "Input x guided gradient"
    display = Display.PICTURE
    needs = frozenset({Gradient.PIXELS_GUIDED})

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        return gradients_display(passes.gradient(Gradient.PIXELS_GUIDED) * passes.images, out_size)


@pytest.fixture
def plugin() -> Iterator[str]:
    register(_InputTimesGradient)
    yield _InputTimesGradient.name
    del EXPLAINERS[_InputTimesGradient.name]


def test_a_registered_plugin_is_served_by_the_engine_with_the_built_ins(plugin: str) -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    out = explain_batch(model, model[4], images, classes, 16, methods=[plugin, "gradcam"])
    assert list(out) == [plugin, "gradcam"] and out[plugin].shape == (3, 16, 16, 3)
    guided = guided_backprop_gradients(model, images, classes)
    np.testing.assert_array_equal(out[plugin], gradients_display(guided * images, 16))
    # The built-in's maps do not depend on which other methods share the passes.
    alone = explain_batch(model, model[4], images, classes, 16, methods=["gradcam"])
    np.testing.assert_array_equal(out["gradcam"], alone["gradcam"])


def test_registering_a_taken_name_or_an_incomplete_method_fails() -> None:
    class Impostor(_InputTimesGradient):
        name = "gradcam"

    with pytest.raises(ValueError, match="already registered by .*GradCAM; pick another name"):
        register(Impostor)

    class Nameless(_InputTimesGradient):
        name = ""

    with pytest.raises(ValueError, match="name ="):
        register(Nameless)
    assert type(EXPLAINERS["gradcam"]).__name__ == "GradCAM"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_each_method_shapes_dtypes_ranges(name: str, channels: int) -> None:
    model = small_cnn(channels)
    if channels == 1:
        images, classes = digits_batch(5)
    else:
        images, classes = random_batch(5, 3, 16)
    out = explain_batch(model, model[4], images, classes, 24, methods=[name])
    assert list(out) == [name]
    result = out[name]
    display = EXPLAINERS[name].display
    if display is not Display.PICTURE:
        assert result.shape == (5, 24, 24) and result.dtype == np.float16
        assert np.isfinite(result).all()
        low = 0.0 if display is Display.HEAT else -1.0
        assert result.min() >= low and result.max() <= 1.0
    if name == "gradcam":
        # Scaled per image, not per batch: every map peaks at 1 unless the class has no
        # positive evidence at this layer (then Grad-CAM is all zero by its final ReLU).
        peaks = result.reshape(5, -1).max(axis=1).astype(np.float32)
        assert np.isin(peaks, [0.0, 1.0]).all() and (peaks == 1.0).any()
    elif display is Display.PICTURE:
        assert result.shape == (5, 24, 24, 3) and result.dtype == np.uint8
        varies = result.reshape(5, -1).std(axis=1) > 0
        if name == "guided_backprop":
            assert varies.all()
        else:
            # Where Grad-CAM is all zero the product is zero, shown as flat grey.
            assert varies.any() and (result[~varies] == 127).all()
        if channels == 1:
            # Grayscale gradients are replicated, not coloured.
            assert (result[..., 0] == result[..., 1]).all() and (
                result[..., 1] == result[..., 2]
            ).all()


def test_explain_batch_runs_every_stored_method_by_default_at_any_size() -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    for size in (8, 16, 40):
        out = explain_batch(model, model[6], images, classes, size)
        assert list(out) == list(STORED_METHODS)
        assert out["gradcam"].shape == (3, size, size)
        assert out["guided_backprop"].shape == out["guided_gradcam"].shape == (3, size, size, 3)


# --- exact values on hand-weighted nets (captum style) ----------------------------------------


def one_conv_net(head: list[list[float]]) -> nn.Sequential:
    """1x1 conv with weight 1 and bias 0 (so A = x), ReLU, global average pool, hand-set head."""
    conv = nn.Conv2d(1, 1, kernel_size=1)
    linear = nn.Linear(1, len(head))
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        linear.weight.copy_(torch.tensor(head))
        linear.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


X_4X4 = torch.tensor(
    [[1.0, -2.0, 3.0, 0.0], [-1.0, 4.0, -3.0, 2.0], [0.5, -0.5, 1.5, -4.0], [2.0, 1.0, -1.0, 0.0]]
)


def test_gradcam_exact_values_on_hand_weighted_net() -> None:
    model = one_conv_net([[2.0], [-3.0]])
    images = X_4X4[None, None].repeat(2, 1, 1, 1)
    classes = torch.tensor([0, 1])
    # y_c = w_c * mean(relu(A)), so dy_c/dA_ij = w_c * [A_ij > 0] / 16 and
    # alpha_c = mean_ij dy_c/dA_ij = w_c * (#positive) / 256.
    n_positive = float((X_4X4 > 0).sum())
    expected = torch.stack([torch.relu(w * n_positive / 256 * X_4X4) for w in (2.0, -3.0)])
    raw = gradcam_maps(model, model[0], images, classes)
    torch.testing.assert_close(raw, expected, rtol=1e-6, atol=1e-7)
    # Class 0 lights up where x > 0, class 1 (negative weight) where x < 0.
    shown = explain_batch(model, model[0], images, classes, 4, methods=["gradcam"])["gradcam"]
    scaled = expected / expected.flatten(1).max(dim=1).values[:, None, None]
    np.testing.assert_allclose(shown.astype(np.float32), scaled.numpy(), atol=1e-3)


def two_relu_net(inplace: bool) -> nn.Sequential:
    """x -> conv1x1 (weights 1, -1) -> ReLU -> conv1x1 (weights 2, -3) -> flatten -> linear.

    For x = [3, -2] the ReLU passes channel 0 at pixel 0 and channel 1 at pixel 1. Class 0
    (head [1, 1]) sends gradient -3 into the active unit of channel 1, which the guided rule
    drops; class 1 (head [1, -1]) sends only positive gradient into active units.
    """
    conv1 = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    conv2 = nn.Conv2d(2, 1, kernel_size=1, bias=False)
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv2.weight.copy_(torch.tensor([2.0, -3.0]).view(1, 2, 1, 1))
        linear.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
    return nn.Sequential(conv1, nn.ReLU(inplace=inplace), conv2, nn.Flatten(), linear)


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_exact_values_where_the_guided_rule_matters(inplace: bool) -> None:
    model = two_relu_net(inplace)
    images = torch.tensor([3.0, -2.0]).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    classes = torch.tensor([0, 1])
    # Hand-derived: class 0 -> guided [2, 0] (plain [2, 3]); class 1 -> [2, -3] (same as plain).
    expected = torch.tensor([[2.0, 0.0], [2.0, -3.0]]).view(2, 1, 1, 2)
    guided = guided_backprop_gradients(model, images, classes)
    assert torch.equal(guided, expected)
    pixels = images.clone().requires_grad_(True)
    model(pixels).gather(1, classes[:, None]).sum().backward()
    assert torch.equal(pixels.grad, torch.tensor([[2.0, 3.0], [2.0, -3.0]]).view(2, 1, 1, 2))


def test_guided_gradcam_exact_values_on_hand_weighted_net() -> None:
    model = one_conv_net([[2.0], [-3.0]])
    images = X_4X4[None, None].repeat(2, 1, 1, 1)
    classes = torch.tensor([0, 1])
    weighted = guided_gradcam_gradients(
        guided_backprop_gradients(model, images, classes),
        gradcam_maps(model, model[0], images, classes),
    )
    # Class 0: guided gradient 2/16 on positive pixels, times the CAM relu(x) / max relu(x).
    expected_0 = 2.0 / 16 * (X_4X4 > 0) * torch.relu(X_4X4) / X_4X4.max()
    torch.testing.assert_close(weighted[0, 0], expected_0, rtol=1e-5, atol=1e-7)
    # Class 1: every gradient into the ReLU is -3/16 < 0, so guided backprop (and the product)
    # is zero even where its CAM is not.
    assert torch.equal(weighted[1], torch.zeros_like(weighted[1]))


# --- agreement with pytorch-grad-cam ----------------------------------------------------------


def package_guided_backprop(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> np.ndarray:
    """The package's one-image-at-a-time reference: (B, C, H, W) float32."""
    # A copy, because the package swaps ReLU modules for new ones and drops inplace=True.
    reference = GuidedBackpropReLUModel(copy.deepcopy(model))
    per_image = [
        reference(image[None].clone(), int(c)) for image, c in zip(images, classes, strict=True)
    ]
    return np.stack(per_image).transpose(0, 3, 1, 2)


def assert_relative_close(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    assert np.abs(expected).max() > 0
    assert np.abs(actual - expected).max() <= rel * np.abs(expected).max()


def test_guided_backprop_matches_package_on_small_cnn() -> None:
    model = small_cnn()
    images, classes = random_batch(4, 3, 16)
    ours = guided_backprop_gradients(model, images, classes).numpy()
    assert_relative_close(ours, package_guided_backprop(model, images, classes), 1e-5)


def test_guided_backprop_matches_package_on_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 64, 64, generator=generator)
    classes = torch.tensor([5, 123, 999])
    ours = guided_backprop_gradients(model, images, classes).numpy()
    assert_relative_close(ours, package_guided_backprop(model, images, classes), 1e-5)


def test_gradcam_matches_package_and_ignores_inplace_relus() -> None:
    out_of_place = small_cnn(inplace=False)
    images, classes = random_batch(4, 3, 16)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    reference_model = copy.deepcopy(out_of_place)
    with GradCAM(reference_model, [reference_model[4]]) as cam:
        expected = cam(images, targets)
    ours = explain_batch(out_of_place, out_of_place[4], images, classes, 16, methods=["gradcam"])
    np.testing.assert_allclose(ours["gradcam"].astype(np.float32), expected, atol=2e-3)
    # The same weights with in-place ReLUs must give the same maps (the package alone would
    # read post-ReLU activations on CPU here).
    in_place = small_cnn(inplace=True)
    torch.testing.assert_close(
        gradcam_maps(in_place, in_place[4], images, classes),
        gradcam_maps(out_of_place, out_of_place[4], images, classes),
    )


def package_gradcam(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> np.ndarray:
    """The package's Grad-CAM: (B, H, W) float32 in [0, 1] at the input size."""
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with GradCAM(model, [layer]) as cam:
        return cam(images, targets)


def test_all_three_methods_match_the_package_on_resnet18() -> None:
    """The oracle for the engine on a non-sequential model whose target ReLU runs twice per
    block: the package's Grad-CAM of the block (``layer4``) is ours of its last ReLU call, and
    guided Grad-CAM is the package's guided backprop times its CAM, shown as the package shows
    gradients. Maps at the input size, so no resizing stands between the two."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    classes = torch.tensor([7, 421])
    ours = explain_batch(model, model.layer4[1].relu, images, classes, 64)
    reference = copy.deepcopy(model)
    cams = package_gradcam(reference, reference.layer4, images, classes)
    # One float16 rounding of values in [0, 1] (half a unit in the last place is 2.4e-4).
    np.testing.assert_allclose(ours["gradcam"].astype(np.float32), cams, atol=5e-4)
    guided = package_guided_backprop(model, images, classes)
    expected = {
        "guided_backprop": guided,
        "guided_gradcam": guided * cams[:, None],
    }
    for name, gradients in expected.items():
        shown = np.stack([deprocess_image(g.transpose(1, 2, 0)) for g in gradients])
        assert np.abs(ours[name].astype(int) - shown.astype(int)).max() <= 1, name


def test_gradients_display_matches_package_deprocess() -> None:
    grads = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(3)) * 1e-3
    ours = gradients_display(grads, 12).astype(int)
    expected = np.stack([deprocess_image(g.permute(1, 2, 0).numpy()) for g in grads]).astype(int)
    assert np.abs(ours - expected).max() <= 1


# --- batching, state, hooks -------------------------------------------------------------------


def test_batch_result_equals_per_image_result() -> None:
    model = small_cnn()
    images, classes = random_batch(6, 3, 16)
    batched = explain_batch(model, model[4], images, classes, 20)
    singles = [
        explain_batch(model, model[4], images[i : i + 1], classes[i : i + 1], 20) for i in range(6)
    ]
    for name, result in batched.items():
        per_image = np.concatenate([single[name] for single in singles])
        diff = np.abs(result.astype(np.float32) - per_image.astype(np.float32)).max()
        assert diff <= (1e-3 if name == "gradcam" else 1), name


def test_no_hooks_left_after_100_runs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    images, classes = digits_batch(2)
    before = model_snapshot(model)
    capture = FeatureCapture(["1", "3"], _pool)
    for _ in range(100):
        explain_batch(model, model[2], images, classes, 8)  # the dashboard's call
        explain(model, model[2], images, None, STORED_METHODS, 8, features=capture)  # precompute's
    assert hooks_left(model) == []
    assert_same_snapshot(before, model_snapshot(model))


def test_model_state_restored() -> None:
    model = small_cnn()
    model.train()
    model[1].eval()  # mixed per-module modes must come back as they were
    model[0].weight.requires_grad_(False)
    model[11].weight.grad = torch.full_like(model[11].weight, 7.0)
    images, classes = random_batch(3, 3, 16)
    before = model_snapshot(model)
    explain_batch(model, model[4], images, classes, 16)
    assert_same_snapshot(before, model_snapshot(model))
    assert model.training


def test_model_restored_and_unhooked_when_the_forward_fails() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), Boom())
    model.train()
    before = model_snapshot(model)
    for name in EXPLAINERS:
        with pytest.raises(RuntimeError, match="boom"):
            explain_batch(
                model, model[0], torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), 8, methods=[name]
            )
        assert hooks_left(model) == []
        assert_same_snapshot(before, model_snapshot(model))


def test_explanations_are_the_same_inside_no_grad() -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    outside = explain_batch(model, model[4], images, classes, 16)
    with torch.no_grad():
        inside = explain_batch(model, model[4], images, classes, 16)
    for name in STORED_METHODS:
        np.testing.assert_array_equal(outside[name], inside[name])


def test_batching_does_not_mix_images() -> None:
    """Changing one image must leave the others' explanations untouched (eval-mode BatchNorm,
    one summed backward)."""
    model = small_cnn()
    images, classes = random_batch(4, 3, 16)
    changed = images.clone()
    changed[0] = torch.randn(3, 16, 16)
    a = guided_backprop_gradients(model, images, classes)
    b = guided_backprop_gradients(model, changed, classes)
    torch.testing.assert_close(a[1:], b[1:])
    assert not torch.allclose(a[0], b[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = small_cnn()
    images, classes = random_batch(4, 3, 16)
    on_cpu = explain_batch(model, model[4], images, classes, 16)
    model_gpu = copy.deepcopy(model).cuda()
    on_gpu = explain_batch(model_gpu, model_gpu[4], images.cuda(), classes.cuda(), 16)
    for name in STORED_METHODS:
        diff = np.abs(on_cpu[name].astype(np.float32) - on_gpu[name].astype(np.float32)).max()
        assert diff <= (2e-3 if name == "gradcam" else 2), name
    assert hooks_left(model_gpu) == []


# --- errors -----------------------------------------------------------------------------------


def test_class_out_of_range_is_a_user_error_and_leaves_no_hooks() -> None:
    model = small_cnn()
    images, _ = random_batch(2, 3, 16)
    for name in EXPLAINERS:
        with pytest.raises(UserError, match="out of range .* 10 outputs"):
            explain_batch(model, model[4], images, torch.tensor([1, 10]), 8, methods=[name])
        assert hooks_left(model) == []
    with pytest.raises(UserError, match=">= 0"):
        explain_batch(model, model[4], images, torch.tensor([-1, 0]), 8)


def forwards_counted(model: nn.Module, run: Callable[[], object]) -> int:
    """How many times ``run`` calls ``model`` (its root module) forward."""
    calls = 0

    def count(_module: nn.Module, _inputs: object, _output: object) -> None:
        nonlocal calls
        calls += 1

    handle = model.register_forward_hook(count)
    try:
        run()
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize("with_batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_the_engine_runs_its_forward_pass_only_when_something_reads_it(
    with_batch_norm: bool,
) -> None:
    """Classes given and a method that runs its own passes (LRP, saliency): no forward pass of
    the engine's, unless LRP must compare a canonized model's logits with the model's own
    (BatchNorm merged), and then the logits it read are returned."""
    model = small_cnn()
    if not with_batch_norm:
        model[1] = nn.Identity()
    images, classes = random_batch(2, 3, 16)
    expected = model(images).detach()
    for name in ("lrp", "saliency", "gradcam"):
        own = explain(model, model[4], images, classes, [name], 8)
        reads_logits = name == "lrp" and with_batch_norm
        engine_forward = name == "gradcam" or reads_logits
        if engine_forward:
            assert own.logits is not None
            torch.testing.assert_close(own.logits, expected)
        else:
            assert own.logits is None
        # The method's own pass (LRP, saliency), and the engine's when it runs.
        calls = forwards_counted(
            model, lambda name=name: explain(model, model[4], images, classes, [name], 8)
        )
        assert calls == (name != "gradcam") + engine_forward, name
        # Without classes the engine's pass gives them, and its logits.
        top1 = explain(model, model[4], images, None, [name], 8)
        assert top1.logits is not None and torch.equal(top1.classes, expected.argmax(1))
    assert hooks_left(model) == []


def test_other_user_errors_name_the_fix() -> None:
    model = small_cnn()
    images, classes = random_batch(2, 3, 16)
    with pytest.raises(UserError, match="'lime'; choose from gradcam, guided_backprop, "):
        explain_batch(model, model[4], images, classes, 8, methods=["lime"])
    with pytest.raises(UserError, match="1-channel or 3-channel"):
        explain_batch(model, model[4], torch.randn(2, 4, 16, 16), classes, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(small_cnn())
    with pytest.raises(UserError, match="python:FILE.py"):
        explain_batch(scripted, scripted[4], images, classes, 8)
    with pytest.raises(UserError, match="pick a convolutional layer"):
        explain_batch(model, model[11], images, classes, 8, methods=["gradcam"])
    with pytest.raises(ValueError, match="not a submodule"):
        explain_batch(model, nn.Conv2d(3, 3, 1), images, classes, 8, methods=["gradcam"])
    with pytest.raises(ValueError, match="out_size"):
        explain_batch(model, model[4], images, classes, 0)


# --- default Grad-CAM layer -------------------------------------------------------------------


def layer_spec(layer_id: str, layer_type: str, shape: tuple[int, ...]) -> LayerSpec:
    return LayerSpec(layer_id, layer_type, shape, 0, (), layer_id.rpartition(".")[0])


def test_last_spatial_conv_layer_skips_1x1_outputs() -> None:
    layers = [
        layer_spec("features.0", "Conv2d", (64, 32, 32)),
        layer_spec("features.1", "ReLU", (64, 32, 32)),
        layer_spec("features.2", "Conv2d", (128, 4, 1)),
        layer_spec("features.3", "BatchNorm2d", (128, 4, 1)),
        layer_spec("head.conv", "Conv2d", (10, 1, 1)),
        layer_spec("head.fc", "Linear", (10,)),
    ]
    # The conv's rectified/normalised output, not its raw (often negative) output.
    assert last_spatial_conv_layer(layers) == "features.3"
    assert last_spatial_conv_layer(layers[:2]) == "features.1"
    assert last_spatial_conv_layer(layers[:1]) == "features.0"


def test_last_spatial_conv_layer_on_resnet18_shapes() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    layers: list[LayerSpec] = []
    hooks = [
        module.register_forward_hook(
            lambda m, i, o, name=name: layers.append(
                layer_spec(name, type(m).__name__, tuple(o.shape[1:]))
            )
        )
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert last_spatial_conv_layer(layers) == "layer4.1.relu"
    # At 32x32 the last block is 1x1, so the default moves back to where maps still have a place.
    assert (
        last_spatial_conv_layer(
            [
                replace(layer, output_shape=(layer.output_shape[0], 1, 1))
                if layer.id.startswith("layer4")
                else layer
                for layer in layers
            ]
        )
        == "layer3.1.relu"
    )


def test_last_spatial_conv_layer_without_conv_is_a_user_error() -> None:
    layers = [
        layer_spec("0", "Flatten", (64,)),
        layer_spec("1", "Linear", (10,)),
        layer_spec("2", "Conv2d", (10, 1, 1)),
    ]
    with pytest.raises(UserError, match="Grad-CAM needs a Conv2d layer"):
        last_spatial_conv_layer(layers)


# --- the precompute's call and the dashboard's call ---------------------------------------------


def _pool(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().flatten(1).clone()


@pytest.mark.parametrize("model_name", ["small_cnn", "resnet18"])
def test_precompute_and_dashboard_calls_give_identical_maps(model_name: str) -> None:
    """The precompute's call (top-1 classes, every layer captured in the same forward pass)
    gives the features and logits of a plain capture, and exactly the maps the dashboard's call
    (the class chosen, nothing captured) gives for the same samples and classes."""
    if model_name == "resnet18":
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
        target, layers = model.layer4[1].relu, ["input", "layer1.0.relu", "layer4.1.relu", "fc"]
        images, _ = random_batch(3, 3, 64)
    else:
        model = small_cnn()
        target, layers = model[7], ["input", "2", "7", "11"]
        images, _ = random_batch(5, 3, 16)
    before = model_snapshot(model)
    precompute = explain(
        model, target, images, None, STORED_METHODS, 20, features=FeatureCapture(layers, _pool)
    )
    assert_same_snapshot(before, model_snapshot(model))
    assert hooks_left(model) == []

    expected_logits, expected_features = capture_layers(model, images, layers, transform=_pool)
    torch.testing.assert_close(precompute.logits, expected_logits)
    assert torch.equal(precompute.classes, expected_logits.argmax(1))
    assert precompute.features.keys() == expected_features.keys()
    for layer, values in expected_features.items():
        torch.testing.assert_close(precompute.features[layer], values, msg=layer)
    dashboard = explain_batch(model, target, images, expected_logits.argmax(1), 20)
    assert list(precompute.maps) == list(dashboard) == list(STORED_METHODS)
    for name in STORED_METHODS:
        np.testing.assert_array_equal(precompute.maps[name], dashboard[name], err_msg=name)


def test_gradcam_gradient_is_plain_not_guided() -> None:
    """Grad-CAM weighs the target layer by the plain gradient, also when it shares its forward
    pass with guided backprop: a head whose ReLU sees a negative incoming gradient must still
    pass it to the CAM (the guided rule would zero it)."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
        nn.ReLU(),
        nn.Linear(2, 2, bias=False),
    ).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model[4].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        model[6].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    images = torch.rand(1, 1, 4, 4) + 0.5
    shared = explain(model, model[1], images, None, STORED_METHODS, 4)
    assert shared.classes.tolist() == [1]
    alone = explain_batch(model, model[1], images, torch.tensor([1]), 4, methods=["gradcam"])
    np.testing.assert_array_equal(shared.maps["gradcam"], alone["gradcam"])
    reference = copy.deepcopy(model)
    expected = package_gradcam(reference, reference[1], images, torch.tensor([1]))
    np.testing.assert_allclose(shared.maps["gradcam"].astype(np.float32), expected, atol=5e-4)
    assert shared.maps["gradcam"].max() > 0.5  # a real map, not the empty one a guided rule gives
