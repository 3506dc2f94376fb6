"""Model adapters: preprocessing geometry, TorchScript and Python model files, state dicts."""

import subprocess
import sys
from pathlib import Path

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
    build_torchvision,
    check_weights_option,
    load_state_dict,
    model_kind,
    square_view,
    to_mode,
)

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent


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
    assert [layer.type for layer in layers] == [
        "Input",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
    ]
    assert layers[1].params == 4 * 3 * 9 + 4
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


# ---- what a model file declares (issue 9, items 5 and 9) -------------------------------------

GRAY_NET = (
    "import torch.nn as nn\n"
    "def get_model():\n"
    "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 10))\n"
)


def python_model(tmp_path, declarations: str, body: str = GRAY_NET):
    source = tmp_path / "declared.py"
    source.write_text("import torch\n" + declarations + "\n" + body)
    return source


@pytest.mark.parametrize(
    "declared",
    ["16", "(16, 16)", "[16, 16]", "torch.Size([16, 16])", "torch.tensor(16)", "(16,)"],
)
def test_input_size_is_an_int_or_a_square_pair(tmp_path, declared):
    source = python_model(tmp_path, f"input_size = {declared}\nin_channels = 1")
    adapter = build_python(f"python:{source}", CPU, input_size=None)
    assert adapter.input_size == 16 and isinstance(adapter.input_size, int)
    assert adapter.preprocess([Image.new("RGB", (30, 20))]).shape == (1, 1, 16, 16)


@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        ("0", "not a positive size"),
        ("-8", "not a positive size"),
        ("(64, 48)", "not square"),
        ("(3, 224, 224)", "(H, W) pair"),
        ("16.5", "(H, W) pair"),
        ("'224'", "(H, W) pair"),
        ("True", "(H, W) pair"),
    ],
)
def test_nonsensical_input_size_is_a_user_error(tmp_path, declared, problem):
    source = python_model(tmp_path, f"input_size = {declared}")
    with pytest.raises(UserError, match=r"^input_size = ") as info:
        build_python(f"python:{source}", CPU, input_size=None)
    message = str(info.value)
    assert str(source) in message and problem in message and "--input-size" in message


def test_non_square_pair_suggests_a_side(tmp_path):
    source = python_model(tmp_path, "input_size = (64, 48)")
    with pytest.raises(UserError, match=r"use input_size = 48"):
        build_python(f"python:{source}", CPU, input_size=None)


def test_input_size_option_wins_over_the_files(tmp_path):
    source = python_model(tmp_path, "input_size = (64, 48)\nin_channels = 1")
    assert build_python(f"python:{source}", CPU, input_size=12).input_size == 12


@pytest.mark.parametrize("declared", ["2", "4", "0", "'3'", "3.0", "None.__class__"])
def test_in_channels_must_be_1_or_3(tmp_path, declared):
    source = python_model(tmp_path, f"in_channels = {declared}")
    with pytest.raises(UserError, match=r"^in_channels = .*1 \(grayscale\) or 3 \(RGB\)"):
        build_python(f"python:{source}", CPU, input_size=None)


def test_three_channel_mean_with_one_input_channel_names_the_mean(tmp_path):
    """Issue 9, item 9: this used to fail in the forward pass, blaming the channel count."""
    source = python_model(
        tmp_path,
        "in_channels = 1\ninput_size = 8\n"
        "mean = (0.485, 0.456, 0.406)\nstd = (0.229, 0.224, 0.225)",
    )
    with pytest.raises(UserError) as info:
        build_python(f"python:{source}", CPU, input_size=None)
    message = str(info.value)
    assert message.startswith("mean = (0.485, 0.456, 0.406) in ")
    assert str(source) in message and "has 3 values" in message and "in_channels = 1" in message
    assert "mean = (0.5,)" in message


@pytest.mark.parametrize(
    ("declarations", "match"),
    [
        ("mean = (0.5, 0.5)", r"^mean = .*has 2 values but the model takes 3 channels"),
        ("std = (0.2, 0.0, 0.2)", r"^std = .*<= 0"),
        ("std = -1", r"^std = .*<= 0"),
        ("mean = 'imagenet'", r"^mean = .*not a number"),
        ("mean = (0.5, None, 0.5)", r"^mean = .*not a number"),
        ("std = (0.2, float('nan'), 0.2)", r"^std = .*not a number"),
        ("mean = ()", r"^mean = .*not a number"),
        ("mean = (123.7, 116.3, 103.5)", r"^mean = .*outside 0..1.*divide .* by 255"),
    ],
)
def test_nonsensical_mean_or_std_is_a_user_error(tmp_path, declarations, match):
    body = GRAY_NET.replace("Conv2d(1,", "Conv2d(3,")
    source = python_model(tmp_path, declarations, body)
    with pytest.raises(UserError, match=match):
        build_python(f"python:{source}", CPU, input_size=None)


