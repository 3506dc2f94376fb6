"""One adapter over every kind of model LayerScope can open.

``smallcnn`` (trained here), torchvision architectures, TorchScript files and user Python files
all become a ``ModelAdapter``: an eval-mode ``nn.Module`` on a device, its class names, the
preprocessing that turns any PIL image into its input and the decoding that turns its logits into
class probabilities (a Python model file's own ``preprocess`` / ``decode`` hooks where it has
them, ``pipelines/model_hooks.py``). The rest of the pipeline never asks which kind it has.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import reprlib
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from pipelines import report
from pipelines.datasets import open_dataset, to_l_or_rgb
from pipelines.errors import UserError
from pipelines.io import atomic_path
from pipelines.model_hooks import ModelHooks
from pipelines.presets import DESCRIPTIONS, PRESETS, build_preset
from pipelines.records import Manifest
from pipelines.smallcnn import SmallCNN, train_small_cnn
from pipelines.store import datasets_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Digits are 8x8: up-sampled so conv maps, thumbnails and CAMs stay legible.
SMALLCNN_INPUT_SIZE = 32
# --weights values that are not a file.
NAMED_WEIGHTS = ("imagenet", "none")
# Where training scripts keep the state dict inside a checkpoint dict, most common first.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Key prefixes added by wrappers: nn.DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys named in a mismatch message, per kind of mismatch.
SHOWN_KEYS = 3


@dataclass
class ModelAdapter:
    module: nn.Module
    spec: str
    name: str
    description: str
    class_names: list[str]
    input_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    is_imagenet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # A python: model file's own preprocess / decode (none for every other kind).
    hooks: ModelHooks = field(default_factory=ModelHooks)

    def view(self, image: Image.Image) -> Image.Image:
        """The square, model-sized view of ``image`` that thumbnails and CAMs show, and the
        model's input unless the model file has its own ``preprocess``."""
        return square_view(to_mode(image, self.in_channels), self.input_size)

    def to_tensor(self, views: list[Image.Image]) -> torch.Tensor:
        """views: PIL images from ``view`` -> (B, C, S, S) float32 normalised, on ``device``."""
        batch = np.stack([np.asarray(view, dtype=np.float32) for view in views]) / 255.0
        if batch.ndim == 3:
            batch = batch[:, None]
        else:
            batch = batch.transpose(0, 3, 1, 2)
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((tensor - mean) / std).to(self.device)

    def preprocess(
        self, images: list[Image.Image], views: list[Image.Image] | None = None
    ) -> torch.Tensor:
        """PIL images (any mode and size) -> (B, C, S, S) float32 model-ready, on ``device``:
        the model file's own ``preprocess`` if it has one, else the ``view``s normalised.
        ``views``: the images' ``view``s, when the caller has made them already."""
        if self.hooks.preprocess is None:
            return self.to_tensor(views if views is not None else list(map(self.view, images)))
        inputs = [
            self.hooks.input_of(to_mode(image, self.in_channels), self.in_channels, self.input_size)
            for image in images
        ]
        return torch.stack(inputs).to(self.device)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) float32 class probabilities: the model file's ``decode``
        (checked) if it has one, else the softmax. The explanation engine's ``decode``."""
        return self.hooks.probabilities(logits)

    def log_probabilities(
        self, logits: torch.Tensor, probabilities: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, K) float32 log class probabilities, consistent with ``decode``
        (``probabilities``: ``decode(logits)`` if already computed)."""
        return self.hooks.log_probabilities(logits, probabilities)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "description": self.description,
            "class_names": self.class_names,
            "num_classes": len(self.class_names),
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_params": sum(p.numel() for p in self.module.parameters()),
            "device": str(self.device),
            "is_imagenet": self.is_imagenet,
            "own_preprocess": self.hooks.preprocess is not None,
            "own_decode": self.hooks.decode is not None,
            **self.extra,
        }


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Grayscale or RGB, whatever the source mode (RGBA, palette, 16-bit, CMYK)."""
    return to_l_or_rgb(image).convert("L" if channels == 1 else "RGB")


