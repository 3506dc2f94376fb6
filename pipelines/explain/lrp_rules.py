"""The rules of Layer-wise Relevance Propagation, for the methods in ``methods/lrp.py`` (Bach,
Binder, Montavon, Klauschen, Müller & Samek, "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLoS ONE 10(7) e0130140, 2015,
doi:10.1371/journal.pone.0130140; rules chosen per layer type as recommended by Montavon, Binder,
Lapuschkin, Samek & Müller, "Layer-Wise Relevance Propagation: An Overview", in Explainable AI,
LNCS 11700, Springer 2019, doi:10.1007/978-3-030-28954-6_10), computed with zennit (Anders,
Neumann, Samek, Müller & Lapuschkin, "Software for Dataset-wide XAI: From Local Explanations to
Global Insights with Zennit, CoRelAy, and ViRelAy", arXiv:2106.13200).

The class logit is redistributed layer by layer down to the pixels, each layer passing on what it
received in proportion to its inputs' contributions, so the relevance of all pixels adds up to
the logit (exactly for bias-free ReLU nets, see ``tests/test_explain_lrp.py``). Two composites
of zennit: ``lrp`` (EpsilonPlusFlat: the epsilon rule for dense layers, z+ for convolutions,
Montavon et al. 2017, arXiv:1512.02479) and ``lrp_alpha_beta`` (EpsilonAlpha2Beta1Flat: alpha=2,
beta=1 for convolutions, which also shows evidence against the class); both use the flat rule at
the first layer (Lapuschkin et al., Nature Communications 2019, arXiv:1902.10178), which spreads
relevance over each receptive field without reading pixel values, so 1- and 3-channel inputs,
normalised or not, are treated alike.

Rules assume each layer is a linear map followed by an activation, so models are canonized first:
BatchNorm merged into the layer it follows, and torchvision ResNet blocks made to add their
residual in a module zennit can hook. zennit's canonizers and hooks modify the model in place;
``attached`` restores it exactly, also when a pass fails.

Every rule is zennit's, run with less work (``lean_maps``: ``LeanRule``, ``LeanPass``,
``SignedShift``): the same values bit for bit, except alpha-beta's z+, taken as z - z- (equal up to
float rounding; ``LeanRule``). VGG16's pass, 2 threads, timed alternating with the rules before: z+
0.71x, alpha-beta 0.65x the time (best of 15; ``benchmarks/README.md``). zennit 0.5.1 with torch
2.14.1: no deprecated hooks (zennit hooks ``grad_fn`` nodes, not modules) and no warnings; maps
agree with zennit's own composites on VGG and ResNet. Two gaps of zennit's are closed here:
``Composite.register`` does not undo what it applied when a canonizer fails halfway (``attached``,
``AtomicMergeBatchNorm``), and its ``SequentialMergeBatchNorm`` pairs modules by registration order,
which is the forward order only for some models (``batch_norm_pairs``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from zennit.canonizers import Canonizer, NamedMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat
from zennit.core import BasicHook, Composite, Hook, Identity, ParamMod, stabilize
from zennit.rules import AlphaBeta, Epsilon, Flat, Pass, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import Activation, BatchNorm, Convolution, ConvolutionStandard, Linear

from pipelines.errors import UserError
from pipelines.explain.base import check_logits

# zennit's defaults for both composites: epsilon for dense layers, the stabilizer (added to every
# other rule's denominator with its sign) for the rest. An epsilon this small makes the dense
# layers' rule LRP-0, which conserves relevance; the z+ / alpha-beta rules at the convolutions
# are what keeps the maps from being as noisy as gradient x input (Montavon et al. 2019).
EPSILON = 1e-6
STABILIZER = 1e-6
# Canonizing only merges BatchNorm and re-routes a sum, so a canonized model computes the same
# function up to float rounding; a larger change means a merge guessed the forward order wrong.
CANONIZED_LOGITS_RTOL = 1e-3
# Under autocast the engine's logits carry bfloat16 rounding (8-bit mantissa).
CANONIZED_LOGITS_RTOL_LOW_PRECISION = 5e-2
RESNET_PARTS = (ResNet, BasicBlock, Bottleneck)


# --- canonizers ----------------------------------------------------------------------------------


def mergeable(layer: nn.Module | None, batch_norm: nn.Module | None) -> bool:
    """Whether zennit can fold ``batch_norm`` into ``layer``: a dense layer or a standard
    convolution whose outputs are the BatchNorm's features, and a BatchNorm with the affine
    parameters and running statistics the fold reads (without them zennit fails halfway)."""
    if not isinstance(layer, (nn.Linear, ConvolutionStandard)):
        return False
    if not isinstance(batch_norm, BatchNorm):
        return False
    assert isinstance(batch_norm, nn.modules.batchnorm._BatchNorm)  # zennit's BatchNorm types
    return (
        batch_norm.affine
        and batch_norm.running_mean is not None
        and batch_norm.running_var is not None
        and layer.weight.shape[0] == batch_norm.num_features
    )


def batch_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) for every BatchNorm that is known to read a dense or
    convolutional layer's output directly, named as in ``model.named_modules()``.

    Known means adjacent in an ``nn.Sequential`` (which runs its children in order), or a
    torchvision ResNet's or ResNet block's ``convN``/``bnN``. zennit's ``SequentialMergeBatchNorm``
    instead pairs neighbours in registration order, which a custom ``forward`` need not follow;
    a wrong merge would silently explain another function. A module registered in two places
    (weights shared between branches) is never merged, as merging changes it for both.
    """
    places = Counter(id(module) for _, module in model.named_modules(remove_duplicate=False))
    names = {id(module): name for name, module in model.named_modules()}
    candidates: list[tuple[nn.Module | None, nn.Module | None]] = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            candidates += zip(children, children[1:], strict=False)
        elif isinstance(module, RESNET_PARTS):
            candidates += [
                (getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None))
                for i in (1, 2, 3)
            ]
    return [
        (names[id(layer)], names[id(batch_norm)])
        for layer, batch_norm in candidates
        if mergeable(layer, batch_norm) and places[id(layer)] == places[id(batch_norm)] == 1
    ]