def test_mean_and_std_accept_one_number_tuples_lists_and_tensors(tmp_path):
    source = python_model(
        tmp_path,
        "in_channels = 3\nmean = 0.5\nstd = torch.tensor([0.25, 0.5, 1.0]).view(3, 1, 1)",
    )
    adapter = build_python(f"python:{source}", CPU, input_size=None)
    assert adapter.mean == (0.5, 0.5, 0.5) and adapter.std == (0.25, 0.5, 1.0)
    gray = python_model(tmp_path, "in_channels = 1\nmean = [0.1]")
    adapter = build_python(f"python:{gray}", CPU, input_size=None)
    assert adapter.mean == (0.1,) and adapter.std == (0.5,)


@pytest.mark.parametrize(
    ("declared", "problem"),
    [
        ("'cat dog'", "not a list of strings"),
        ("[0, 1, 2]", "not a list of strings"),
        ("{0: 'cat', 1: 'dog'}", "not a list of strings"),
        ("['cat', 'dog', 'cat']", "repeats 'cat'"),
    ],
)
def test_class_names_must_be_unique_strings(tmp_path, declared, problem):
    source = python_model(tmp_path, f"class_names = {declared}")
    with pytest.raises(UserError, match=r"^class_names = ") as info:
        build_python(f"python:{source}", CPU, input_size=None)
    assert problem in str(info.value) and str(source) in str(info.value)


def test_class_names_tuple_becomes_a_list(tmp_path):
    source = python_model(tmp_path, "class_names = ('a', 'b')")
    assert build_python(f"python:{source}", CPU, input_size=None).class_names == ["a", "b"]


class Declaring(nn.Module):
    """A scripted Sequential's shell that declares its preprocessing as TorchScript attributes."""

    def __init__(self, input_size, in_channels, mean):
        super().__init__()
        self.net = torch.jit.script(small_net(in_channels).eval())
        self.input_size = input_size
        self.in_channels = in_channels
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def save_scripted(tmp_path, input_size, in_channels, mean) -> str:
    path = tmp_path / "declaring.pt"
    torch.jit.save(torch.jit.script(Declaring(input_size, in_channels, mean).eval()), str(path))
    return f"torchscript:{path}"


def test_torchscript_attributes_accept_a_square_pair(tmp_path, capsys):
    spec = save_scripted(tmp_path, (16, 16), 1, [0.25])
    adapter = build_torchscript(spec, CPU, input_size=None)
    assert capsys.readouterr().err.splitlines() == [
        "warning: declaring.pt is not a scripted nn.Sequential, so only its input and output can "
        "be shown; use python:FILE.py for per-layer views"
    ]
    assert (adapter.input_size, adapter.in_channels, adapter.mean) == (16, 1, (0.25,))


def test_torchscript_attributes_are_checked_like_a_python_files(tmp_path, capsys):
    spec = save_scripted(tmp_path, 16, 1, [0.485, 0.456, 0.406])
    with pytest.raises(UserError) as info:
        build_torchscript(spec, CPU, input_size=None)
    assert "only its input and output" in capsys.readouterr().err
    message = str(info.value)
    assert message.startswith("mean = [0.485, 0.456, 0.406] in the TorchScript file ")
    assert "has 3 values" in message and "before torch.jit.save" in message


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("import sys\nsys.exit()\n", r"called sys\.exit\(None\) while being imported"),
        ("import sys\nsys.exit(3)\n", r"called sys\.exit\(3\) while being imported"),
        (
            "import sys\ndef get_model():\n    sys.exit('no GPU')\n",
            r"get_model\(\) in .* called sys\.exit\('no GPU'\)",
        ),
    ],
)
def test_sys_exit_in_a_model_file_is_a_user_error(tmp_path, code, match):
    source = tmp_path / "exits.py"
    source.write_text(code)
    with pytest.raises(UserError, match=match):
        build_python(f"python:{source}", CPU, input_size=None)


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.mark.slow
def test_cli_model_file_that_exits_and_one_with_mismatched_mean(tmp_path):
    """A real process: sys.exit() in the file used to end the precompute silently with status 0,
    a 3-value mean on a grayscale model with an error that blamed the channel count."""
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit()\n")
    data = str(tmp_path / "data")
    result = run_main(
        "precompute", "--dataset", "digits", "--model", f"python:{exits}", "--data-dir", data
    )
    assert_one_error_line(result, "sys.exit", str(exits))
    gray = python_model(tmp_path, "in_channels = 1\ninput_size = 8\nmean = (0.485, 0.456, 0.406)")
    result = run_main(
        "precompute", "--dataset", "digits", "--model", f"python:{gray}", "--data-dir", data
    )
    assert_one_error_line(result, "mean = (0.485, 0.456, 0.406)", "in_channels = 1")


