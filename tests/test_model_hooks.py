"""A python: model file's own ``preprocess`` and ``decode``: used by the adapter, checked on every
call, and refused with an error that names the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import UserError
from pipelines.models import build_python
from pipelines.stages import forward
from pipelines.stages.model import describe_layers

CPU = torch.device("cpu")

NET = """
import numpy as np
import torch
import torch.nn as nn

in_channels = 1
input_size = 8
class_names = ["a", "b", "c"]

def get_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
"""

# Inverted pixels in -1..1 at 8 x 8 (nothing like the default ImageNet-style normalisation) and a
# temperature-scaled softmax (nothing like the default softmax).
HOOKS = """
def preprocess(image):
    assert image.mode == "L", image.mode
    pixels = torch.from_numpy(np.asarray(image.resize((8, 8), 0), dtype=np.float32))
    return (1.0 - 2.0 * pixels / 255.0)[None]

def decode(logits):
    return torch.softmax(logits / 4.0, dim=1)
"""


def model_file(tmp_path, hooks: str = HOOKS):
    source = tmp_path / "hooked.py"
    source.write_text(NET + hooks)
    return source


def image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    return Image.fromarray(pixels)  # RGB, not square: the hook gets it as L, any size


def test_the_files_preprocess_makes_the_models_input(tmp_path):
    adapter = build_python(f"python:{model_file(tmp_path)}", CPU, input_size=None)
    picture = image()
    pixels = np.asarray(picture.convert("L").resize((8, 8), 0), dtype=np.float32)
    expected = torch.from_numpy(1.0 - 2.0 * pixels / 255.0)[None, None]
    batch = adapter.preprocess([picture, image(1)])
    assert batch.shape == (2, 1, 8, 8) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[:1], expected)
    # The view (thumbnails, CAMs) is still the square crop, whatever the hook does.
    assert adapter.view(picture).size == (8, 8)
    assert adapter.describe()["own_preprocess"] and adapter.describe()["own_decode"]


def test_the_files_decode_gives_the_probabilities(tmp_path):
    adapter = build_python(f"python:{model_file(tmp_path)}", CPU, input_size=None)
    logits = torch.tensor([[2.0, 0.0, -2.0], [0.0, 8.0, 0.0]])
    probabilities = adapter.decode(logits)
    torch.testing.assert_close(probabilities, torch.softmax(logits / 4.0, dim=1))
    torch.testing.assert_close(adapter.log_probabilities(logits), probabilities.log())
    plain = build_python(f"python:{model_file(tmp_path, '')}", CPU, input_size=None)
    torch.testing.assert_close(plain.decode(logits), torch.softmax(logits, dim=1))
    torch.testing.assert_close(plain.log_probabilities(logits), torch.log_softmax(logits, dim=1))
    assert not plain.describe()["own_preprocess"]


def test_the_forward_stage_stores_the_files_probabilities(tmp_path):
    adapter = build_python(f"python:{model_file(tmp_path)}", CPU, input_size=None)
    inputs = adapter.preprocess([image(seed) for seed in range(5)])
    per_sample, _ = forward.forward_chunk(adapter, inputs, ["1"], "0", 8, 2)
    with torch.no_grad():
        expected = torch.softmax(adapter.module(inputs) / 4.0, dim=1)
    top, order = expected.topk(3, dim=1)
    np.testing.assert_allclose(per_sample["top10_prob"], top.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(per_sample["top10_index"], order.numpy())
    np.testing.assert_allclose(per_sample["log_prob"], expected.log().numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ("def preprocess(image):\n    return np.zeros((1, 8, 8))", "returned a ndarray, not a torch.Tensor"),
        ("def preprocess(image):\n    return torch.zeros(3, 8, 8)", r"shape \(3, 8, 8\), but the model takes \(1, 8, 8\)"),
        ("def preprocess(image):\n    return torch.zeros(1, 224, 224)", r"input_size = 8"),
        ("def preprocess(image):\n    return torch.zeros(1, 8, 8, dtype=torch.uint8)", "torch.uint8 values"),
        ("def preprocess(image):\n    return torch.full((1, 8, 8), float('nan'))", "NaN"),
        ("def preprocess(image):\n    raise ValueError('no RGB please')", "raised ValueError: no RGB please"),
    ],
)  # fmt: skip
def test_a_wrong_preprocess_names_the_file_and_the_fix(tmp_path, hook, problem):
    source = model_file(tmp_path, hook)
    adapter = build_python(f"python:{source}", CPU, input_size=None)
    with pytest.raises(UserError, match=problem) as caught:
        adapter.preprocess([image()])
    assert str(source) in str(caught.value) and "define preprocess(image)" in str(caught.value)


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ("def decode(logits):\n    return torch.softmax(logits, 1)[:, :2]", r"shape \(2, 2\) for logits of shape \(2, 3\)"),
        ("def decode(logits):\n    return logits", "negative values|do not sum to 1"),
        ("def decode(logits):\n    return torch.sigmoid(logits)", "rows that do not sum to 1"),
        ("def decode(logits):\n    return torch.softmax(logits, 1) * 2 - 0.5", "negative values"),
        ("def decode(logits):\n    return torch.softmax(logits, 1).numpy()", "not a torch.Tensor"),
        ("def decode(logits):\n    return torch.ones_like(logits, dtype=torch.long)", "torch.int64 values"),
    ],
)  # fmt: skip
def test_a_wrong_decode_names_the_file_and_the_fix(tmp_path, hook, problem):
    source = model_file(tmp_path, hook)
    adapter = build_python(f"python:{source}", CPU, input_size=None)
    with pytest.raises(UserError, match=problem) as caught:
        adapter.decode(torch.tensor([[2.0, 0.0, -2.0], [0.0, 8.0, 0.0]]))
    assert str(source) in str(caught.value) and "define decode(logits)" in str(caught.value)
    # The model stage tries it on the first image, before any other work.
    example = adapter.preprocess([image()])
    with pytest.raises(UserError, match="decode"):
        describe_layers(adapter, example)


def test_a_hook_that_is_not_a_function_is_refused_when_the_file_loads(tmp_path):
    source = model_file(tmp_path, "preprocess = 'imagenet'\n")
    with pytest.raises(UserError, match="preprocess in .*hooked.py is a str, not a function"):
        build_python(f"python:{source}", CPU, input_size=None)