class AtomicMergeBatchNorm(NamedMergeBatchNorm):
    """zennit's ``NamedMergeBatchNorm``, all or nothing: if one merge fails, the merges before it
    are undone before the error goes on. zennit returns the merges it made (what
    ``Composite.remove`` undoes) only once all of them succeeded, so a failure would leave the
    earlier ones in the model."""

    def apply(self, root_module: nn.Module) -> list[NamedMergeBatchNorm]:
        lookup = dict(root_module.named_modules())
        instances: list[NamedMergeBatchNorm] = []
        try:
            for layer_names, batch_norm_name in self.name_map:
                instance = self.copy()
                instances.append(instance)
                instance.register([lookup[name] for name in layer_names], lookup[batch_norm_name])
        except BaseException:
            for instance in reversed(instances):
                # Set once the originals are stored, before anything is changed.
                if instance.batch_norm_params is not None:
                    instance.remove()
            raise
        return instances


def canonizers_for(model: nn.Module) -> list[Canonizer]:
    """The canonizers ``model`` needs, found by inspecting its modules: BatchNorm merged into
    the layer it directly follows (``batch_norm_pairs``), and torchvision ResNet blocks made to
    add their residual in a hookable module. On torchvision's VGG-BN and ResNets this is what
    zennit's ``SequentialMergeBatchNorm`` / ``ResNetCanonizer`` do (tested); on other models it
    merges only where the forward order is certain. Empty when nothing applies."""
    canonizers: list[Canonizer] = []
    pairs = batch_norm_pairs(model)
    if pairs:
        canonizers.append(
            AtomicMergeBatchNorm([((layer,), batch_norm) for layer, batch_norm in pairs])
        )
    if any(isinstance(module, BasicBlock) for module in model.modules()):
        canonizers.append(ResNetBasicBlockCanonizer())
    if any(isinstance(module, Bottleneck) for module in model.modules()):
        canonizers.append(ResNetBottleneckCanonizer())
    return canonizers


# --- rules ---------------------------------------------------------------------------------------