# ---- checkpoints as people save them (issue 9, item 8) ---------------------------------------


def resnet18_state(num_classes: int = 10) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=num_classes).state_dict()


def assert_loaded(adapter, state) -> None:
    loaded = adapter.module.state_dict()
    assert len(adapter.class_names) == 10
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "fc.weight"):
        assert torch.equal(loaded[key], state[key])


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="bare"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="DataParallel"),
        pytest.param(lambda s: {"epoch": 7, "state_dict": s, "optimizer": {}}, id="state_dict"),
        pytest.param(lambda s: {"model": s, "best_acc": 0.9}, id="model"),
        pytest.param(lambda s: {"model_state_dict": s}, id="model_state_dict"),
        pytest.param(
            lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
            id="DataParallel-in-checkpoint",
        ),
        pytest.param(
            lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 2},
            id="lightning",
        ),
    ],
)
def test_checkpoints_as_people_save_them_load(tmp_path, wrap):
    state = resnet18_state()
    path = tmp_path / "w.pt"
    torch.save(wrap(state), path)
    assert_loaded(build_torchvision("resnet18", str(path), CPU, progress=False), state)


def test_real_dataparallel_state_dict_loads(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(model).state_dict(), path)
    assert next(iter(torch.load(path, weights_only=True))).startswith("module.")
    assert_loaded(build_torchvision("resnet18", str(path), CPU, progress=False), model.state_dict())


def test_state_dict_of_another_architecture_names_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(small_net().state_dict(), path)
    with pytest.raises(UserError) as info:
        build_torchvision("resnet18", str(path), CPU, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit resnet18: ")
    assert "102 missing keys (conv1.weight, bn1.weight, bn1.bias, …)" in message
    assert "4 unexpected keys (0.0.weight, 0.0.bias, 2.weight, …)" in message
    assert "--model they were trained with" in message


def test_state_dict_with_a_layer_of_another_shape_names_it(tmp_path):
    state = resnet18_state()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grayscale stem
    del state["layer1.0.bn1.bias"]
    path = tmp_path / "gray.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as info:
        build_torchvision("resnet18", str(path), CPU, progress=False)
    message = str(info.value)
    assert "1 misshapen key (conv1.weight (64, 1, 7, 7) in the file, (64, 3, 7, 7) in" in message
    assert "1 missing key (layer1.0.bn1.bias)" in message and "unexpected" not in message


def test_old_batchnorm_checkpoint_without_num_batches_tracked_loads(tmp_path):
    state = resnet18_state()
    old = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    assert_loaded(build_torchvision("resnet18", str(path), CPU, progress=False), state)


def test_checkpoint_dict_without_a_state_dict_lists_its_keys(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "weights": [1.0, 2.0]}, path)
    with pytest.raises(UserError, match=r"dict with keys epoch, weights but no state dict"):
        load_state_dict(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match=r"holds a Tensor, not a state dict"):
        load_state_dict(path)


def test_weights_option_only_fits_torchvision_models(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(small_net().state_dict(), weights)
    for model in ("python:/x/net.py", "torchscript:/x/net.pt", "smallcnn"):
        with pytest.raises(
            UserError, match=r"^--weights only applies to torchvision models.*drop --weights"
        ):
            check_weights_option(model, str(weights))
        check_weights_option(model, None)
    for weights_value in (None, "imagenet", "none", str(weights)):
        check_weights_option("resnet18", weights_value)
    with pytest.raises(UserError, match=r"weights file .*absent\.pt' does not exist"):
        check_weights_option("resnet18", str(tmp_path / "absent.pt"))
