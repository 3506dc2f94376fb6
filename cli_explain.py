"""The ``explain`` command: a run's model explains the user's own image files from the shell.

For each image: the top-10 predictions on stdout, then one PNG per method in ``--out``
(``<image-stem>_<method>.png``), drawn as the method's ``Display`` says, and any per-image
extras a method returns (occlusion's probabilities) as lines. Everything the user can get wrong
(run, images, methods, class, layer, output folder) is checked before the model is built, and
each PNG is written atomically, so Ctrl-C never leaves half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from components.images import explanation_png
from pipelines import report
from pipelines.datasets import UnreadableImage, check_image, read_image
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, Explained, Explainer, Progress, explain
from pipelines.explain.base import check_logits, no_progress
from pipelines.explain.registry import explainers
from pipelines.io import atomic_write_bytes
from pipelines.models import rebuild_adapter, resolve_device, square_view, to_mode
from pipelines.records import LayerSpec, Manifest
from pipelines.store import RunStore, find_run, runs_hint

TOP_K = 10
# Maps are drawn at the model's input side, but at least this many pixels, so a 32-px digit
# is legible; the overlay image is cut from the original file at that size, not enlarged.
MIN_PNG_SIDE = 224
# Class names listed in full in an "unknown class" error up to this many; beyond, close ones.
LISTED_CLASSES = 20


@dataclass(frozen=True)
class UserImage:
    path: Path
    stem: str  # unique among the command's images: the PNGs' name prefix
    image: Image.Image  # decoded, "L" or "RGB"


def explain_command(args: argparse.Namespace) -> None:
    store = open_run(args.data_dir, args.run)
    record = store.read_record()
    model_info = record.require_model()
    methods = chosen_methods(args.method)
    images = read_images([Path(text).expanduser() for text in args.image])
    class_index = (
        None if args.class_ is None else resolve_class(args.class_, model_info.class_names)
    )
    if args.method is None and args.layer is None and model_info.gradcam_layer is None:
        # Every method by default: those that weigh a layer cannot run on this model.
        skipped = [explainer.title for explainer in methods if explainer.uses_target_layer]
        methods = [explainer for explainer in methods if not explainer.uses_target_layer]
        if skipped:
            report.warn(
                f"run '{record.run_id}' has no default Grad-CAM layer, so {', '.join(skipped)} "
                "are left out; pass --layer LAYER_ID to include them"
            )
    uses_layer = any(explainer.uses_target_layer for explainer in methods)
    layer_id = target_layer_id(record, args.layer, args.data_dir) if uses_layer else None
    out_dir = writable_folder(Path(args.out).expanduser())

    adapter = rebuild_adapter(
        record, store.artifact_path("model_checkpoint"), resolve_device(args.device)
    )
    modules = dict(adapter.module.named_modules())
    if layer_id is not None and layer_id not in modules:
        default = model_info.gradcam_layer
        raise UserError(
            f"layer '{layer_id}' of run '{record.run_id}' is not a module of its model, so "
            "Grad-CAM cannot weigh it; pick a convolutional layer with --layer"
            + (f", e.g. the run's default {default}" if default else "")
        )
    explainer_run = ExplainerRun(
        module=adapter.module,
        target=modules[layer_id] if layer_id is not None else None,
        out_size=max(adapter.input_size, MIN_PNG_SIDE),
        out_dir=out_dir,
        decode=adapter.decode,
        # Every method by default: one that refuses this model is skipped with a warning.
        skip_failures=args.method is None,
    )
    for user_image in images:
        inputs = adapter.preprocess([user_image.image])
        with torch.inference_mode():
            logits = check_logits(adapter.module(inputs)).float()
        if class_index is not None and class_index >= logits.shape[1]:
            raise UserError(
                f"class {class_index} is out of range for a model with {logits.shape[1]} "
                f"outputs; pass a class between 0 and {logits.shape[1] - 1}"
            )
        # The model file's own decode where it has one, as everywhere else.
        probabilities = adapter.decode(logits)[0]
        chosen = int(probabilities.argmax()) if class_index is None else class_index
        print_top_k(user_image.path, probabilities, model_info.class_names, chosen)
        explainer_run.explain_image(user_image, inputs, chosen, methods)


@dataclass(frozen=True)
class ExplainerRun:
    """What every image of one command is explained with, and where its PNGs go."""

    module: torch.nn.Module
    target: torch.nn.Module | None  # the Grad-CAM layer; None when no method weighs one
    out_size: int  # S of the maps and PNGs
    out_dir: Path
    decode: Callable[[torch.Tensor], torch.Tensor]  # logits -> probabilities (the model's own)
    skip_failures: bool  # warn about a method that refuses the model instead of stopping

    def explain_image(
        self, user_image: UserImage, inputs: torch.Tensor, chosen: int, methods: list[Explainer]
    ) -> None:
        """inputs: (1, C, H, W) model-ready; chosen: the class explained."""
        overlay_base = np.asarray(square_view(to_mode(user_image.image, 3), self.out_size))
        classes = torch.tensor([chosen], device=inputs.device)
        for group in method_groups(methods):
            for done, explained in self.explain_group(group, user_image, inputs, classes):
                for explainer in done:
                    write_png(self.out_dir, user_image, explainer, explained, overlay_base)
                    print_extras(explainer, explained)

    def explain_group(
        self,
        group: list[Explainer],
        user_image: UserImage,
        inputs: torch.Tensor,
        classes: torch.Tensor,
    ) -> list[tuple[list[Explainer], Explained]]:
        """The group's maps from one engine call; when methods are skipped rather than fatal,
        a group that fails is retried one method at a time, and a method that fails alone is
        left out with a warning (LRP refusing an architecture it has no rules for, say)."""
        try:
            with progress_bar(group, user_image) as progress:
                names = [explainer.name for explainer in group]
                explained = explain(
                    self.module, self.target, inputs, classes, names, self.out_size,
                    progress=progress, decode=self.decode,
                )  # fmt: skip
        except UserError as exc:
            if not self.skip_failures:
                raise
            if len(group) > 1:
                return [
                    pair
                    for explainer in group
                    for pair in self.explain_group([explainer], user_image, inputs, classes)
                ]
            report.warn(f"{group[0].title} left out: {exc}", once=True)
            return []
        return [(group, explained)]


# ---- checks of what the user typed ------------------------------------------------------


def open_run(data_dir: Path, run_id: str) -> RunStore:
    """The run ``run_id`` in ``data_dir``, with its model stage done."""
    store = find_run(data_dir, run_id)
    if store.read_record().stage("model").state != "done":
        raise UserError(
            f"the model of run '{run_id}' is not ready (its precompute stopped before the model "
            "stage finished); run its precompute command again to finish it"
        )
    return store


def chosen_methods(arguments: Sequence[Sequence[str]] | None) -> list[Explainer]:
    """``--method`` values (repeated, several after one flag, or comma-separated), or every
    registered method when none is given."""
    if arguments is None:
        return list(EXPLAINERS.values())
    names = list(dict.fromkeys(name for group in arguments for name in group))
    if not names:
        raise UserError(f"--method needs a method name; choose from {', '.join(EXPLAINERS)}")
    return explainers(names)


def read_images(paths: Sequence[Path]) -> list[UserImage]:
    """Each file decoded (all of it: a truncated file is refused), named by a unique stem."""
    stems: dict[str, int] = {}
    images = []
    for path in paths:
        image = read_user_image(path)
        count = stems[path.stem] = stems.get(path.stem, 0) + 1
        # cat.png and other/cat.png: cat_gradcam.png and cat-2_gradcam.png
        stem = path.stem if count == 1 else f"{path.stem}-{count}"
        images.append(UserImage(path, stem, image))
    return images


def read_user_image(path: Path) -> Image.Image:
    if not path.exists():
        raise UserError(f"image {path} does not exist; check the path after --image")
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass image files, e.g. --image {path}/*.png")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot read {path} ({exc.strerror or exc}); check the file's permissions"
        ) from None
    not_an_image = UserError(
        f"{path} is not an image file that can be read (PNG, JPEG, BMP, GIF, WebP or TIFF), or "
        "it is damaged; pass an image file"
    )
    if not check_image(path):  # PNG: every chunk's checksum; others: a full decode
        raise not_an_image
    try:
        return read_image(path)
    except UnreadableImage:
        raise not_an_image from None


def resolve_class(text: str, class_names: Sequence[str]) -> int:
    """A model class from an exact name (any case), an index, or a unique start of a name."""
    wanted = text.strip().casefold()
    exact = [i for i, name in enumerate(class_names) if name.casefold() == wanted]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise UserError(
            f"--class {text!r} names classes {', '.join(map(str, exact))}; pass the index of "
            "the one you mean"
        )
    if wanted.isdigit():
        index = int(wanted)
        if index >= len(class_names):
            raise UserError(
                f"--class {index} is out of range: the model has {len(class_names)} classes, "
                f"0..{len(class_names) - 1}"
            )
        return index
    starts = [i for i, name in enumerate(class_names) if name.casefold().startswith(wanted)]
    if len(starts) == 1:
        return starts[0]
    if len(starts) > 1:
        shown = ", ".join(repr(class_names[i]) for i in starts[:5])
        more = ", …" if len(starts) > 5 else ""
        raise UserError(
            f"--class {text!r} starts {len(starts)} class names ({shown}{more}); type more of "
            "the name, or pass its index"
        )
    if len(class_names) <= LISTED_CLASSES:
        choices = f"the classes are {', '.join(class_names)}"
    else:
        close = difflib.get_close_matches(text, class_names, n=5, cutoff=0.5)
        choices = (f"close names: {', '.join(close)}; " if close else "") + (
            f"or pass an index 0..{len(class_names) - 1} (without --class the top-10 "
            "predictions print their names)"
        )
    raise UserError(f"unknown class {text!r}; {choices}")


def target_layer_id(record: Manifest, layer: str | None, data_dir: Path) -> str:
    """The layer Grad-CAM weighs: ``--layer`` (checked against the run's layers) or the run's
    own Grad-CAM layer."""
    default = record.require_model().gradcam_layer
    fix = f"{runs_hint(data_dir)} lists the run's layers"
    if layer is None:
        if default is None:
            raise UserError(
                f"run '{record.run_id}' has no default Grad-CAM layer (its model has no conv "
                f"layer with spatial output); pass --layer LAYER_ID ({fix}), or --method with "
                f"methods that need no layer: {', '.join(needs_no_layer())}"
            )
        return default
    specs: dict[str, LayerSpec] = {spec.id: spec for spec in record.layers}
    spec = specs.get(layer)
    if spec is None:
        close = difflib.get_close_matches(layer, list(specs), n=3)
        maybe = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown layer '{layer}' in run '{record.run_id}'{maybe}; {fix}")
    if len(spec.output_shape) != 3 or spec.output_shape[1] * spec.output_shape[2] <= 1:
        suggestion = f", e.g. the run's default {default}" if default else ""
        raise UserError(
            f"layer '{layer}' ({spec.type}, output {tuple(spec.output_shape)}) has no spatial "
            f"maps for Grad-CAM to weigh; pick a layer with (C, H, W) output{suggestion}"
        )
    return layer


def needs_no_layer() -> list[str]:
    return [name for name, explainer in EXPLAINERS.items() if not explainer.uses_target_layer]


def writable_folder(path: Path) -> Path:
    """``path``, created if missing, after a real test write (``os.access`` says yes to root on
    a read-only mount)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".layerscope-write-test-"):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot write to --out {path} ({exc.strerror or exc}); pass a folder you can write to"
        ) from None
    return path