class SignedShift:
    """zennit's default stabilizer (``zennit.core.stabilize``: each denominator moved ``epsilon``
    away from zero, zeros upwards), the same values bit for bit in float32 and float64 (tested,
    with zeros of both signs, NaN and infinities), computed once per denominator and in fewer
    passes over it, for the rules built here.

    zennit's alpha-beta gradient mapper stabilizes each of its two denominators twice (once per
    branch that reads it), and ``stabilize`` makes six passes over the tensor (compare, cast,
    sign, add, scale, add); here a repeated call with the same unchanged tensor returns the last
    result, and a new one takes three passes (compare, select, add). Other dtypes go to zennit's.
    """

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon
        self.last: tuple[weakref.ref[torch.Tensor], int, torch.Tensor] | None = None

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            ref, version, result = self.last
            if ref() is input and input._version == version:
                return result
        if input.dtype not in (torch.float32, torch.float64):
            return stabilize(input, self.epsilon)
        up = torch.full((), self.epsilon, dtype=input.dtype, device=input.device)
        # zennit adds (1 if x == 0 else sign(x)) * epsilon: +epsilon for x >= 0 (-0.0 too),
        # -epsilon below, NaN for NaN (x - epsilon is NaN here as well).
        result = torch.where(input >= 0, up, -up).add_(input)
        self.last = (weakref.ref(input), input._version, result)
        return result


class _Rejoin(torch.autograd.Function):
    """Puts a layer's output, computed from a detached copy of its input, back on the graph
    behind the input's zennit ``Identity`` node. Its gradient towards that node is a zero (an
    expanded scalar: no memory), which the rule's hook there replaces with the relevance."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        ctx.anchor = (anchor.shape, anchor.dtype, anchor.device)
        # A new tensor object, not ``output`` itself: autograd would make a returned input a
        # view, and the in-place ReLU that often follows cannot modify such a view.
        return output.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        shape, dtype, device = ctx.anchor
        return torch.zeros((), dtype=dtype, device=device).expand(shape), None


class _OffGraph(Hook):
    """zennit's hook placement (an ``Identity`` node before the layer whose gradient the rule's
    ``backward`` replaces, and a hook on the output's node that keeps the incoming relevance),
    but the layer runs on a detached copy of its input and its output rejoins the graph through
    ``_Rejoin``: autograd never runs (nor keeps inputs for) the layer's plain backward, which
    zennit's hooks let run and then overwrite."""

    def pre_forward(self, module: nn.Module, input: tuple[Any, ...]) -> Any:
        if len(input) != 1 or not input[0].requires_grad:
            return super().pre_forward(module, input)
        hook_ref = weakref.ref(self)

        def relevance_hook(grad_input: Any, _grad_output: Any) -> Any:
            hook = hook_ref()
            if hook is None or not hook.active:
                return None
            return hook.backward(module, grad_input, hook.stored_tensors["grad_output"])

        (anchor,) = Identity.apply(*input)
        self.tensor_handles.append(anchor.grad_fn.register_hook(relevance_hook))
        self.stored_tensors["anchor"] = anchor
        # A copy, as zennit's: the stored input must survive in-place ops on the original (and
        # an in-place layer must not change the original). Copied from the input itself, not
        # from ``anchor`` as zennit does: autograd returns ``anchor`` as a view whose batch
        # stride is its channel count, which max pooling reads as not channels_last, so every
        # layer after a pool would mix memory formats, and elementwise ops on mixed formats are
        # ~3x slower (a 1x64x224x224 division, 2 threads: 2.7 ms against 0.95 ms).
        return input[0].detach().clone()

    def post_forward(self, module: nn.Module, input: Any, output: Any) -> Any:
        anchor = self.stored_tensors.pop("anchor", None)
        if anchor is not None:
            output = _Rejoin.apply(anchor, output)
        return super().post_forward(module, input, output)


class LeanPass(_OffGraph, Pass):
    """zennit's ``Pass`` (the relevance goes through an activation unchanged), placed off the
    graph as ``_OffGraph`` says: the activation's own backward (a ReLU's mask) is not run only to
    be overwritten, and its output keeps its input's memory format."""

    def copy(self) -> LeanPass:
        return LeanPass()


