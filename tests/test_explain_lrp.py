"""LRP (``pipelines/explain/methods/lrp.py``, ``lrp_rules.py``): exact values on a hand-weighted net, conservation,
agreement with zennit's own composites and canonizers on torchvision models, the canonizers
chosen for other models, and a model left exactly as it was found, also after a failure."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from zennit.attribution import Gradient as ZennitGradient
from zennit.canonizers import Canonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat
from zennit.core import Composite, Hook, stabilize
from zennit.rules import AlphaBeta
from zennit.torchvision import ResNetCanonizer

from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, Display, explain, lrp_rules
from pipelines.explain.base import signed_display
from pipelines.explain.lrp_rules import (
    EPSILON,
    STABILIZER,
    LeanRule,
    SignedShift,
    batch_norm_pairs,
    canonizers_for,
    epsilon_alpha2_beta1_flat,
    epsilon_plus_flat,
    input_gradient,
    lean_maps,
    relevance_at_pixels,
)
from tests.test_explain import (
    assert_same_snapshot,
    digits_batch,
    hooks_left,
    model_snapshot,
    random_batch,
    small_cnn,
)

METHODS = ("lrp", "lrp_alpha_beta")
OURS = {"lrp": epsilon_plus_flat, "lrp_alpha_beta": epsilon_alpha2_beta1_flat}
ZENNITS = {"lrp": EpsilonPlusFlat, "lrp_alpha_beta": EpsilonAlpha2Beta1Flat}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # As in test_explain: a second OpenMP thread only spin-waits on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def zennit_relevance(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, composite: Composite
) -> torch.Tensor:
    """zennit's own attributor, used as its documentation shows, starting from each image's class
    logit: (B, C, H, W) float32."""

    def class_logit(output: torch.Tensor) -> torch.Tensor:
        index = classes.view(-1, 1)
        return torch.zeros_like(output).scatter_(1, index, output.gather(1, index)).detach()

    with ZennitGradient(model, composite) as attributor:
        _, relevance = attributor(images, class_logit)
    return relevance


def ours(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, method: str = "lrp"
) -> torch.Tensor:
    """Raw relevance, (B, C, H, W) float32, with the canonizers LRP chooses for ``model``."""
    composite = OURS[method](canonizers_for(model))
    return relevance_at_pixels(model, images, classes, composite)[1]


def storage(model: nn.Module) -> list[tuple[str, int, int]]:
    """Which tensor objects and memory hold the parameters and buffers: canonizers swap ``.data``
    and must put the originals back, not equal copies."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [(name, id(tensor), tensor.data_ptr()) for name, tensor in tensors]


def assert_left_as_found(model: nn.Module, before: dict, before_storage: list) -> None:
    assert hooks_left(model) == []
    assert_same_snapshot(before, model_snapshot(model))
    assert storage(model) == before_storage


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval-mode statistics and affine parameters, so merging BatchNorm matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
    return model.eval()


# --- registry and display ------------------------------------------------------------------------


def test_both_composites_are_registered_as_fast_signed_methods() -> None:
    for name in METHODS:
        explainer = EXPLAINERS[name]
        assert explainer.display is Display.SIGNED
        assert not explainer.slow and explainer.needs == frozenset()
        assert not explainer.uses_target_layer


def test_signed_display_scales_each_map_by_its_largest_magnitude() -> None:
    maps = torch.tensor(
        [
            [[2.0, -4.0], [1.0, 0.0]],  # peak |-4|: the strongest evidence is against
            [[0.0, 0.0], [0.0, 0.0]],  # all zero stays zero, not NaN
            [[1e-12, -5e-13], [0.0, 0.0]],  # tiny maps still span the scale
        ]
    )
    shown = signed_display(maps, 2)
    assert shown.shape == (3, 2, 2) and shown.dtype == np.float16
    expected = [[[0.5, -1.0], [0.25, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, -0.5], [0.0, 0.0]]]
    np.testing.assert_array_equal(shown, np.array(expected, dtype=np.float16))
    bigger = signed_display(torch.randn(4, 5, 5, generator=torch.Generator().manual_seed(0)), 13)
    assert bigger.shape == (4, 13, 13) and bigger.min() >= -1 and bigger.max() <= 1