# ---- running and writing ----------------------------------------------------------------


def method_groups(methods: Sequence[Explainer]) -> list[list[Explainer]]:
    """The fast methods together (they share the engine's forward and backward passes), then
    each slow one alone, so each gets its own progress bar."""
    fast = [explainer for explainer in methods if not explainer.slow]
    slow = [[explainer] for explainer in methods if explainer.slow]
    return ([fast] if fast else []) + slow


@contextlib.contextmanager
def progress_bar(group: Sequence[Explainer], user_image: UserImage) -> Iterator[Progress]:
    """For a slow method, a tqdm bar on stderr fed by the engine's ``progress(done, total)``,
    closed however the block ends (Ctrl-C's message then lands on a clean line)."""
    if not any(explainer.slow for explainer in group):
        yield no_progress
        return
    bar = tqdm(desc=f"{user_image.stem}: {group[0].title}", unit="pass", leave=False)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


def print_top_k(
    path: Path, probabilities: torch.Tensor, class_names: Sequence[str], chosen: int
) -> None:
    """probabilities: (K,) float32."""
    k = min(TOP_K, probabilities.shape[0])
    top_prob, top_index = probabilities.topk(k)
    print(f"{path}: explaining {class_label(chosen, class_names)!r} (class {chosen}); top {k}:")
    for rank, (prob, index) in enumerate(zip(top_prob.tolist(), top_index.tolist(), strict=True)):
        print(f"  {rank + 1:>2}. {prob:7.2%}  {class_label(index, class_names)}")


