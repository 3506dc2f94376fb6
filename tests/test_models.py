"""Model adapters: preprocessing geometry, TorchScript and Python model files, state dicts."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipelines.errors import UserError
from pipelines.features import capture_layers, discover_layers
from pipelines.models import (
    build_python,
    build_torchscript,
    load_state_dict,
    model_kind,
    square_view,
    to_mode,
)

CPU = torch.device("cpu")


def small_net(channels: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )


def test_square_view_crops_the_centre_of_the_shorter_side():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # a blue strip on the left is cropped away
    view = square_view(image, 16)
    assert view.size == (16, 16)
    assert np.asarray(view)[:, :, 2].max() < 40


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "L", "CMYK"])
def test_any_mode_becomes_the_models_mode(mode):
    image = Image.new("RGB", (10, 10), (10, 200, 30)).convert(mode)
    assert to_mode(image, 3).mode == "RGB"
    assert to_mode(image, 1).mode == "L"


def test_scripted_sequential_keeps_per_layer_views(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(small_net().eval()), str(path))
    adapter = build_torchscript(f"torchscript:{path}", CPU, input_size=16)
    layers = discover_layers(adapter.module, torch.randn(1, 3, 16, 16))
    assert [layer["type"] for layer in layers] == [
        "Input",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
    ]
    assert layers[1]["params"] == 4 * 3 * 9 + 4
    _, captured = capture_layers(adapter.module, torch.randn(2, 3, 16, 16), ["0.0", "2"])
    assert captured["0.0"].shape == (2, 4, 16, 16) and captured["2"].shape == (2, 3)


def test_python_model_file_with_metadata(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text(
        "import torch.nn as nn\n"
        "class_names = ['a', 'b', 'c']\ninput_size = 16\nin_channels = 1\n"
        "def get_model():\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))\n"
    )
    adapter = build_python(f"python:{source}", CPU, input_size=None)
    assert adapter.class_names == ["a", "b", "c"]
    assert adapter.input_size == 16 and adapter.in_channels == 1
    batch = adapter.preprocess([Image.new("RGB", (30, 20))])
    assert batch.shape == (1, 1, 16, 16)


def test_state_dicts_load_weights_only_and_reject_pickled_objects(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(small_net().state_dict(), good)
    assert "2.weight" in load_state_dict(good)
    evil = tmp_path / "evil.pt"
    torch.save({"model": small_net()}, evil)  # a whole pickled module is refused by weights_only
    with pytest.raises(UserError, match="not a PyTorch state dict"):
        load_state_dict(evil)


def test_model_kinds():
    assert model_kind("smallcnn") == "smallcnn"
    assert model_kind("vgg16") == "torchvision"
    assert model_kind("torchscript:/x.pt") == "torchscript"
    with pytest.raises(UserError, match="unknown model"):
        model_kind("vgg17")