# --- exact values and conservation ---------------------------------------------------------------


def hand_net() -> nn.Sequential:
    """1x2-pixel grey input -> 1x1 conv (1 -> 2, weights 1, -1) -> ReLU -> 1x1 conv (2 -> 2,
    rows [1, 2] and [-1, 1]) -> ReLU -> flatten -> linear (rows [1, -1, 3, 3] and
    [-1, 0, 0, -1]); no biases."""
    conv1 = nn.Conv2d(1, 2, 1, bias=False)
    conv2 = nn.Conv2d(2, 2, 1, bias=False)
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv2.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]).view(2, 2, 1, 1))
        linear.weight.copy_(torch.tensor([[1.0, -1.0, 3.0, 3.0], [-1.0, 0.0, 0.0, -1.0]]))
    return nn.Sequential(
        conv1, nn.ReLU(inplace=True), conv2, nn.ReLU(inplace=True), nn.Flatten(), linear
    ).eval()


def test_lrp_exact_values_on_hand_weighted_net() -> None:
    """For x = [2, -1]: conv1 + ReLU give channels [2, 0] and [0, 1]; conv2 + ReLU give
    [2, 2] and [0, 1], flattened [2, 2, 0, 1]; logits 3 and -3.

    Class 0 (logit 3). Epsilon at the linear layer, R_i = a_i w_i R / z: [2, -2, 0, 3].
    z+ at conv2, per pixel R_i = sum_k x_i w+_ki / (sum_i' x_i' w+_ki') R_k: pixel 0 sees
    x = [2, 0] and sends its 2 to channel 0; pixel 1 sees x = [0, 1] and sends -2 (output 0)
    and 3 (output 1) to channel 1: [[2, 0], [0, 1]]. Flat at conv1 (one pixel per receptive
    field) sums the channels: pixels [2, 1], adding up to the logit 3.
    Class 1 (logit -3): [-2, 0, 0, -1] at the linear layer, [[-2, 0], [0, -1]] after conv2,
    pixels [-2, -1]: evidence against, adding up to -3.
    """
    model = hand_net()
    images = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2).repeat(2, 1, 1, 1)
    classes = torch.tensor([0, 1])
    torch.testing.assert_close(model(images).detach().diagonal(), torch.tensor([3.0, -3.0]))
    expected = torch.tensor([[2.0, 1.0], [-2.0, -1.0]]).view(2, 1, 1, 2)
    # All that is lost: epsilon and the stabilizers, 1e-6 added to denominators between 1
    # (flat, one pixel per receptive field) and 3 (the logit), about 2e-6 of the relevance.
    torch.testing.assert_close(ours(model, images, classes), expected, rtol=4e-6, atol=1e-7)
    shown = explain(model, None, images, classes, ["lrp"], 2).maps["lrp"]
    np.testing.assert_array_equal(shown[:, 0], np.array([[1.0, 0.5], [-1.0, -0.5]], np.float16))
    np.testing.assert_array_equal(shown[:, 1], shown[:, 0])  # 1x2 stretched to 2x2


def bias_free_relu_cnn(in_channels: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10, bias=False),
    )
    # He initialisation keeps logits of order 1, as in a trained net; torch's default makes them
    # ~0.01 here, where the epsilon rule's 1e-6 would be a visible share.
    for layer in (model[0], model[2], model[5]):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model.eval()