class LeanRule(_OffGraph, BasicHook):
    """A zennit rule computed without work that cannot change a value (``_OffGraph``: the layer's
    plain backward), and, where the input has no negative entry, as behind every ReLU, with less:

    - The branches that read the negative part of the input (``negative_branches``) see all
      zeros, give zero outputs and add exactly zero relevance; they are skipped, and the rule's
      own gradient mapper and reducer see a zero in their place.
    - A branch in ``from_output`` is not run forward: its output is the layer's own output from
      the forward pass (``k: None``: epsilon's one branch, unmodified), or that minus another
      branch's (``k: partner``: for alpha-beta, z+ = W+x + b+ is z - z-, as W+ + W- = W and
      b+ + b- = b, and here ``x`` = ``x+``). Its input gradient is taken directly
      (``input_gradient``). This holds for branches whose output modifier is the identity, as
      in zennit's epsilon and alpha-beta rules, for dense layers and zero-padded convolutions,
      and only while the stored output is as the forward left it (checked; else the branch
      runs as zennit's).

    The relevance is zennit's rule's, bit for bit (tested against zennit's composites), except
    where a branch is a difference: z - z- carries the rounding of z and z- (float32's 6e-8
    relative to each) where zennit's z+ carries that of its own convolution. Behind a ReLU only
    outputs with a positive z receive relevance, and there z+ >= |z| and z+ > |z-|, so the
    difference is z+ to within a few of its own units in the last place and positive (the
    stabilizer's sign is zennit's). z+ is the difference, not z-: z- can be far smaller than z+
    there, and z - z+ then carries rounding far larger than itself (measured on a small test net:
    3.5e-5 of the map's largest value, against under 1e-6 this way). An output with a negative z
    that still receives relevance (one added to a residual before its ReLU) can have z+ << |z-| and
    a larger relative error in z+. Measured on the maps: 1.2e-6 of the largest magnitude on
    random-init VGG16 at 224 px, channels_last (2.5e-7 contiguous); tested within 1e-6 of it on
    small nets and 1e-5 on VGG and ResNet, the bound of the other comparisons with zennit. The
    backward step of a convolution runs two convolutions instead of five for z+, three instead of
    nine for alpha-beta; of a dense layer one matrix product instead of three. Unlike zennit's
    hooks, these do not support ``Composite.inactive``.
    """

    def __init__(
        self,
        rule: BasicHook,
        negative_branches: frozenset[int] = frozenset(),
        from_output: Mapping[int, int | None] | None = None,
    ) -> None:
        super().__init__(
            input_modifiers=rule.input_modifiers,
            param_modifiers=rule.param_modifiers,
            output_modifiers=rule.output_modifiers,
            gradient_mapper=rule.gradient_mapper,
            reducer=rule.reducer,
        )
        self.negative_branches = negative_branches
        self.from_output = dict(from_output or {})

    def copy(self) -> LeanRule:
        # zennit copies one template per module; BasicHook.copy would drop the branch maps.
        return LeanRule(self, self.negative_branches, self.from_output)

    def forward(self, module: nn.Module, input: Any, output: Any) -> None:
        """zennit's (the input kept for ``backward``), and where a branch is to be read from the
        output, the output and its version counter (shared with the tensor the next layer reads:
        an in-place change there shows)."""
        super().forward(module, input, output)
        if self.from_output and isinstance(output, torch.Tensor):
            self.stored_tensors["output"] = (output.detach(), output._version)

    def derivable(self, module: nn.Module) -> dict[int, int | None]:
        """The ``from_output`` branches this backward can read from the output: it is unchanged
        since the forward, in the input's dtype (not autocast's), and the layer's input gradient
        can be taken directly."""
        stored = self.stored_tensors.get("output")
        if stored is None or not takes_input_gradient(module):
            return {}
        output, version = stored
        if output._version != version or output.dtype != self.stored_tensors["input"][0].dtype:
            return {}
        return self.from_output

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        stored = self.stored_tensors["input"][0]
        if bool((stored < 0).any()):
            return super().backward(module, grad_input, grad_output)
        derived = self.derivable(module)
        branches = range(len(self.input_modifiers))
        run = [k for k in branches if k not in self.negative_branches and k not in derived]
        # As BasicHook.backward, for the branches run; the stored input is already a copy.
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        for k in run:
            inputs[k] = self.input_modifiers[k](stored).requires_grad_()
            param_mod = ParamMod.ensure(self.param_modifiers[k])
            with param_mod(module) as modified, torch.autograd.enable_grad():
                outputs[k] = self.output_modifiers[k](modified.forward(inputs[k]))
        for k, partner in derived.items():
            output = self.stored_tensors["output"][0]
            inputs[k] = self.input_modifiers[k](stored)
            outputs[k] = output if partner is None else output - outputs[partner].detach()
        # A 0-dim zero broadcasts where the rule adds or multiplies a skipped branch's tensors:
        # the same sums, without filling and reading full tensors of zeros.
        zero = stored.new_zeros(())
        grad_outputs = self.gradient_mapper(
            grad_output[0], [outputs.get(k, zero) for k in branches]
        )
        if isinstance(grad_outputs, torch.Tensor):  # a one-branch rule's mapper, as epsilon's
            grad_outputs = (grad_outputs,)
        gradients = (
            torch.autograd.grad(
                [outputs[k] for k in run],
                [inputs[k] for k in run],
                grad_outputs=[grad_outputs[k] for k in run],
                create_graph=grad_output[0].requires_grad,
            )
            if run
            else ()
        )
        by_branch = dict(zip(run, gradients, strict=True))
        for k in derived:
            with ParamMod.ensure(self.param_modifiers[k])(module) as modified:
                by_branch[k] = input_gradient(modified, inputs[k], grad_outputs[k])
        relevance = self.reducer(
            [inputs.get(k, zero) for k in branches], [by_branch.get(k, zero) for k in branches]
        )
        return tuple(relevance if old.shape == relevance.shape else None for old in grad_input)


