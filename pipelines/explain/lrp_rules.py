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

Convolutions get ``LeanRule``: zennit's z+ / alpha-beta rule, computed with less work (VGG16's
pass 1.5x faster), with the same values. zennit 0.5.1 with torch 2.14.1: no deprecated hooks
(zennit hooks ``grad_fn`` nodes, not modules) and no warnings; maps agree with zennit's own
composites on VGG and ResNet. Two gaps of zennit's are closed here: ``Composite.register`` does
not undo what it applied when a canonizer fails halfway (``attached``, ``AtomicMergeBatchNorm``),
and its ``SequentialMergeBatchNorm`` pairs modules by registration order, which is the forward
order only for some models (``batch_norm_pairs``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from zennit.canonizers import Canonizer, NamedMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat
from zennit.core import BasicHook, Composite, Identity, ParamMod
from zennit.rules import AlphaBeta, ZPlus
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import BatchNorm, Convolution, ConvolutionStandard

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


class LeanRule(BasicHook):
    """A zennit rule that splits a layer's input into positive and negative parts (z+,
    alpha-beta), computed without two kinds of work that cannot change a value:

    - zennit's hooks let autograd run each layer's plain backward (the gradient w.r.t. its input)
      and then overwrite that gradient with the rule's relevance. Here the layer runs on a
      detached copy of its input and its output rejoins the graph through ``_Rejoin``, so that
      backward is never run (nor its inputs kept for it).
    - Where the input has no negative entry, as behind every ReLU, the branches that read the
      negative part (``negative_branches``) see all zeros, give zero outputs and add exactly zero
      relevance; they are skipped, and the rule's own gradient mapper and reducer see a zero in
      their place.

    The relevance is zennit's rule's, bit for bit (tested against zennit's composites); each z+
    convolution's backward step runs two convolutions instead of five. VGG16, 224 px, one image,
    channels_last, the LRP pass alone, best / median of 8 interleaved runs on the shared 2-core
    VM (load 1.1-1.7), 2 threads: zennit's EpsilonPlusFlat 1.00 / 1.25 s, zero branches skipped
    0.79 / 0.97 s, both 0.66 / 0.81 s; 1 thread: 2.21, 1.58, 1.29 s best. Unlike zennit's hooks,
    these do not support ``Composite.inactive``.
    """

    def __init__(self, rule: BasicHook, negative_branches: frozenset[int]) -> None:
        super().__init__(
            input_modifiers=rule.input_modifiers,
            param_modifiers=rule.param_modifiers,
            output_modifiers=rule.output_modifiers,
            gradient_mapper=rule.gradient_mapper,
            reducer=rule.reducer,
        )
        self.negative_branches = negative_branches

    def copy(self) -> LeanRule:
        # zennit copies one template per module; BasicHook.copy would drop negative_branches.
        return LeanRule(self, self.negative_branches)

    def pre_forward(self, module: nn.Module, input: tuple[Any, ...]) -> Any:
        """As zennit's ``Hook.pre_forward`` (an ``Identity`` node whose gradient the rule's
        ``backward`` replaces), but the layer gets a detached copy of its input."""
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
        # A copy, as zennit's: the stored input must survive in-place ops on the original.
        return anchor.detach().clone()

    def post_forward(self, module: nn.Module, input: Any, output: Any) -> Any:
        anchor = self.stored_tensors.pop("anchor", None)
        if anchor is not None:
            output = _Rejoin.apply(anchor, output)
        # zennit's: a hook on the output's node keeps the incoming relevance for ``backward``.
        return super().post_forward(module, input, output)

    def backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
        stored = self.stored_tensors["input"][0]
        if bool((stored < 0).any()):
            return super().backward(module, grad_input, grad_output)
        branches = range(len(self.input_modifiers))
        kept = [k for k in branches if k not in self.negative_branches]
        # As BasicHook.backward, for the kept branches only.
        original = stored.clone()
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        for k in kept:
            inputs[k] = self.input_modifiers[k](original).requires_grad_()
            param_mod = ParamMod.ensure(self.param_modifiers[k])
            with param_mod(module) as modified, torch.autograd.enable_grad():
                outputs[k] = self.output_modifiers[k](modified.forward(inputs[k]))
        # A 0-dim zero broadcasts where the rule adds or multiplies a skipped branch's tensors:
        # the same sums, without filling and reading full tensors of zeros.
        zero = original.new_zeros(())
        grad_outputs = self.gradient_mapper(
            grad_output[0], [outputs.get(k, zero) for k in branches]
        )
        gradients = torch.autograd.grad(
            [outputs[k] for k in kept],
            [inputs[k] for k in kept],
            grad_outputs=[grad_outputs[k] for k in kept],
            create_graph=grad_output[0].requires_grad,
        )
        by_branch = dict(zip(kept, gradients, strict=True))
        relevance = self.reducer(
            [inputs.get(k, zero) for k in branches], [by_branch.get(k, zero) for k in branches]
        )
        return tuple(relevance if old.shape == relevance.shape else None for old in grad_input)


def epsilon_plus_flat(canonizers: list[Canonizer]) -> Composite:
    """zennit's EpsilonPlusFlat: flat at the first layer, z+ for convolutions (as a
    ``LeanRule``; branch 1 reads the negative inputs), epsilon for dense layers."""
    z_plus = LeanRule(ZPlus(stabilizer=STABILIZER), frozenset({1}))
    return EpsilonPlusFlat(
        epsilon=EPSILON,
        stabilizer=STABILIZER,
        layer_map=[(Convolution, z_plus)],
        canonizers=canonizers,
    )


def epsilon_alpha2_beta1_flat(canonizers: list[Canonizer]) -> Composite:
    """zennit's EpsilonAlpha2Beta1Flat: flat at the first layer, alpha=2 beta=1 for
    convolutions (as a ``LeanRule``; branches 1 and 3 read the negative inputs), epsilon for
    dense layers."""
    alpha_beta = AlphaBeta(alpha=2.0, beta=1.0, stabilizer=STABILIZER)
    return EpsilonAlpha2Beta1Flat(
        epsilon=EPSILON,
        stabilizer=STABILIZER,
        layer_map=[(Convolution, LeanRule(alpha_beta, frozenset({1, 3})))],
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