def square_view(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))),
        Image.Resampling.BILINEAR,
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device auto")
    if choice not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {choice!r}; use auto, cpu or cuda")
    return torch.device(choice)


# ---- building models ------------------------------------------------------------------------


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def model_kind(spec: str) -> str:
    """'smallcnn' | 'preset' | 'torchvision' | 'torchscript' | 'python', or a UserError naming
    the choices."""
    if spec == "smallcnn":
        return "smallcnn"
    if spec in PRESETS:
        return "preset"
    if spec.startswith("torchscript:"):
        return "torchscript"
    if spec.startswith("python:"):
        return "python"
    if spec in torchvision_names():
        return "torchvision"
    raise UserError(
        f"unknown model {spec!r}; use smallcnn, a preset ({', '.join(PRESETS)}), a torchvision "
        "name (e.g. vgg16, resnet18, resnet50), torchscript:PATH or python:FILE.py"
    )


def existing_file(spec: str) -> Path:
    path = Path(spec.split(":", 1)[1]).expanduser()
    if not path.is_file():
        raise UserError(
            f"model file {str(path)!r} does not exist; check the path after '{spec.split(':')[0]}:'"
        )
    return path.resolve()


def build_torchvision(
    name: str, weights: str | None, device: torch.device, progress: bool
) -> ModelAdapter:
    """A torchvision architecture with ImageNet weights (torchvision's own download and cache),
    random weights (``none``) or a state dict file (loaded with ``weights_only=True``)."""
    import torchvision

    weights = weights or "imagenet"
    enum = torchvision.models.get_model_weights(name).DEFAULT
    categories = list(enum.meta["categories"])
    if weights == "imagenet":
        try:
            module = torchvision.models.get_model(name, weights=enum, progress=progress)
        except (OSError, RuntimeError) as exc:
            raise UserError(
                f"could not get ImageNet weights for {name} ({exc}); check your connection, or place "
                f"the file in $TORCH_HOME/hub/checkpoints, or pass --weights none"
            ) from None
        description = f"torchvision {name}, ImageNet weights ({enum.name})"
    elif weights == "none":
        # Seeded by the caller, so the dashboard can rebuild the same random weights.
        module = torchvision.models.get_model(name, weights=None)
        description = f"torchvision {name}, random initialisation"
    else:
        state = load_state_dict(weights_file(weights))
        num_classes = output_size_of(state) or len(categories)
        module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        load_matching_state(module, state, f"{weights} does not fit {name}")
        if num_classes != len(categories):
            categories = [f"class {i}" for i in range(num_classes)]
        description = f"torchvision {name}, weights from {weights}"
    crop = enum.transforms().crop_size
    return ModelAdapter(
        module=module.eval().to(device),
        spec=name,
        name=name,
        description=description,
        class_names=categories,
        input_size=int(crop[0] if isinstance(crop, (list, tuple)) else crop),
        in_channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        device=device,
        is_imagenet=len(categories) == 1000,
        extra={"weights": weights},
    )


def check_weights_option(model_spec: str, weights: str | None) -> None:
    """A UserError unless ``--weights`` fits ``--model``, checked before any data is loaded.

    ``--weights`` applies to torchvision architectures only (``imagenet``, ``none`` or an
    existing state-dict file). With any other model it is an error rather than silently
    ignored: smallcnn is trained here, a TorchScript file carries its weights, and a python:
    model file loads its own in ``get_model()``.
    """
    if weights is None:
        return
    kind = model_kind(model_spec)
    if kind == "torchvision":
        if weights not in NAMED_WEIGHTS:
            weights_file(weights)
        return
    fixes = {
        "smallcnn": "smallcnn is trained on the dataset (and cached in data/models/)",
        "preset": f"{model_spec} is trained on the dataset",
        "torchscript": "a TorchScript file carries its own weights",
        "python": "a python: model file loads its own weights in get_model(), e.g. "
        "model.load_state_dict(torch.load(PATH, weights_only=True))",
    }
    raise UserError(
        f"--weights only applies to torchvision models, not to {model_spec}: {fixes[kind]}; "
        "drop --weights"
    )


def weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"weights file {str(path)!r} does not exist; pass --weights imagenet, none or the "
            "path of a state-dict file (.pt/.pth)"
        )
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (loaded with ``weights_only=True``), as people save them: a
    bare ``model.state_dict()``, a training checkpoint dict holding it under one of
    ``CHECKPOINT_KEYS``, and keys prefixed by ``nn.DataParallel`` or ``torch.compile``."""
    if not path.is_file():
        raise UserError(
            f"weights file {str(path)!r} does not exist; pass imagenet, none or a .pt path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the user's file
        raise UserError(
            f"{path} is not a PyTorch state dict ({type(exc).__name__}); save one with torch.save(model.state_dict(), path)"
        ) from None
    state = unwrap_checkpoint(state, path)
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict itself, from a bare one or from (nested) checkpoint dicts."""
    save_hint = "save one with torch.save(model.state_dict(), path)"
    while not is_state_dict(obj):
        if not isinstance(obj, dict):
            raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict; {save_hint}")
        if not obj:
            raise UserError(f"{path} holds an empty dict, not a state dict; {save_hint}")
        inner = next((obj[key] for key in CHECKPOINT_KEYS if isinstance(obj.get(key), dict)), None)
        if inner is None:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise UserError(
                f"{path} is a dict with keys {keys} but no state dict of tensors under "
                f"{' / '.join(CHECKPOINT_KEYS)}; {save_hint}"
            )
        obj = inner
    return obj