def takes_input_gradient(module: nn.Module) -> bool:
    """Whether ``input_gradient`` computes ``module``'s input gradient: a dense layer, or a
    convolution (or transposed one) with numeric zero padding, whose forward is one call of
    ``torch.convolution``."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def input_gradient(
    module: nn.Module, input: torch.Tensor, grad_output: torch.Tensor
) -> torch.Tensor:
    """The gradient of ``module(input)`` w.r.t. ``input`` for ``grad_output``, without running
    the forward: what autograd's ``AddmmBackward0`` / ``ConvolutionBackward0`` compute for the
    input (the latter's kernel, asked for the input gradient only). ``module`` passes
    ``takes_input_gradient``; input: (B, ..., in) for a dense layer, (B, C, ...) for a convolution;
    grad_output: the module's output shape; returns input's shape."""
    if isinstance(module, nn.Linear):
        return grad_output.matmul(module.weight)
    assert isinstance(module, nn.modules.conv._ConvNd)
    grad, _, _ = torch.ops.aten.convolution_backward(
        grad_output,
        input,
        module.weight,
        None,
        module.stride,
        module.padding,
        module.dilation,
        module.transposed,
        module.output_padding,
        module.groups,
        [True, False, False],
    )
    return grad


def lean_maps(
    convolution_rule: LeanRule,
) -> tuple[list[tuple[Any, Hook]], list[tuple[Any, Hook]]]:
    """(layer map, first-layer map) to prepend to one of zennit's composites, so that its rules
    run as ``LeanRule`` / ``LeanPass`` with the same values: ``convolution_rule`` for
    convolutions, epsilon for dense layers (its one branch read from the forward's output),
    pass-through for activations and BatchNorm (merged into the layer before it), flat for the
    first layer, each with the composite's own parameters."""
    epsilon = LeanRule(Epsilon(epsilon=SignedShift(EPSILON)), from_output={0: None})
    layer_map = [
        (Activation, LeanPass()),
        (BatchNorm, LeanPass()),
        (Convolution, convolution_rule),
        (nn.Linear, epsilon),
    ]
    return layer_map, [(Linear, LeanRule(Flat(stabilizer=SignedShift(STABILIZER))))]


def epsilon_plus_flat(canonizers: list[Canonizer]) -> Composite:
    """zennit's EpsilonPlusFlat: flat at the first layer, z+ for convolutions (branch 1 reads
    the negative inputs), epsilon for dense layers; as ``lean_maps``."""
    layer_map, first_map = lean_maps(
        LeanRule(ZPlus(stabilizer=SignedShift(STABILIZER)), frozenset({1}))
    )
    return EpsilonPlusFlat(
        epsilon=EPSILON,
        stabilizer=STABILIZER,
        layer_map=layer_map,
        first_map=first_map,
        canonizers=canonizers,
    )


def epsilon_alpha2_beta1_flat(canonizers: list[Canonizer]) -> Composite:
    """zennit's EpsilonAlpha2Beta1Flat: flat at the first layer, alpha=2 beta=1 for
    convolutions (branches 1 and 3 read the negative inputs; branch 0, z+, is the output less
    branch 2, z-), epsilon for dense layers; as ``lean_maps``."""
    alpha_beta = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=SignedShift(STABILIZER))
    layer_map, first_map = lean_maps(LeanRule(alpha_beta, frozenset({1, 3}), from_output={0: 2}))
    return EpsilonAlpha2Beta1Flat(
        epsilon=EPSILON,
        stabilizer=STABILIZER,
        layer_map=layer_map,
        first_map=first_map,
        canonizers=canonizers,
    )


# --- the pass ------------------------------------------------------------------------------------


@contextlib.contextmanager
def attached(model: nn.Module, composite: Composite) -> Iterator[None]:
    """Within the block, ``model`` is canonized and carries the composite's hooks; afterwards it
    is exactly as before (the parameters' and buffers' own storage back, no hooks, no added
    modules or forwards), also when the block or the attaching itself raises.

    zennit's ``composite.context`` undoes everything when the block raises, but not when
    ``register`` fails halfway (``__exit__`` never runs), hence the second ``remove``, which
    undoes what was registered and is a no-op after a clean exit.
    """
    try:
        with composite.context(model):
            yield
    finally:
        composite.remove()


def relevance_at_pixels(
    model: nn.Module, images: torch.Tensor, classes: torch.Tensor, composite: Composite
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of ``model`` with ``composite`` attached.

    images: (B, C, H, W) float32; classes: (B,) int64. The relevance that starts at each image's
    class logit (its value, so that the pixels' relevance adds up to it and keeps its sign: red
    is for the class) and no other output. Returns the canonized model's logits (B, K) float32
    and the relevance (B, C, H, W) float32, both detached. The model should be in eval mode with
    frozen parameters, as the engine leaves it.
    """
    with attached(model, composite), torch.enable_grad():
        pixels = images.detach().requires_grad_(True)
        logits = check_logits(model(pixels))
        index = classes.view(-1, 1)
        start = torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index)).detach()
        (relevance,) = torch.autograd.grad(logits, pixels, grad_outputs=start)
    return logits.detach().float(), relevance.float()


def check_canonized_logits(canonized: torch.Tensor, original: torch.Tensor) -> None:
    """Fail with the fix if canonizing changed what the model computes (canonized, original:
    (B, K) logits of the same images), instead of showing relevance for another function."""
    rtol = (
        CANONIZED_LOGITS_RTOL
        if original.dtype == torch.float32
        else CANONIZED_LOGITS_RTOL_LOW_PRECISION
    )
    original = original.float()
    worst = float((canonized - original).abs().max()) if original.numel() else 0.0
    scale = float(original.abs().max()) if original.numel() else 0.0
    # The absolute term keeps all-zero logits from failing on rounding.
    if worst > rtol * scale + 1e-5:
        raise UserError(
            f"LRP's canonized model (BatchNorm merged into the layer before it) changed the "
            f"logits by up to {worst:.3g} (largest logit {scale:.3g}); the model's forward does "
            "not apply a BatchNorm right after the layer that precedes it in an nn.Sequential "
            "or ResNet block. Use another explanation method for this model"
        )
