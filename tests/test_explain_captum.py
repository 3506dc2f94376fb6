"""The Captum-based methods (saliency, SmoothGrad, Integrated Gradients, occlusion): exact values
on hand-weighted nets, agreement with Captum called directly, occlusion's probabilities against
hand-occluded images, progress and cancel, and a model left exactly as it was found."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from torch import nn

from pipelines.explain import EXPLAINERS, Cancelled, Display, Passes, explain, run_passes
from pipelines.explain.base import (
    Progress,
    cam_display,
    no_progress,
    preserved_model_state,
    signed_display,
)
from pipelines.explain.methods import integrated_gradients, occlusion, smoothgrad
from pipelines.explain.methods.integrated_gradients import integrated_gradients_maps
from pipelines.explain.methods.occlusion import (
    occlusion_drops,
    occlusion_grid,
    probability_display,
)
from pipelines.explain.methods.saliency import saliency_maps
from pipelines.explain.methods.smoothgrad import smoothgrad_maps
from tests.test_explain import (
    X_4X4,
    assert_same_snapshot,
    digits_batch,
    hooks_left,
    model_snapshot,
    one_conv_net,
    random_batch,
    small_cnn,
)

CAPTUM_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "occlusion")


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Small nets on a shared 2-core machine: a second OpenMP thread only spin-waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def method_passes(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    method: Callable[[Passes], object],
    report: Progress = no_progress,
) -> object:
    """Run one method's raw function as the engine runs it: eval mode, frozen parameters."""
    with torch.enable_grad(), preserved_model_state(model):
        passes, _ = run_passes(model, None, images, classes, frozenset())
        return method(replace(passes, report=report))


def captum_smoothgrad(model: nn.Module, image: torch.Tensor, target: int) -> torch.Tensor:
    """Captum's SmoothGrad of one (1, C, H, W) image with the method's documented settings,
    seeded as the method seeds it: (1, H, W) float32, channels maxed."""
    torch.manual_seed(smoothgrad.SEED)
    grads = NoiseTunnel(Saliency(model)).attribute(
        image,
        nt_type="smoothgrad",
        nt_samples=25,
        nt_samples_batch_size=5,
        stdevs=0.15 * float(image.max() - image.min()),
        target=target,
    )
    return grads.amax(dim=1)