def load_matching_state(module: nn.Module, state: dict[str, torch.Tensor], problem: str) -> None:
    """Load ``state`` into ``module``, or a UserError starting with ``problem`` that names a few
    missing, unexpected and misshapen keys. Keys under one extra leading name that every key
    shares (PyTorch Lightning's ``model.``) are matched without it."""
    expected = module.state_dict()
    state = strip_shared_prefix(state, expected.keys())
    wrong_shape = [
        key
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    misshapen = [
        f"{key} {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
        for key in wrong_shape
    ]
    # strict=False reports rather than raises (except for shapes, left out here); torch itself
    # decides which keys may be absent (an old BatchNorm checkpoint without num_batches_tracked).
    result = module.load_state_dict(
        {key: value for key, value in state.items() if key not in wrong_shape}, strict=False
    )
    missing = [key for key in result.missing_keys if key not in wrong_shape]
    unexpected = list(result.unexpected_keys)
    if misshapen or missing or unexpected:
        parts = [
            f"{len(keys)} {kind} key{'' if len(keys) == 1 else 's'} "
            f"({', '.join(keys[:SHOWN_KEYS])}{', …' if len(keys) > SHOWN_KEYS else ''})"
            for kind, keys in (
                ("misshapen", misshapen),
                ("missing", missing),
                ("unexpected", unexpected),
            )
            if keys
        ]
        raise UserError(
            f"{problem}: {'; '.join(parts)}; pass weights saved from this architecture "
            "(torch.save(model.state_dict(), path)), or the --model they were trained with"
        )


def strip_shared_prefix(state: dict[str, torch.Tensor], expected: Any) -> dict[str, torch.Tensor]:
    """``state`` without a leading ``name.`` that all its keys share, when no key matches
    ``expected`` as they are but some do without it."""
    wanted = set(expected)
    while state and not wanted.intersection(state):
        heads = {key.split(".", 1)[0] for key in state}
        if len(heads) != 1 or not all("." in key for key in state):
            break
        stripped = {key.split(".", 1)[1]: value for key, value in state.items()}
        if not wanted.intersection(stripped):
            break
        state = stripped
    return state


def output_size_of(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight: the class count of a classifier checkpoint."""
    matrices = [value for key, value in state.items() if key.endswith("weight") and value.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


class ScriptLeaf(nn.Module):
    """A Python shell around one TorchScript submodule, so forward hooks can attach to it
    (``register_forward_hook`` is not supported on ScriptModules)."""

    scripted: nn.Module

    def __init__(self, scripted: nn.Module):
        super().__init__()
        # Kept out of the module tree on purpose: the shell must stay a leaf, since hooks and
        # layer discovery can only use it, never the compiled module inside.
        object.__setattr__(self, "scripted", scripted)
        self.original_name = getattr(scripted, "original_name", "ScriptModule")

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.scripted.parameters(recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


def unwrap_script(scripted: nn.Module) -> nn.Module:
    """Rebuild nested scripted Sequentials as Python Sequentials of ``ScriptLeaf``s; anything
    else stays one opaque layer (its inner calls are compiled and cannot be observed)."""
    if getattr(scripted, "original_name", "") == "Sequential":
        return nn.Sequential(*[unwrap_script(child) for child in scripted.children()])
    return ScriptLeaf(scripted)


def build_torchscript(spec: str, device: torch.device, input_size: int | None) -> ModelAdapter:
    path = existing_file(spec)
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated, still supported.
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise UserError(
            f"{path} is not a TorchScript model ({type(exc).__name__}); save one with "
            "torch.jit.save(torch.jit.script(model), path), or use python:FILE.py"
        ) from None
    module = unwrap_script(scripted)
    if isinstance(module, ScriptLeaf):
        report.warn(
            f"{path.name} is not a scripted nn.Sequential, so only its input and output can be "
            "shown; use python:FILE.py for per-layer views"
        )
    declared = declared_settings(
        lambda name: attribute(scripted, name),
        f"the TorchScript file {path}",
        "set it on the module before torch.jit.save",
        input_size,
    )
    return ModelAdapter(
        module=module.eval().to(device),
        spec=spec,
        name=path.stem,
        description=f"TorchScript model {path.name}",
        class_names=declared.class_names,
        input_size=declared.input_size,
        in_channels=declared.in_channels,
        mean=declared.mean,
        std=declared.std,
        device=device,
        extra={"path": str(path)},
    )


def attribute(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except (AttributeError, RuntimeError):
        return None


def build_python(spec: str, device: torch.device, input_size: int | None) -> ModelAdapter:
    """``python:FILE.py`` exposing ``get_model()``; optional ``class_names``, ``input_size``,
    ``in_channels``, ``mean``, ``std`` (checked by :func:`declared_settings`) and the hooks
    ``preprocess(image)`` and ``decode(logits)`` (``pipelines/model_hooks.py``). Only ever loaded
    from the CLI, never from an upload. A file that calls ``sys.exit()`` is a UserError too."""
    path = existing_file(spec)
    module_name = f"layerscope_user_model_{abs(hash(str(path)))}"
    try:
        import_spec = importlib.util.spec_from_file_location(module_name, path)
        if import_spec is None or import_spec.loader is None:
            raise UserError(f"{path} cannot be imported as a Python module; pass a .py file")
        user = importlib.util.module_from_spec(import_spec)
        sys.modules[module_name] = user
        import_spec.loader.exec_module(user)
    except SystemExit as exc:
        raise UserError(
            f"{path} called sys.exit({exc.code!r}) while being imported; keep script code under "
            "`if __name__ == '__main__':` so importing the file only defines get_model()"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import
        raise UserError(f"{path} failed to import: {type(exc).__name__}: {exc}") from None
    get_model: Callable[[], nn.Module] | None = getattr(user, "get_model", None)
    if not callable(get_model):
        raise UserError(f"{path} has no get_model() function; define one that returns an nn.Module")
    try:
        model = get_model()
    except SystemExit as exc:
        raise UserError(
            f"get_model() in {path} called sys.exit({exc.code!r}); make it return the "
            "nn.Module instead"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"get_model() in {path} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"get_model() in {path} returned a {type(model).__name__}, not an nn.Module"
        )
    declared = declared_settings(lambda name: getattr(user, name, None), str(path), "", input_size)
    hooks = ModelHooks.of_module(user, str(path))
    return ModelAdapter(
        module=model.eval().to(device),
        spec=spec,
        name=path.stem,
        description=f"{type(model).__name__} from {path.name}",
        class_names=declared.class_names,
        input_size=declared.input_size,
        in_channels=declared.in_channels,
        mean=declared.mean,
        std=declared.std,
        device=device,
        extra={"path": str(path)},
        hooks=hooks,
    )


# ---- what a model file declares -------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredSettings:
    """A model file's optional attributes, checked, with the defaults filled in."""

    class_names: list[str]  # [] when not declared: named "class i" once the outputs are known
    input_size: int  # side of the square input, pixels
    in_channels: int  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...]  # one per channel, for pixels scaled to 0..1
    std: tuple[float, ...]  # one per channel, all > 0


def declared_settings(
    read: Callable[[str], Any], source: str, how_to_set: str, input_size: int | None
) -> DeclaredSettings:
    """Check what a model file declares; ``read(name)`` is the attribute or None if absent.

    Accepted: ``input_size`` an int or an (H, W) pair with H == W (the pipeline's views are
    square; a non-square pair is an error); ``in_channels`` 1 or 3; ``mean``/``std`` one number
    or one per channel (tuple, list or tensor), ``std`` > 0; ``class_names`` a list of unique
    strings. ``input_size`` (from --input-size) wins over the file's. Anything else is a
    UserError naming the attribute, ``source`` and the fix (``how_to_set``, if given, says
    where to make it).
    """

    def bad(name: str, value: Any, problem: str, fix: str) -> UserError:
        shown = reprlib.repr(value)
        where = f" ({how_to_set})" if how_to_set else ""
        return UserError(f"{name} = {shown} in {source} {problem}; {fix}{where}")

    size = input_size if input_size is not None else check_input_size(read("input_size"), bad)
    channels = read("in_channels")
    if channels is None:
        channels = 3
    elif not is_whole(channels) or int(channels) not in (1, 3):
        raise bad(
            "in_channels",
            channels,
            "is not a channel count LayerScope feeds",
            "use in_channels = 1 (grayscale) or 3 (RGB)",
        )
    channels = int(channels)
    mean = check_stats("mean", read("mean"), channels, bad)
    std = check_stats("std", read("std"), channels, bad)
    return DeclaredSettings(
        class_names=check_class_names(read("class_names"), bad),
        input_size=size,
        in_channels=channels,
        mean=mean or (IMAGENET_MEAN if channels == 3 else (0.5,)),
        std=std or (IMAGENET_STD if channels == 3 else (0.5,)),
    )


def is_whole(value: Any) -> bool:
    """An integer (Python, NumPy or a 0-d tensor), never a bool."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_list(value: Any) -> Any:
    """Tensors and arrays as flat lists (a (3, 1, 1) buffer is 3 values); others unchanged."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.reshape(-1).tolist() if value.ndim else value.item()
    return value


def check_input_size(value: Any, bad: Callable[..., UserError]) -> int:
    if value is None:
        return 224
    value = as_list(value)
    fix = "use one side, e.g. input_size = 224, or an (H, W) pair with H == W, or pass --input-size"
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(is_whole(side) for side in sides):
        raise bad("input_size", value, "is not a side or an (H, W) pair of whole pixels", fix)
    if any(int(side) <= 0 for side in sides):
        raise bad("input_size", value, "is not a positive size", fix)
    if len(set(map(int, sides))) != 1:
        raise bad(
            "input_size",
            value,
            "is not square, and LayerScope feeds square inputs (shorter side resized, centre "
            "cropped)",
            f"use input_size = {min(map(int, sides))} if the model accepts square inputs, or pass "
            "--input-size",
        )
    return int(sides[0])


def check_stats(
    name: str, value: Any, channels: int, bad: Callable[..., UserError]
) -> tuple[float, ...] | None:
    """``mean`` or ``std`` as one float per channel, or None when not declared."""
    if value is None:
        return None
    value = as_list(value)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    example = "(0.5,)" if channels == 1 else "(0.5, 0.5, 0.5)"
    if not values or not all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in values
    ):
        raise bad(
            name, value, "is not a number or a tuple of numbers", f"use e.g. {name} = {example}"
        )
    if len(values) not in (1, channels):
        raise bad(
            name,
            value,
            f"has {len(values)} values but the model takes {channels} channel"
            f"{'' if channels == 1 else 's'} (in_channels = {channels})",
            f"give one value per channel, e.g. {name} = {example}, or set in_channels to match",
        )
    if name == "std" and any(x <= 0 for x in values):
        raise bad(
            name, value, "has a value <= 0, and pixels are divided by it", "use positive values"
        )
    if name == "mean" and any(not 0 <= x <= 1 for x in values):
        raise bad(
            name,
            value,
            "is outside 0..1, but LayerScope scales pixels to 0..1 before normalising",
            "give the mean of 0..1 pixels (divide 0-255 values by 255)",
        )
    return tuple(float(x) for x in values) * (channels if len(values) == 1 else 1)