@pytest.mark.parametrize("in_channels", [1, 3])
def test_lrp_conserves_the_logit_on_a_bias_free_relu_cnn(in_channels: int) -> None:
    """The pixels' relevance adds up to the explained logit when (1) no layer has a bias
    (a bias keeps its share), (2) every convolution is followed by a ReLU, so an output that
    receives relevance has a positive pre-activation and hence a positive z+ denominator (an
    output whose z+ is 0 would drop its relevance), and (3) epsilon is small: each dense output
    keeps R * eps / (z + eps). The flat rule at the first layer conserves by construction
    (each output's relevance is split over the pixels it reads; padding reads none)."""
    model = bias_free_relu_cnn(in_channels, seed=in_channels)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(6, in_channels, 6, 6, generator=generator)
    classes = torch.randint(0, 10, (6,), generator=generator)
    logits = model(images).gather(1, classes[:, None])[:, 0].detach()
    relevance = ours(model, images, classes)
    assert (logits.abs() > 0.05).all() and (logits < 0).any() and (logits > 0).any()
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-5, atol=1e-5)
    # Not a coincidence of the sums: relevance is spread over the pixels with both signs.
    assert (relevance > 0).any() and (relevance < 0).any()


# --- agreement with zennit on torchvision models -------------------------------------------------

TORCHVISION = {
    # name: (input size, zennit's canonizer for it, the canonizers LRP chooses)
    "vgg11": (32, None, []),
    "vgg11_bn": (32, SequentialMergeBatchNorm, ["AtomicMergeBatchNorm"]),
    "resnet18": (64, ResNetCanonizer, ["AtomicMergeBatchNorm", "ResNetBasicBlockCanonizer"]),
    "resnet50": (32, ResNetCanonizer, ["AtomicMergeBatchNorm", "ResNetBottleneckCanonizer"]),
}


@pytest.mark.parametrize("model_name", list(TORCHVISION))
def test_matches_zennit_on_torchvision_models(model_name: str) -> None:
    """Through the engine, both methods give zennit's own maps (its composite with its
    canonizer for the architecture), on random-init models with in-place ReLUs and non-trivial
    BatchNorm statistics; the model is left exactly as it was."""
    size, zennit_canonizer, chosen = TORCHVISION[model_name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None)
    model = randomize_batch_norms(model)
    assert [type(canonizer).__name__ for canonizer in canonizers_for(model)] == chosen
    images, _ = random_batch(2, 3, size, seed=3)
    classes = torch.tensor([7, 421])
    before, before_storage = model_snapshot(model), storage(model)
    maps = explain(model, None, images, classes, METHODS, size).maps
    assert_left_as_found(model, before, before_storage)
    for method in METHODS:
        canonizers = [] if zennit_canonizer is None else [zennit_canonizer()]
        expected = zennit_relevance(model, images, classes, ZENNITS[method](canonizers=canonizers))
        relevance = ours(model, images, classes, method)
        scale = float(expected.abs().max())
        assert scale > 0
        assert float((relevance - expected).abs().max()) <= 1e-5 * scale, method
        shown = signed_display(expected.sum(dim=1), size)
        # One float16 rounding of values in [-1, 1] (half a unit in the last place: 4.9e-4).
        np.testing.assert_allclose(
            maps[method].astype(np.float32), shown.astype(np.float32), atol=5e-4, err_msg=method
        )


class FunctionalInPlace(nn.Module):
    """Convolutions whose outputs a custom forward rectifies in place with ``F.relu``, where no
    module (and no hook) sits between them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        return self.head(x.flatten(1))


def tanh_then_relu_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(6, 6, 3, padding=1),  # negative inputs: every branch of zennit's rule runs
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1),  # non-negative inputs: the negative branches are skipped
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


def alpha_beta_running_every_branch(canonizers: list[Canonizer]) -> Composite:
    """``epsilon_alpha2_beta1_flat`` with z+ run as a convolution of its own, as zennit does,
    instead of taken as z - z-."""
    rule = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=SignedShift(STABILIZER))
    layer_map, first_map = lean_maps(LeanRule(rule, frozenset({1, 3})))
    return EpsilonAlpha2Beta1Flat(
        epsilon=EPSILON,
        stabilizer=STABILIZER,
        layer_map=layer_map,
        first_map=first_map,
        canonizers=canonizers,
    )


def variants_cnn() -> nn.Sequential:
    """Convolutions with stride, dilation, groups, no bias, and a transposed one, each behind a
    ReLU (so z+ is taken as z - z- at every one)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=3),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 2, stride=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 6, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 10),
    )


