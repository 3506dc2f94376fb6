"""Explanation-method plugins: loading a folder of user files, every way a file can be wrong,
the example plugin's values against a hand computation, and --plugins on every command."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cli import main
from pipelines.errors import UserError
from pipelines.explain import Display, explain
from pipelines.explain.plugins import load_plugins
from pipelines.store import RunStore, runs_dir
from tests.test_cli_errors import assert_user_error

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"

pytestmark = pytest.mark.usefixtures("restore_explainers")


def plugin_source(
    name: str, *, title: str = "A plugin", slow: bool = False, extra: str = ""
) -> str:
    """A minimal valid plugin registering ``name`` (a flat HEAT map of 0.5)."""
    return textwrap.dedent(
        f"""
        import numpy as np
        from pipelines.explain import Display, Explainer, register

        {extra}

        @register
        class Plugin(Explainer):
            name = {name!r}
            title = {title!r}
            display = Display.HEAT
            needs = frozenset()
            slow = {slow!r}

            def explain(self, passes, out_size):
                return np.full((len(passes.images), out_size, out_size), 0.5, np.float16)
        """
    )


def folder_with(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    for stem, source in files.items():
        (folder / f"{stem}.py").write_text(source)
    return folder


# ---- the example plugin ---------------------------------------------------------------------


def test_the_example_plugin_registers_gradient_x_input(restore_explainers):
    assert load_plugins(EXAMPLES) == ["input_x_gradient"]
    method = restore_explainers["input_x_gradient"]
    assert method.display is Display.SIGNED and not method.slow
    assert not method.uses_target_layer


def test_input_x_gradient_matches_a_hand_computation():
    load_plugins(EXAMPLES)
    # A linear model: d logit_c / d x = W[c], so the map is sum over channels of x * W[c],
    # divided by its largest magnitude.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    no_weight = [0.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        model[1].weight.copy_(
            torch.tensor(
                [
                    [1.0, -1.0, 0.5, 2.0, *no_weight, *no_weight],  # class 0: channel 0 only
                    [1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, *no_weight],  # class 1: 0 and 1
                ]
            )
        )
        model[1].bias.fill_(3.0)  # no effect on the gradient
    image = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]], [[7.0, 7.0], [7.0, 7.0]]]
    )  # (C=3, 2, 2); channel 2 has zero weight for both classes
    images = torch.stack([image, image])
    maps = explain(model, None, images, torch.tensor([0, 1]), ["input_x_gradient"], 2).maps
    values = maps["input_x_gradient"]
    assert values.shape == (2, 2, 2) and values.dtype == np.float16
    # class 0: x * w = [1, -2, 1.5, 8] over channel 0, max |.| = 8
    np.testing.assert_allclose(values[0], [[0.125, -0.25], [0.1875, 1.0]], atol=1e-3)
    # class 1: channel 0 gives [1, 2, 3, 4], channel 1 [-2, 2, -2, 2]: sum [-1, 4, 1, 6] / 6
    np.testing.assert_allclose(values[1], np.array([[-1, 4], [1, 6]]) / 6, atol=1e-3)


def test_input_x_gradient_of_a_blank_image_is_zero_not_nan():
    load_plugins(EXAMPLES)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 1, 4, 4))  # materialise the lazy layer
    maps = explain(model, None, torch.zeros(2, 1, 4, 4), None, ["input_x_gradient"], 8).maps
    assert maps["input_x_gradient"].shape == (2, 8, 8)
    assert np.all(maps["input_x_gradient"] == 0)


# ---- loading a folder -----------------------------------------------------------------------


def test_files_load_in_name_order_under_unique_module_names(tmp_path, restore_explainers):
    folder = folder_with(tmp_path, b_second=plugin_source("second"), a_first=plugin_source("first"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "a_first.py").write_text(plugin_source("third"))  # same file name, other folder
    assert load_plugins(folder) == ["first", "second"]
    assert load_plugins(other) == ["third"]
    modules = {type(restore_explainers[name]).__module__ for name in ("first", "second", "third")}
    assert len(modules) == 3 and all(m.startswith("layerscope_plugin_") for m in modules)


def test_loading_a_folder_again_in_one_process_reuses_its_methods(tmp_path, restore_explainers):
    folder = folder_with(tmp_path, one=plugin_source("once"))
    assert load_plugins(folder) == ["once"]
    first = restore_explainers["once"]
    assert load_plugins(folder) == ["once"]
    assert restore_explainers["once"] is first


def test_a_folder_without_python_files_warns_and_adds_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a plugin")
    assert load_plugins(tmp_path) == []
    assert "no .py files" in capsys.readouterr().err


def test_a_file_that_registers_nothing_is_named_in_a_warning(tmp_path, capsys):
    folder = folder_with(tmp_path, helper="X = 1\n")
    assert load_plugins(folder) == []
    err = capsys.readouterr().err
    assert "helper.py registered no explanation method" in err and "@register" in err


@pytest.mark.parametrize(
    ("files", "phrases"),
    [
        pytest.param(
            {"broken": "def explain(:\n"}, ["broken.py", "syntax error on line 1"], id="syntax"
        ),
        pytest.param(
            {"raises": "raise RuntimeError('no GPU here')\n"},
            ["raises.py", "RuntimeError: no GPU here", "fix raises.py"],
            id="exception",
        ),
        pytest.param(
            {"exits": "import sys\nsys.exit(3)\n"}, ["exits.py", "SystemExit"], id="sys-exit"
        ),
        pytest.param(
            {"dup": plugin_source("gradcam")},
            ["dup.py", "'gradcam' is already registered", "pick another name"],
            id="duplicate-of-a-built-in",
        ),
        pytest.param(
            {"a": plugin_source("twin"), "b": plugin_source("twin")},
            ["b.py", "'twin' is already registered"],
            id="duplicate-across-files",
        ),
        pytest.param(
            {"notitle": plugin_source("t").replace("    title = 'A plugin'\n", "")},
            ["notitle.py", "title = '<display name>'"],
            id="no-title",
        ),
        pytest.param(
            {"noexplain": plugin_source("e").split("    def explain")[0]},
            ["noexplain.py", "abstract", "explain"],
            id="no-explain-method",
        ),
        pytest.param(
            {"spaces": plugin_source("my method")},
            ["spaces.py", "'my method'", "letters"],
            id="unusable-name",
        ),
        pytest.param(
            {"slowness": plugin_source("s").replace("slow = False", "slow = 'yes'")},
            ["slowness.py", "slow must be True or False"],
            id="slow-not-a-bool",
        ),
    ],
)
def test_a_broken_plugin_is_a_user_error_naming_the_file(
    tmp_path, restore_explainers, files, phrases
):
    before = list(restore_explainers)
    folder = folder_with(tmp_path, **files)
    with pytest.raises(UserError) as caught:
        load_plugins(folder)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert "\n" not in message
    registered = [name for name in restore_explainers if name not in before]
    # a file that failed leaves nothing behind (an earlier, good file's method may stay)
    assert registered in ([], ["twin"])


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_plugins_must_be_a_folder(tmp_path, kind):
    path = tmp_path / "plugins"
    if kind == "file":
        path.write_text("x")
    with pytest.raises(UserError, match="--plugins a folder of .py files"):
        load_plugins(path)


# ---- --plugins on every command -------------------------------------------------------------


@pytest.mark.parametrize("command", [["serve"], []], ids=["serve", "main.py"])
def test_serve_and_bare_main_load_plugins_before_the_app_is_built(
    small_run, monkeypatch, capsys, restore_explainers, command
):
    import dashboard.app

    seen: list[str] = []

    def fake_create_app(data_dir, **options):
        seen.extend(restore_explainers)
        raise UserError("stopped before serving")

    monkeypatch.setattr(dashboard.app, "create_app", fake_create_app)
    status = main([*command, "--data-dir", str(small_run[0]), "--plugins", str(EXAMPLES)])
    assert_user_error(status, capsys.readouterr().err, "stopped before serving")
    assert "input_x_gradient" in seen and "gradcam" in seen


@pytest.mark.parametrize("command", ["serve", "precompute", "explain"])
def test_a_missing_plugin_folder_is_one_error_line(tmp_path, capsys, command):
    args = {
        "serve": ["serve"],
        "precompute": ["precompute", "--dataset", "digits", "--model", "smallcnn"],
        "explain": ["explain", "--run", "r", "--image", "x.png", "--out", str(tmp_path)],
    }[command]
    status = main([*args, "--data-dir", str(tmp_path), "--plugins", str(tmp_path / "nope")])
    assert_user_error(status, capsys.readouterr().err, "plugin folder", "does not exist")


def test_precompute_accepts_and_stores_a_fast_plugin_method(small_run):
    from pipelines.models import open_run_model
    from pipelines.run_config import PrecomputeConfig
    from pipelines.stages import forward

    with pytest.raises(UserError, match="unknown explanation method 'input_x_gradient'"):
        PrecomputeConfig("digits", "smallcnn", explain=("input_x_gradient",)).check()
    load_plugins(EXAMPLES)
    PrecomputeConfig("digits", "smallcnn", explain=("gradcam", "input_x_gradient")).check()
    # The forward stage stores exactly the run's methods, a plugin's among them.
    store = RunStore(runs_dir(small_run[0]) / small_run[1])
    record = store.read_record()
    model = open_run_model(store, small_run[0], "cpu")
    inputs = torch.cat([model.input_for(row) for row in range(6)])
    layers = [layer.id for layer in record.layers if not layer.same_as]
    per_sample, _ = forward.forward_chunk(
        model.adapter, inputs, layers, "features.7", 16, 4, "float32",
        ["input_x_gradient", "gradcam"],
    )  # fmt: skip
    assert {"input_x_gradient", "gradcam"} <= set(per_sample)
    assert not {"guided_backprop", "guided_gradcam"} & set(per_sample)
    values = per_sample["input_x_gradient"]
    assert values.shape == (6, 16, 16) and values.dtype == np.float16
    assert values.min() >= -1 and values.max() <= 1
    np.testing.assert_allclose(np.abs(values).reshape(6, -1).max(axis=1), 1.0, atol=1e-3)
