"""One adapter over every kind of model LayerScope can open.

``smallcnn`` (trained here), torchvision architectures, TorchScript files and user Python files
all become a ``ModelAdapter``: an eval-mode ``nn.Module`` on a device, its class names, and the
preprocessing that turns any PIL image into its input. The rest of the pipeline never asks which
kind it has.
"""

from __future__ import annotations

import importlib.util
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

from pipelines.datasets import open_dataset, to_l_or_rgb
from pipelines.errors import UserError
from pipelines.smallcnn import SmallCNN, train_small_cnn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Digits are 8x8: up-sampled so conv maps, thumbnails and CAMs stay legible.
SMALLCNN_INPUT_SIZE = 32


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

    def view(self, image: Image.Image) -> Image.Image:
        """The square, model-sized view of ``image`` that the model, thumbnails and CAMs share."""
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

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.to_tensor([self.view(image) for image in images])

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
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.BILINEAR
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
    """'smallcnn' | 'torchvision' | 'torchscript' | 'python', or a UserError naming the choices."""
    if spec == "smallcnn":
        return "smallcnn"
    if spec.startswith("torchscript:"):
        return "torchscript"
    if spec.startswith("python:"):
        return "python"
    if spec in torchvision_names():
        return "torchvision"
    raise UserError(
        f"unknown model {spec!r}; use smallcnn, a torchvision name (e.g. vgg16, resnet18, resnet50), "
        "torchscript:PATH or python:FILE.py"
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
        state = load_state_dict(Path(weights))
        num_classes = output_size_of(state) or len(categories)
        module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{weights} does not fit {name}: {str(exc).splitlines()[0]}") from None
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


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def output_size_of(state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D weight: the class count of a classifier checkpoint."""
    matrices = [value for key, value in state.items() if key.endswith("weight") and value.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else None


class ScriptLeaf(nn.Module):
    """A Python shell around one TorchScript submodule, so forward hooks can attach to it
    (``register_forward_hook`` is not supported on ScriptModules)."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        # Kept out of the module tree on purpose: the shell must stay a leaf, since hooks and
        # layer discovery can only use it, never the compiled module inside.
        object.__setattr__(self, "scripted", scripted)
        self.original_name = getattr(scripted, "original_name", "ScriptModule")

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.scripted.parameters(recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


def unwrap_script(scripted: torch.jit.ScriptModule) -> nn.Module:
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
        warnings.warn(
            f"{path.name} is not a scripted nn.Sequential, so only its input and output can be "
            "shown; use python:FILE.py for per-layer views",
            stacklevel=2,
        )
    names = attribute(scripted, "class_names")
    size = input_size or attribute(scripted, "input_size") or 224
    channels = attribute(scripted, "in_channels") or 3
    return ModelAdapter(
        module=module.eval().to(device),
        spec=spec,
        name=path.stem,
        description=f"TorchScript model {path.name}",
        class_names=list(names) if names else [],
        input_size=int(size),
        in_channels=int(channels),
        mean=tuple(attribute(scripted, "mean") or (IMAGENET_MEAN if channels == 3 else (0.5,))),
        std=tuple(attribute(scripted, "std") or (IMAGENET_STD if channels == 3 else (0.5,))),
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
    ``in_channels``, ``mean``, ``std``. Only ever loaded from the CLI, never from an upload."""
    path = existing_file(spec)
    module_name = f"layerscope_user_model_{abs(hash(str(path)))}"
    try:
        import_spec = importlib.util.spec_from_file_location(module_name, path)
        user = importlib.util.module_from_spec(import_spec)
        sys.modules[module_name] = user
        import_spec.loader.exec_module(user)
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import
        raise UserError(f"{path} failed to import: {type(exc).__name__}: {exc}") from None
    get_model: Callable[[], nn.Module] | None = getattr(user, "get_model", None)
    if not callable(get_model):
        raise UserError(f"{path} has no get_model() function; define one that returns an nn.Module")
    try:
        model = get_model()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"get_model() in {path} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(
            f"get_model() in {path} returned a {type(model).__name__}, not an nn.Module"
        )
    channels = int(getattr(user, "in_channels", 3))
    return ModelAdapter(
        module=model.eval().to(device),
        spec=spec,
        name=path.stem,
        description=f"{type(model).__name__} from {path.name}",
        class_names=list(getattr(user, "class_names", [])),
        input_size=int(input_size or getattr(user, "input_size", 224)),
        in_channels=channels,
        mean=tuple(getattr(user, "mean", IMAGENET_MEAN if channels == 3 else (0.5,))),
        std=tuple(getattr(user, "std", IMAGENET_STD if channels == 3 else (0.5,))),
        device=device,
        extra={"path": str(path)},
    )


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


def train_or_load_smallcnn(
    adapter: ModelAdapter,
    checkpoint: Path,
    load_inputs: Callable[[], tuple[torch.Tensor, torch.Tensor, np.ndarray]],
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Load the dataset's smallcnn checkpoint, or train one (seeded) and save it for reuse.

    ``load_inputs`` is only called when training: it returns (inputs, labels, is_test).
    """
    if checkpoint.is_file():
        adapter.module.load_state_dict(load_state_dict(checkpoint))
        adapter.module.eval()
        return {"checkpoint": str(checkpoint), "trained_now": False}
    module = adapter.module
    inputs, labels, is_test = load_inputs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = train_small_cnn(module, inputs, labels, is_test, seed, progress=progress)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    temp = checkpoint.with_suffix(".tmp")
    torch.save(module.state_dict(), temp)
    temp.replace(checkpoint)
    return {"checkpoint": str(checkpoint), "trained_now": True, "training": result.__dict__}


# ---- request time: reopen the model of a finished run ---------------------------------------


def rebuild_adapter(
    manifest: dict[str, Any], checkpoint: Path, device: torch.device
) -> ModelAdapter:
    """The run's model exactly as the precompute used it (smallcnn from the run's checkpoint,
    seeded random weights rebuilt with the same seed)."""
    model = manifest["model"]
    config = manifest["config"]
    kind = model_kind(config["model"])
    if kind == "smallcnn":
        adapter = smallcnn_adapter(model["in_channels"], model["class_names"], device)
        adapter.module.load_state_dict(load_state_dict(checkpoint))
        adapter.module.eval()
        return adapter
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        if kind == "torchvision":
            return build_torchvision(config["model"], config["weights"], device, progress=False)
        if kind == "torchscript":
            adapter = build_torchscript(config["model"], device, model["input_size"])
        else:
            adapter = build_python(config["model"], device, model["input_size"])
    adapter.class_names = model["class_names"]
    return adapter


@dataclass
class RunModel:
    """A run's model and data, for the dashboard's per-sample, on-demand work."""

    adapter: ModelAdapter
    dataset: Any  # pipelines.datasets.Dataset
    dataset_index: list[int]  # per sample row

    def input_for(self, row: int) -> torch.Tensor:
        """(1, C, S, S) model-ready input of sample row ``row``."""
        image = self.dataset.load_image(int(self.dataset_index[row]))
        return self.adapter.preprocess([image])

    def layer_module(self, layer_id: str) -> nn.Module:
        modules = dict(self.adapter.module.named_modules())
        if layer_id not in modules:
            raise UserError(f"unknown layer '{layer_id}'; run `python main.py runs` to list layers")
        return modules[layer_id]


def open_run_model(store: Any, data_dir: Path, device: str = "auto") -> RunModel:
    """store: a ``pipelines.store.RunStore`` of a run whose model stage is done."""
    manifest = store.read_manifest()
    adapter = rebuild_adapter(
        manifest, store.artifact_path("model_checkpoint"), resolve_device(device)
    )
    dataset = open_dataset(manifest["dataset"]["spec"], Path(data_dir) / "datasets", progress=False)
    samples = store.load_json("samples")
    return RunModel(adapter=adapter, dataset=dataset, dataset_index=samples["dataset_index"])