def class_label(index: int, class_names: Sequence[str]) -> str:
    return class_names[index] if index < len(class_names) else f"class {index}"


def write_png(
    out_dir: Path,
    user_image: UserImage,
    explainer: Explainer,
    explained: Explained,
    overlay_base: np.ndarray,
) -> None:
    """overlay_base: (S, S, 3) uint8, the image as the model saw it, at the maps' size."""
    png = explanation_png(explainer.display.value, explained.maps[explainer.name][0], overlay_base)
    path = out_dir / f"{user_image.stem}_{explainer.name}.png"
    atomic_write_bytes(path, png, durable=False)
    print(f"  {explainer.title}: {path}")


def print_extras(explainer: Explainer, explained: Explained) -> None:
    """A method's per-image extras, one line each: a single value as it is; several (occlusion's
    probability with each patch hidden) by their lowest, where it is, and their highest."""
    for name, values in explained.extras.get(explainer.name, {}).items():
        value = np.asarray(values[0])
        label = name.replace("_", " ")
        if value.size == 1:
            shown = f"{value.item():.4g}"
        else:
            at = tuple(int(i) for i in np.unravel_index(int(value.argmin()), value.shape))
            where = at[0] if len(at) == 1 else at
            shown = (
                f"{value.size} values, lowest {value.min():.4g} at {where}, "
                f"highest {value.max():.4g}"
            )
        print(f"    {explainer.title} {label}: {shown}")