def check_class_names(value: Any, bad: Callable[..., UserError]) -> list[str]:
    if value is None:
        return []
    fix = "use a list of strings in the order of the model's outputs, e.g. class_names = ['cat', 'dog']"
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
        raise bad("class_names", value, "is not a list of strings", fix)
    repeated = sorted({n for n in value if value.count(n) > 1})
    if repeated:
        raise bad(
            "class_names",
            value,
            f"repeats {', '.join(map(repr, repeated[:3]))}",
            "give each output its own name",
        )
    return list(value)


def smallcnn_adapter(
    in_channels: int, class_names: list[str], device: torch.device, seed: int = 0
) -> ModelAdapter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = SmallCNN(in_channels, len(class_names), SMALLCNN_INPUT_SIZE)
    return ModelAdapter(
        module=module.eval().to(device),
        spec="smallcnn",
        name="smallcnn",
        description="SmallCNN (3 conv blocks + 2 dense layers), trained on this dataset",
        class_names=list(class_names),
        input_size=SMALLCNN_INPUT_SIZE,
        in_channels=in_channels,
        mean=(0.5,) * in_channels,
        std=(0.5,) * in_channels,
        device=device,
    )


def preset_adapter(
    name: str,
    in_channels: int,
    class_names: list[str],
    input_size: int | None,
    device: torch.device,
    seed: int = 0,
) -> ModelAdapter:
    """A preset (``pipelines.presets``) with seeded initial weights, normalised like smallcnn."""
    size = input_size or SMALLCNN_INPUT_SIZE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_preset(name, in_channels, len(class_names), size)
    return ModelAdapter(
        module=module.eval().to(device),
        spec=name,
        name=name,
        description=DESCRIPTIONS[name],
        class_names=list(class_names),
        input_size=size,
        in_channels=in_channels,
        mean=(0.5,) * in_channels,
        std=(0.5,) * in_channels,
        device=device,
    )