def count_input_gradients(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layer types whose input gradient ``LeanRule`` takes directly (a branch read from the
    forward's output), one entry per call."""
    calls: list[str] = []

    def counted(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        calls.append(type(module).__name__)
        return input_gradient(module, *args)

    monkeypatch.setattr(lrp_rules, "input_gradient", counted)
    return calls


@pytest.mark.parametrize("make_model", [tanh_then_relu_cnn, FunctionalInPlace, variants_cnn])
def test_lean_rules_are_bit_identical_to_zennits(
    make_model: Callable[[], nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LeanRule`` skips the plain backward zennit discards and, behind a ReLU, the branches
    that read negative inputs, and reads epsilon's one branch from the forward's output;
    ``LeanPass`` skips the activations' plain backward; ``SignedShift`` stabilizes once. zennit's
    composites give exactly the same relevance: all of ``lrp``, and ``lrp_alpha_beta`` with z+
    run as its own convolution."""
    torch.manual_seed(0)
    model = make_model().eval()
    images, classes = random_batch(3, 3, 8, seed=6)
    calls = count_input_gradients(monkeypatch)
    assert torch.equal(
        ours(model, images, classes, "lrp"),
        zennit_relevance(model, images, classes, EpsilonPlusFlat()),
    )
    assert calls == ["Linear"]  # epsilon's branch, behind a ReLU in each model
    expected = zennit_relevance(model, images, classes, EpsilonAlpha2Beta1Flat())
    composite = alpha_beta_running_every_branch([])
    _, every_branch = relevance_at_pixels(model, images, classes, composite)
    assert torch.equal(every_branch, expected)


@pytest.mark.parametrize("make_model", [tanh_then_relu_cnn, variants_cnn])
def test_alpha_beta_with_z_plus_from_the_output_is_zennits_within_rounding(
    make_model: Callable[[], nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """z+ = z - z- differs from z+'s own convolution by float32 rounding only, a few units in
    its last place where relevance arrives (z > 0 behind a ReLU): the relevance is zennit's
    within 1e-6 of each map's largest magnitude (1.2e-6 on VGG16 at 224 px, 13 layers deep),
    far below the display's float16 steps of 4.9e-4. Taking z- = z - z+ instead gave 3.5e-5
    here (``variants_cnn``), as z- can be far smaller than the rounding of z and z+."""
    torch.manual_seed(0)
    model = make_model().eval()
    images, classes = random_batch(3, 3, 8, seed=6)
    calls = count_input_gradients(monkeypatch)
    relevance = ours(model, images, classes, "lrp_alpha_beta")
    expected = zennit_relevance(model, images, classes, EpsilonAlpha2Beta1Flat())
    # Where z+ came from the output: every convolution behind a ReLU, and the dense layer.
    behind_relu = {
        tanh_then_relu_cnn: ["Conv2d"],
        variants_cnn: ["Conv2d", "ConvTranspose2d", "Conv2d"],
    }
    assert calls == ["Linear", *reversed(behind_relu[make_model])]
    assert not torch.equal(relevance, expected)  # the shortcut ran
    scale = expected.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert float(((relevance - expected).abs() / scale).max()) <= 1e-6


def test_a_branch_is_not_read_from_an_output_changed_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``FunctionalInPlace`` rectifies each convolution's output in place, where no hook sits:
    the stored output is no longer z, which its version counter shows, so z+ runs as its own
    convolution (bit for bit zennit's). The dense layer's output is left alone: epsilon's
    branch is still read from it."""
    torch.manual_seed(0)
    model = FunctionalInPlace().eval()
    images, classes = random_batch(3, 3, 8, seed=6)
    calls = count_input_gradients(monkeypatch)
    relevance = ours(model, images, classes, "lrp_alpha_beta")
    assert calls == ["Linear"]
    assert torch.equal(
        relevance, zennit_relevance(model, images, classes, EpsilonAlpha2Beta1Flat())
    )


def test_signed_shift_is_zennits_stabilizer_bit_for_bit() -> None:
    values = [0.0, -0.0, 1e-7, -1e-7, 1e-6, -1e-6, 1.0, -3.5, 1e30, -1e-30]
    special = [float("nan"), float("inf"), float("-inf")]
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}
    for dtype in (torch.float32, torch.float64):
        noise = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=dtype)
        input = torch.cat([torch.tensor(values + special, dtype=dtype), noise])
        shifted = SignedShift(1e-6)(input)
        expected = stabilize(input, 1e-6)
        assert shifted.dtype == dtype
        # Bits, not values: -0.0 == 0.0 and NaN != NaN would hide a difference.
        assert torch.equal(shifted.view(bits[dtype]), expected.view(bits[dtype]))
    half = torch.tensor(values, dtype=torch.float16)
    assert torch.equal(SignedShift(1e-6)(half), stabilize(half, 1e-6))


def test_signed_shift_reuses_its_last_result_only_for_the_same_unchanged_tensor() -> None:
    shift = SignedShift(1e-6)
    denominator = torch.tensor([1.0, 0.0, -2.0])
    first = shift(denominator)
    assert shift(denominator) is first  # zennit's alpha-beta asks twice per denominator
    assert shift(denominator.clone()) is not first
    denominator.mul_(2)  # changed in place: computed anew
    torch.testing.assert_close(shift(denominator), stabilize(denominator, 1e-6), rtol=0, atol=0)


def test_channels_last_gives_the_same_relevance() -> None:
    """The forward stage runs models and batches in channels_last."""
    torch.manual_seed(0)
    model = randomize_batch_norms(torchvision.models.resnet18(weights=None, num_classes=10))
    images, classes = random_batch(2, 3, 32, seed=4)
    expected = ours(model, images, classes)
    model.to(memory_format=torch.channels_last)
    relevance = ours(model, images.contiguous(memory_format=torch.channels_last), classes)
    assert float((relevance - expected).abs().max()) <= 1e-4 * float(expected.abs().max())


# --- canonizers for other models -----------------------------------------------------------------


class Reordered(nn.Module):
    """A custom forward that applies its BatchNorm to the second conv, though it is registered
    right after the first: the registration order zennit's SequentialMergeBatchNorm follows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv_b(torch.relu(self.conv_a(x)))).relu())


def test_batch_norm_is_merged_only_where_the_forward_order_is_certain() -> None:
    torch.manual_seed(0)
    model = randomize_batch_norms(Reordered())
    images, classes = random_batch(2, 3, 8)
    logits = model(images).detach()
    # zennit's registration-order merge folds the BatchNorm into the wrong conv ...
    with EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]).context(model):
        assert not torch.allclose(model(images), logits, atol=1e-3)
    # ... so here it is left alone, and LRP explains the model's own function.
    assert batch_norm_pairs(model) == [] and canonizers_for(model) == []
    for method in METHODS:
        canonized_logits, relevance = relevance_at_pixels(
            model, images, classes, OURS[method](canonizers_for(model))
        )
        torch.testing.assert_close(canonized_logits, logits)
        np.testing.assert_array_equal(
            explain(model, None, images, classes, [method], 8).maps[method],
            signed_display(relevance.sum(dim=1), 8),
        )
    # In an nn.Sequential the order is the forward order: the first block's BatchNorm merges.
    assert batch_norm_pairs(small_cnn()) == [("0", "1")]


def test_batch_norm_without_statistics_or_affine_parameters_is_not_merged() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    ).eval()
    assert batch_norm_pairs(model) == []
    images, classes = random_batch(2, 3, 8)
    assert explain(model, None, images, classes, METHODS, 8).maps["lrp"].shape == (2, 8, 8)


class MisorderedSequential(nn.Sequential):
    """An nn.Sequential whose forward does not run its children in order (conv, BN, ReLU,
    head registered; BN applied before the conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, relu, head = self
        return head(relu(conv(norm(x))))


def test_a_canonized_model_that_computes_something_else_is_a_user_error() -> None:
    torch.manual_seed(0)
    model = MisorderedSequential(
        nn.Conv2d(3, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)),
    )
    model = randomize_batch_norms(model)
    images, classes = random_batch(2, 3, 8)
    before, before_storage = model_snapshot(model), storage(model)
    with pytest.raises(UserError, match="changed the logits .* Use another explanation method"):
        explain(model, None, images, classes, ["lrp"], 8)
    assert_left_as_found(model, before, before_storage)


# --- the model as found --------------------------------------------------------------------------


def block_cnn(in_channels: int = 3) -> nn.Sequential:
    """A user CNN with a torchvision ResNet block: both canonizers apply."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    return randomize_batch_norms(model)


def test_no_hooks_canonizers_or_changes_left_after_100_runs() -> None:
    model = block_cnn()
    model.train()  # the engine runs methods in eval mode and must restore this
    model[0].weight.requires_grad_(False)
    model[6].weight.grad = torch.full_like(model[6].weight, 3.0)
    images, classes = random_batch(2, 3, 8)
    before, before_storage = model_snapshot(model), storage(model)
    first = explain(model, None, images, classes, METHODS, 8).maps
    for _ in range(99):
        maps = explain(model, None, images, classes, METHODS, 8).maps
    assert_left_as_found(model, before, before_storage)
    assert model.training and model[3].training
    # Nor anything alive elsewhere: zennit's hooks live only as long as one pass's graph.
    gc.collect()
    # type(), not isinstance(): the latter reads __class__, which some torch objects deprecate.
    assert not [obj for obj in gc.get_objects() if issubclass(type(obj), Hook)]
    for method in METHODS:
        np.testing.assert_array_equal(maps[method], first[method])


class FailsUnderLRP(nn.Module):
    """Passes the engine's own forward (no gradient taken at the pixels) and raises in LRP's
    (where the hooks and merged weights are in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            raise RuntimeError("boom in the forward")
        return x


class _RaisesInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in the backward")


class FailsInBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RaisesInBackward.apply(x)


@pytest.mark.parametrize("failing", [FailsUnderLRP, FailsInBackward])
def test_model_left_as_found_when_the_lrp_pass_fails(failing: type[nn.Module]) -> None:
    model = block_cnn()
    model.insert(4, failing())
    images, classes = random_batch(2, 3, 8)
    before, before_storage = model_snapshot(model), storage(model)
    for method in METHODS:
        with pytest.raises(RuntimeError, match="boom"):
            explain(model, None, images, classes, [method], 8)
        assert_left_as_found(model, before, before_storage)


def test_model_left_as_found_when_a_batch_norm_merge_fails_halfway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zennit's Composite.register keeps no record of a canonizer's merges until all of them
    succeeded, and its context's __exit__ does not run when entering fails: with a plain
    ``composite.context`` the merges before the failure stay in the model (shown first). LRP
    undoes them."""
    merge = MergeBatchNorm.merge_batch_norm
    calls = []

    def second_merge_fails(modules: list[nn.Module], batch_norm: nn.Module) -> None:
        merge(modules, batch_norm)
        calls.append(batch_norm)
        if len(calls) == 2:
            raise RuntimeError("boom in a merge")

    monkeypatch.setattr(MergeBatchNorm, "merge_batch_norm", staticmethod(second_merge_fails))
    model = block_cnn()
    images, classes = random_batch(2, 3, 8)
    before, before_storage = model_snapshot(model), storage(model)

    with pytest.raises(RuntimeError, match="boom in a merge"):
        with EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]).context(model):
            pass
    # zennit left the first merges in: BatchNorm folded into the conv, a bias added to it.
    assert not torch.equal(model[0].weight, before["state"]["0.weight"])
    assert model[0].bias is not None

    calls.clear()
    model = block_cnn()
    before, before_storage = model_snapshot(model), storage(model)
    with pytest.raises(RuntimeError, match="boom in a merge"):
        explain(model, None, images, classes, ["lrp"], 8)
    assert len(calls) == 2
    assert_left_as_found(model, before, before_storage)


# --- inputs, batches, contexts -------------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_shapes_dtypes_ranges(method: str, in_channels: int) -> None:
    model = block_cnn(in_channels)
    if in_channels == 1:
        images, classes = digits_batch(4)
    else:
        images, classes = random_batch(4, 3, 8)
    shown = explain(model, None, images, classes, [method], 8).maps[method]
    assert shown.shape == (4, 8, 8) and shown.dtype == np.float16
    # At the input size nothing is resized: every map reaches +-1 where its peak is.
    peaks = np.abs(shown.astype(np.float32)).reshape(4, -1).max(axis=1)
    np.testing.assert_array_equal(peaks, np.ones(4, np.float32))


def test_batch_result_equals_per_image_result_and_images_do_not_mix() -> None:
    model = block_cnn()
    images, classes = random_batch(4, 3, 8)
    batched = explain(model, None, images, classes, METHODS, 8).maps
    changed = images.clone()
    changed[0] = -changed[0]
    other = explain(model, None, changed, classes, METHODS, 8).maps
    for method in METHODS:
        singles = np.concatenate(
            [
                explain(model, None, images[i : i + 1], classes[i : i + 1], [method], 8).maps[
                    method
                ]
                for i in range(4)
            ]
        )
        np.testing.assert_allclose(
            batched[method].astype(np.float32), singles.astype(np.float32), atol=1e-3
        )
        np.testing.assert_array_equal(batched[method][1:], other[method][1:])
        assert not np.array_equal(batched[method][0], other[method][0])


def test_same_maps_inside_no_grad_and_no_warnings_from_zennit() -> None:
    """zennit 0.5.1 hooks grad_fn nodes rather than modules, so torch 2.14 has nothing to
    deprecate in it: any warning is turned into an error here."""
    model = block_cnn()
    images, classes = random_batch(2, 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outside = explain(model, None, images, classes, METHODS, 8).maps
        with torch.no_grad():
            inside = explain(model, None, images, classes, METHODS, 8).maps
    for method in METHODS:
        np.testing.assert_array_equal(outside[method], inside[method])


def test_top1_classes_when_none_are_given() -> None:
    model = block_cnn()
    images, _ = random_batch(3, 3, 8)
    out = explain(model, None, images, None, ["lrp"], 8)
    top1 = out.logits.argmax(dim=1)
    assert torch.equal(out.classes, top1)
    np.testing.assert_array_equal(
        out.maps["lrp"], explain(model, None, images, top1, ["lrp"], 8).maps["lrp"]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = block_cnn()
    images, classes = random_batch(4, 3, 8)
    on_cpu = explain(model, None, images, classes, METHODS, 8).maps
    model_gpu = block_cnn().cuda()
    on_gpu = explain(model_gpu, None, images.cuda(), classes.cuda(), METHODS, 8).maps
    for method in METHODS:
        np.testing.assert_allclose(
            on_gpu[method].astype(np.float32), on_cpu[method].astype(np.float32), atol=2e-3
        )
    assert hooks_left(model_gpu) == []