def captum_integrated_gradients(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Captum's IG with 32 steps from a zero baseline, the whole batch at once: (B, H, W)."""
    attributions = IntegratedGradients(model).attribute(
        images, baselines=0.0, target=classes, n_steps=32
    )
    return attributions.sum(dim=1)


def captum_occlusion(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Captum's occlusion of softmax probabilities, window = stride = ceil(side / 8), zero
    baseline, the whole batch at once: (B, H, W)."""
    channels, height, width = images.shape[1:]
    window = (channels, math.ceil(height / 8), math.ceil(width / 8))

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x), dim=1)

    # All patches in one pass (a batching choice; the values do not depend on it).
    drops = Occlusion(probabilities).attribute(
        images,
        sliding_window_shapes=window,
        strides=window,
        baselines=0.0,
        target=classes,
        perturbations_per_eval=64,
    )
    return drops[:, 0]


def hidden_patch_probabilities(
    model: nn.Module, image: torch.Tensor, target: int, window: int
) -> np.ndarray:
    """By hand: p(target) with each window x window patch of a (C, H, W) image set to zero, the
    last row and column of patches cut at the border. (gh, gw) float32."""
    height, width = image.shape[1:]
    rows, cols = math.ceil(height / window), math.ceil(width / window)
    out = np.zeros((rows, cols), np.float32)
    with torch.no_grad():
        for i in range(rows):
            for j in range(cols):
                hidden = image.clone()
                hidden[:, i * window : (i + 1) * window, j * window : (j + 1) * window] = 0.0
                out[i, j] = torch.softmax(model(hidden[None]), dim=1)[0, target]
    return out


# --- registry ---------------------------------------------------------------------------------


def test_the_captum_methods_are_registered_as_the_page_needs_them() -> None:
    kinds = {name: (EXPLAINERS[name].display, EXPLAINERS[name].slow) for name in CAPTUM_METHODS}
    assert kinds == {
        "saliency": (Display.HEAT, False),
        "smoothgrad": (Display.HEAT, True),
        "integrated_gradients": (Display.SIGNED, True),
        "occlusion": (Display.SIGNED, True),
    }
    assert all(EXPLAINERS[name].needs == frozenset() for name in CAPTUM_METHODS)
    assert not any(EXPLAINERS[name].uses_target_layer for name in CAPTUM_METHODS)


def test_documented_settings() -> None:
    assert (smoothgrad.SAMPLES, smoothgrad.NOISE_LEVEL) == (25, 0.15)
    assert (integrated_gradients.STEPS, integrated_gradients.BASELINE) == (32, 0.0)
    assert (occlusion.GRID, occlusion.BASELINE) == (8, 0.0)
    # Window = stride = ceil(side / 8); the last patch is narrower when the side is no multiple.
    assert occlusion_grid(224, 224) == occlusion.OcclusionGrid((28, 28), (8, 8))
    assert occlusion_grid(32, 32) == occlusion.OcclusionGrid((4, 4), (8, 8))
    assert occlusion_grid(20, 8) == occlusion.OcclusionGrid((3, 1), (7, 8))


# --- display ----------------------------------------------------------------------------------


def test_signed_display_divides_by_each_images_largest_magnitude() -> None:
    maps = torch.tensor(
        [[[2.0, -4.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.25], [0, 0]]]
    )
    shown = signed_display(maps, 2)
    assert shown.shape == (3, 2, 2) and shown.dtype == np.float16
    expected = [[[0.5, -1.0], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.5], [0.0, 0.0]]]
    np.testing.assert_array_equal(shown, np.array(expected, np.float16))
    # Resized first, then scaled: the shown map still spans the colour scale.
    big = signed_display(torch.randn(2, 40, 40, generator=torch.Generator().manual_seed(0)), 16)
    assert (np.abs(big).reshape(2, -1).max(axis=1) == 1.0).all()


def test_probability_display_keeps_probability_units() -> None:
    drops = torch.tensor([[[0.25, -0.5], [0.0, 0.125]]])
    np.testing.assert_array_equal(probability_display(drops, 2), drops.numpy().astype(np.float16))
    upsampled = probability_display(drops, 8)
    assert upsampled.min() >= -0.5 and upsampled.max() <= 0.25


# --- exact values on hand-weighted nets -------------------------------------------------------

# one_conv_net: y_c = w_c * mean(relu(x)) over the 16 pixels of a 4x4 image, w = (2, -3).
HEAD = [[2.0], [-3.0]]


def hand_batch() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    return one_conv_net(HEAD), X_4X4[None, None].repeat(2, 1, 1, 1), torch.tensor([0, 1])


def test_saliency_exact_values() -> None:
    model, images, classes = hand_batch()
    # dy_c/dx_ij = w_c * [x_ij > 0] / 16 (PyTorch's ReLU has gradient 0 at 0); |.| per pixel.
    positive = (X_4X4 > 0).float()
    expected = torch.stack([2.0 / 16 * positive, 3.0 / 16 * positive])
    raw = method_passes(model, images, classes, saliency_maps)
    torch.testing.assert_close(raw, expected, rtol=0, atol=0)
    direct = Saliency(model).attribute(images.clone().requires_grad_(), target=classes)
    torch.testing.assert_close(raw, direct.amax(dim=1), rtol=0, atol=0)
    # Displayed: 1 where the pixel is positive, 0 elsewhere (min-max per image).
    shown = explain(model, None, images, classes, ["saliency"], 4).maps["saliency"]
    np.testing.assert_allclose(
        shown.astype(np.float32), positive.expand(2, 4, 4).numpy(), atol=1e-3
    )


def test_integrated_gradients_exact_values() -> None:
    model, images, classes = hand_batch()
    # On the path a * x the ReLU keeps the same pixels, so the gradient is constant:
    # IG_ij = x_ij * w_c * [x_ij > 0] / 16 = w_c * relu(x_ij) / 16, for any number of steps.
    expected = torch.stack([w * torch.relu(X_4X4) / 16 for w in (2.0, -3.0)])
    raw = method_passes(model, images, classes, integrated_gradients_maps)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(raw, captum_integrated_gradients(model, images, classes))
    # Completeness: the map sums to y_c(x) - y_c(0) = y_c(x) here.
    with torch.no_grad():
        scores = model(images).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(raw.sum(dim=(1, 2)), scores, rtol=1e-5, atol=1e-6)
    # Displayed: relu(x) / max relu(x), positive for class 0 and negative for class 1.
    shown = explain(model, None, images, classes, ["integrated_gradients"], 4).maps
    unit = (torch.relu(X_4X4) / X_4X4.max()).numpy()
    np.testing.assert_allclose(
        shown["integrated_gradients"].astype(np.float32), np.stack([unit, -unit]), atol=1e-3
    )


def test_occlusion_exact_values() -> None:
    model, images, classes = hand_batch()
    # Logits (2m, -3m) with m = mean(relu(x)), so p_0 = sigmoid(5m) and p_1 = sigmoid(-5m).
    # A 4x4 image has 1-pixel patches; hiding pixel ij lowers m by relu(x_ij) / 16.
    m = float(torch.relu(X_4X4).mean())

    def p(c: int, mean: float) -> float:
        return 1 / (1 + math.exp(-5 * mean if c == 0 else 5 * mean))

    hidden = [[[p(c, m - max(v, 0.0) / 16) for v in row] for row in X_4X4.tolist()] for c in (0, 1)]
    expected_hidden = torch.tensor(hidden)
    expected_drops = torch.tensor([p(0, m), p(1, m)])[:, None, None] - expected_hidden
    result = method_passes(model, images, classes, occlusion_drops)
    torch.testing.assert_close(result.drops, expected_drops, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.probability, torch.tensor([p(0, m), p(1, m)]))
    torch.testing.assert_close(result.occluded_probability, expected_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.drops, captum_occlusion(model, images, classes))
    # Hiding a positive pixel lowers class 0 (positive drop) and raises class 1 (negative).
    assert (result.drops[0][X_4X4 > 0] > 0).all() and (result.drops[1][X_4X4 > 0] < 0).all()
    assert (result.drops[:, X_4X4 <= 0] == 0).all()


# --- occlusion's probabilities against hand-occluded images -----------------------------------


@pytest.mark.parametrize("channels,size,window", [(3, 20, 3), (1, 8, 1), (3, 16, 2)])
def test_occluded_probability_is_the_model_on_the_hand_occluded_image(
    channels: int, size: int, window: int
) -> None:
    model = small_cnn(channels)
    if channels == 1:
        images, classes = digits_batch(2)
    else:
        images, classes = random_batch(2, channels, size)
    out = explain(model, None, images, classes, ["occlusion"], size)
    extras = out.extras["occlusion"]
    with torch.no_grad():
        intact = torch.softmax(model(images), dim=1).gather(1, classes[:, None])[:, 0]
    np.testing.assert_allclose(extras["probability"], intact.numpy(), rtol=1e-6)
    for b in range(2):
        expected = hidden_patch_probabilities(model, images[b], int(classes[b]), window)
        assert extras["occluded_probability"][b].shape == expected.shape
        assert extras["occluded_probability"].dtype == np.float32
        np.testing.assert_allclose(extras["occluded_probability"][b], expected, atol=1e-6)
        # The map at the input size holds each patch's drop on all its pixels.
        drops = np.kron(intact[b].item() - expected, np.ones((window, window)))[:size, :size]
        np.testing.assert_allclose(out.maps["occlusion"][b], drops, atol=2e-3)


def test_occlusion_measures_the_models_own_decode() -> None:
    """A model file's ``decode`` (here independent sigmoids, as a multi-label head) is what
    occlusion measures, not a softmax."""
    model = small_cnn()
    images, classes = random_batch(2, 3, 16)

    def sigmoid(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    extras = explain(model, None, images, classes, ["occlusion"], 16, decode=sigmoid).extras
    with torch.no_grad():
        logits = model(images)
        hidden = images.clone()
        hidden[:, :, :2, :2] = 0.0  # the first of 8 x 8 patches of 2 px
        hidden_logits = model(hidden)
    expected = torch.sigmoid(logits).gather(1, classes[:, None])[:, 0]
    np.testing.assert_allclose(extras["occlusion"]["probability"], expected.numpy(), rtol=1e-6)
    first = torch.sigmoid(hidden_logits).gather(1, classes[:, None])[:, 0]
    np.testing.assert_allclose(
        extras["occlusion"]["occluded_probability"][:, 0, 0], first.numpy(), atol=1e-6
    )


# --- against Captum on torchvision models, through explain() ----------------------------------


def captum_expected(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, size: int
) -> dict[str, np.ndarray]:
    """Each method's display array from Captum called directly plus the display helpers;
    occlusion's raw drops instead, (B, H, W) float32, which its extras are checked against."""
    smooth = torch.cat(
        [
            captum_smoothgrad(model, image[None], int(c))
            for image, c in zip(images, classes, strict=True)
        ]
    )
    salient = Saliency(model).attribute(images.clone().requires_grad_(), target=classes)
    return {
        "saliency": cam_display(salient.amax(dim=1), size),
        "smoothgrad": cam_display(smooth, size),
        "integrated_gradients": signed_display(
            captum_integrated_gradients(model, images, classes), size
        ),
        "occlusion": captum_occlusion(model, images, classes).numpy(),
    }


@pytest.mark.parametrize("architecture", ["vgg11", "resnet18"])
def test_methods_match_captum_on_torchvision_models(architecture: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(architecture, weights=None, num_classes=10).eval()
    # One image on VGG11 (~10x ResNet18's cost at 64 px), two on ResNet18 for the batch path.
    images, classes = random_batch(1 if architecture == "vgg11" else 2, 3, 64, seed=5)
    before = model_snapshot(model)
    out = explain(model, None, images, classes, CAPTUM_METHODS, 32)
    assert_same_snapshot(before, model_snapshot(model))
    assert hooks_left(model) == []
    expected = captum_expected(model, images, classes, 32)
    # Occlusion's drops are kept raw (float32) for its extras; its display is made from them.
    drops = expected["occlusion"]
    expected["occlusion"] = probability_display(torch.from_numpy(drops), 32)
    for name in CAPTUM_METHODS:
        # Occlusion is in probability units, ~1e-4 for a random-init net: compare relative to
        # the map's peak. float16 keeps 11 bits; summation order may differ by a few ulps.
        peak = np.abs(expected[name].astype(np.float32)).max()
        assert peak > 0, name  # a real map, not an empty one
        diff = np.abs(out.maps[name].astype(np.float32) - expected[name].astype(np.float32))
        assert diff.max() <= 2e-3 * peak, name
    with torch.no_grad():
        intact = torch.softmax(model(images), dim=1).gather(1, classes[:, None])[:, 0].numpy()
    extras = out.extras["occlusion"]
    np.testing.assert_allclose(extras["probability"], intact, rtol=1e-6)
    # 64 px: 8 x 8 patches of 8 px; each patch's top-left pixel holds its drop.
    hidden = intact[:, None, None] - drops[:, ::8, ::8]
    np.testing.assert_allclose(extras["occluded_probability"], hidden, rtol=1e-5, atol=1e-7)


# --- SmoothGrad's seed ------------------------------------------------------------------------


def test_smoothgrad_is_seeded_per_image_and_leaves_the_callers_rng_alone() -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = method_passes(model, images, classes, smoothgrad_maps)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's generator is untouched
    again = method_passes(model, images, classes, smoothgrad_maps)
    assert torch.equal(first, again)
    # An image's map does not depend on its place in the batch.
    alone = method_passes(model, images[2:], classes[2:], smoothgrad_maps)
    torch.testing.assert_close(alone[0], first[2])
    # And it is Captum's NoiseTunnel with the documented samples, noise level and seed.
    direct = captum_smoothgrad(model, images[1:2], int(classes[1]))
    torch.testing.assert_close(first[1:2], direct)
    # The noise smooths: the map differs from plain saliency.
    assert not torch.allclose(first, method_passes(model, images, classes, saliency_maps))


# --- progress, cancel, model state -------------------------------------------------------------

# Forward calls each method makes for a batch of B images of 16 x 16 px.
EXPECTED_PASSES = {
    "saliency": lambda b: 1,
    "smoothgrad": lambda b: b * 5,  # 25 samples, 5 per pass
    "integrated_gradients": lambda b: b * 4,  # 32 steps, 8 per pass
    "occlusion": lambda b: 1 + b * (1 + 4),  # intact batch; per image intact + 64 patches / 16
}


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_progress_counts_every_forward_pass(name: str) -> None:
    model = small_cnn()
    images, classes = random_batch(2, 3, 16)
    heard: list[tuple[int, int]] = []
    explain(model, None, images, classes, [name], 16, progress=lambda d, t: heard.append((d, t)))
    total = EXPECTED_PASSES[name](2)
    assert heard == [(done, total) for done in range(total + 1)]


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_cancel_stops_the_method_after_the_first_pass_and_restores_the_model(name: str) -> None:
    model = small_cnn()
    model.train()
    model[1].eval()
    model[11].weight.grad = torch.full_like(model[11].weight, 7.0)
    images, classes = random_batch(2, 3, 16)
    before = model_snapshot(model)
    heard: list[int] = []

    def cancel_after_first(done: int, _total: int) -> None:
        heard.append(done)
        if done >= 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        explain(model, None, images, classes, [name], 16, progress=cancel_after_first)
    assert heard == [0, 1]  # stopped at once, not after its remaining passes
    assert hooks_left(model) == []
    assert_same_snapshot(before, model_snapshot(model))
    assert model.training


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_model_left_as_found_and_unhooked_after_100_runs(name: str) -> None:
    model = small_cnn(1)
    model.train()
    model[0].weight.requires_grad_(False)
    images, classes = digits_batch(1)
    images = images[:, :, :4, :4]  # the smallest image the net takes: 100 runs stay fast
    before = model_snapshot(model)
    for _ in range(100):
        explain(model, None, images, classes, [name], 4)
    assert hooks_left(model) == []
    assert_same_snapshot(before, model_snapshot(model))


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_channels_last_and_no_grad_give_the_same_maps(name: str) -> None:
    model = small_cnn()
    images, classes = random_batch(2, 3, 16)
    plain = explain(model, None, images, classes, [name], 16)
    with torch.no_grad():
        inside = explain(model, None, images, classes, [name], 16)
    np.testing.assert_array_equal(plain.maps[name], inside.maps[name])
    model.to(memory_format=torch.channels_last)
    last = explain(
        model, None, images.contiguous(memory_format=torch.channels_last), classes, [name], 16
    )
    diff = np.abs(plain.maps[name].astype(np.float32) - last.maps[name].astype(np.float32))
    assert diff.max() <= 2e-3


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_one_channel_images(name: str) -> None:
    model = small_cnn(1)
    images, classes = digits_batch(3)
    shown = explain(model, None, images, classes, [name], 12).maps[name]
    assert shown.shape == (3, 12, 12) and shown.dtype == np.float16 and np.isfinite(shown).all()
    assert np.abs(shown).reshape(3, -1).max(axis=1).min() > 0  # every image has a map


@pytest.mark.parametrize("name", CAPTUM_METHODS)
def test_batch_result_equals_per_image_result(name: str) -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    batched = explain(model, None, images, classes, [name], 16)
    for i in range(3):
        single = explain(model, None, images[i : i + 1], classes[i : i + 1], [name], 16)
        diff = np.abs(batched.maps[name][i].astype(np.float32) - single.maps[name][0])
        assert diff.max() <= 2e-3, i
        for extra, values in batched.extras.get(name, {}).items():
            np.testing.assert_allclose(values[i], single.extras[name][extra][0], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = small_cnn()
    images, classes = random_batch(3, 3, 16)
    on_cpu = explain(model, None, images, classes, CAPTUM_METHODS, 16)
    model_gpu = small_cnn().cuda()
    gpu_images, gpu_classes = images.cuda(), classes.cuda()
    on_gpu = explain(model_gpu, None, gpu_images, gpu_classes, CAPTUM_METHODS, 16)
    # SmoothGrad draws its noise from the CUDA generator there: seeded, but other noise.
    for name in ("saliency", "integrated_gradients", "occlusion"):
        diff = np.abs(on_cpu.maps[name].astype(np.float32) - on_gpu.maps[name].astype(np.float32))
        assert diff.max() <= 2e-3, name
    for extra, values in on_cpu.extras["occlusion"].items():
        np.testing.assert_allclose(on_gpu.extras["occlusion"][extra], values, atol=1e-5)
    again = explain(model_gpu, None, gpu_images, gpu_classes, ["smoothgrad"], 16)
    # Same noise; cuDNN's backward may still sum in another order.
    np.testing.assert_allclose(
        again.maps["smoothgrad"].astype(np.float32),
        on_gpu.maps["smoothgrad"].astype(np.float32),
        atol=2e-3,
    )
    assert hooks_left(model_gpu) == []