def replace_classifier(module: nn.Module, num_classes: int) -> str:
    """Swap the last ``nn.Linear`` of a torchvision model (resnet's ``fc``, vgg's
    ``classifier.6``, ...) for a fresh one with ``num_classes`` outputs (caller's torch seed);
    returns its layer id. A UserError for a model whose last layer is not dense (squeezenet)."""
    last = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    if not last:
        raise UserError(
            f"{type(module).__name__} has no dense (Linear) last layer to replace, so it cannot "
            "be fine-tuned here; pick another torchvision model (resnet18, vgg16, ...)"
        )
    layer_id = last[-1]
    old = module.get_submodule(layer_id)
    assert isinstance(old, nn.Linear)
    new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    parent_id, _, attribute = layer_id.rpartition(".")
    setattr(module.get_submodule(parent_id) if parent_id else module, attribute, new)
    return layer_id


def fine_tune_adapter(
    adapter: ModelAdapter, class_names: list[str], fine_tune: str, seed: int
) -> str:
    """Turn a torchvision adapter into one for the dataset's classes: its last dense layer
    replaced (seeded), the dataset's class names (identity label mapping), and, for
    ``fine_tune == "classifier"``, every other parameter frozen. Returns the new layer's id."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = replace_classifier(adapter.module, len(class_names))
    trains_all = fine_tune == "all"
    for name, parameter in adapter.module.named_parameters():
        parameter.requires_grad_(trains_all or name.startswith(head + "."))
    adapter.class_names = list(class_names)
    adapter.is_imagenet = False
    what = "all layers" if trains_all else "its new classifier only"
    adapter.description += f", fine-tuned on this dataset ({what})"
    adapter.extra["replaced_head"] = head
    return head


def train_or_load_smallcnn(
    adapter: ModelAdapter,
    checkpoint: Path,
    load_inputs: Callable[[], tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    seed: int,
    progress: bool,
    before_epoch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Load the dataset's smallcnn checkpoint, or train one (seeded) and save it for reuse.

    ``load_inputs`` is only called when training: it returns (inputs, labels, is_test).
    ``before_epoch``: as ``train_small_cnn``'s.
    """
    if checkpoint.is_file():
        adapter.module.load_state_dict(load_state_dict(checkpoint))
        adapter.module.eval()
        return {"checkpoint": str(checkpoint), "trained_now": False}
    module = adapter.module
    if not isinstance(module, SmallCNN):
        raise TypeError(
            f"train_or_load_smallcnn needs a smallcnn adapter, got {type(module).__name__}"
        )
    inputs, labels, is_test = load_inputs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = train_small_cnn(
            module, inputs, labels, is_test, seed, progress=progress, before_epoch=before_epoch
        )
    # Two runs on the same dataset may train it at once: each writes its own temp file, and the
    # rename leaves one whole checkpoint (both are the same, seeded model).
    with atomic_path(checkpoint) as temp:
        torch.save(module.state_dict(), temp)
    return {"checkpoint": str(checkpoint), "trained_now": True, "training": result.__dict__}


def build_adapter(
    spec: str,
    device: torch.device,
    *,
    weights: str | None = None,
    seed: int = 0,
    input_size: int | None = None,
    smallcnn: tuple[int, list[str]] | None = None,
    progress: bool = False,
) -> ModelAdapter:
    """The one place a model spec becomes a ModelAdapter, for the precompute and the dashboard.

    ``smallcnn``: (input channels, class names) of a model LayerScope trains on the dataset
    (the built-in CNN or a preset, at side ``input_size``), which comes back with seeded
    initial weights: the caller trains it or loads its checkpoint. Every other kind is built with
    the torch seed ``seed``, so random-weight models come out identical every time they are built.
    """
    kind = model_kind(spec)
    if kind in ("smallcnn", "preset"):
        if smallcnn is None:
            raise ValueError(f"{spec} needs its (input channels, class names)")
        in_channels, class_names = smallcnn
        if kind == "preset":
            return preset_adapter(spec, in_channels, class_names, input_size, device, seed)
        return smallcnn_adapter(in_channels, class_names, device, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "torchvision":
            return build_torchvision(spec, weights, device, progress)
        if kind == "torchscript":
            return build_torchscript(spec, device, input_size)
        return build_python(spec, device, input_size)


def load_inputs(
    adapter: ModelAdapter, dataset: Any, indices: Any, progress: bool = False, desc: str = ""
) -> tuple[list[Image.Image], torch.Tensor]:
    """The dataset's images at ``indices``: their ``view``s (for thumbnails and CAMs) and the
    model's (B, C, S, S) input (``adapter.preprocess``), each image decoded once."""
    indices = list(indices)
    bar = tqdm(indices, desc=desc, unit="img", disable=not progress or len(indices) < 2000)
    views: list[Image.Image] = []
    own: list[torch.Tensor] = []
    for i in bar:
        image = dataset.load_image(int(i))
        views.append(adapter.view(image))
        if adapter.hooks.preprocess is not None:
            # Made now, so a chunk's full-size images are not all held at once.
            own.append(adapter.preprocess([image]))
    return views, torch.cat(own) if own else adapter.to_tensor(views)


# ---- request time: reopen the model of a finished run ---------------------------------------


def rebuild_adapter(manifest: Manifest, checkpoint: Path, device: torch.device) -> ModelAdapter:
    """The run's model exactly as the precompute used it (a model the run trained, smallcnn,
    a preset or a fine-tuned torchvision model, from the run's checkpoint; seeded random weights
    rebuilt with the same seed)."""
    model = manifest.require_model()
    config = manifest.require_config()
    head = model.replaced_head
    adapter = build_adapter(
        config.model,
        device,
        # A fine-tuned model's weights are all in the run's checkpoint: no ImageNet download.
        weights="none" if head else config.weights,
        seed=config.seed,
        input_size=model.input_size,
        smallcnn=(model.in_channels, list(model.class_names)),
    )
    if head:
        replace_classifier(adapter.module, len(model.class_names))
        adapter.is_imagenet = False
    if model.trained_here:
        adapter.module.load_state_dict(load_state_dict(checkpoint))
        adapter.module.eval()
    # Names the precompute gave a model that declares none ("class 0", ...).
    adapter.class_names = list(model.class_names)
    return adapter


@dataclass
class RunModel:
    """A run's model and data, for the dashboard's per-sample, on-demand work.

    Samples are found by uid, never by position: a folder that gained or lost images since the
    run was computed lists them in another order. Each image file is checked against the size
    and mtime the run recorded, so a changed picture is refused instead of explained."""

    adapter: ModelAdapter
    dataset: Any  # pipelines.datasets.Dataset
    uids: list[str]  # per sample row
    recorded_files: dict[str, list[int]] | None  # the run's dataset_files table, if any
    run_id: str = ""

    def __post_init__(self) -> None:
        self._index_by_uid = {record.uid: i for i, record in enumerate(self.dataset.samples)}

    def input_for(self, row: int) -> torch.Tensor:
        """(1, C, S, S) model-ready input of sample row ``row``."""
        return self.adapter.preprocess([self.image_of(row)])

    def image_of(self, row: int) -> Image.Image:
        """The image of sample row ``row``, as its dataset loads it, checked to be the one the
        run was computed from."""
        from pipelines.fingerprint import sample_is_unchanged

        uid = self.uids[row]
        index = self._index_by_uid.get(uid)
        fix = "compute a fresh run of it with `python main.py precompute ... --run-id NEW`"
        if index is None:
            raise UserError(
                f"sample {uid} (row {row}) of run '{self.run_id}' is no longer in its dataset; "
                f"the dataset changed since the run was computed: {fix}"
            )
        source = self.dataset.samples[index].source
        if not sample_is_unchanged(self.dataset.root, source, self.recorded_files):
            raise UserError(
                f"the image of sample {uid} ({source}) changed on disk since run "
                f"'{self.run_id}' was computed, so it cannot be explained; {fix}"
            )
        return self.dataset.load_image(index)

    def layer_module(self, layer_id: str) -> nn.Module:
        modules = dict(self.adapter.module.named_modules())
        if layer_id not in modules:
            raise UserError(f"unknown layer '{layer_id}'; run `python main.py runs` to list layers")
        return modules[layer_id]


def open_run_model(store: Any, data_dir: Path, device: str = "auto") -> RunModel:
    """store: a ``pipelines.store.RunStore`` of a run whose model stage is done."""
    manifest = store.read_record()
    adapter = rebuild_adapter(
        manifest, store.artifact_path("model_checkpoint"), resolve_device(device)
    )
    dataset = open_dataset(manifest.require_dataset().spec, datasets_dir(data_dir), progress=False)
    samples = store.load_json("samples")
    recorded = store.load_json("dataset_files") if store.has("dataset_files") else None
    return RunModel(
        adapter=adapter,
        dataset=dataset,
        uids=samples["uid"],
        recorded_files=recorded,
        run_id=store.run_id,
    )
