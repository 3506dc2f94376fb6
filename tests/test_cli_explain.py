"""`python main.py explain` on the session's digits run, and `precompute --explain`: the happy
path's PNGs and top-10, slow methods' progress and extras, each user mistake as one `error:`
line with exit status 2, Ctrl-C, and which explanations a precompute stores."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from cli import main
from components.images import explanation_png
from pipelines.explain import STORED_METHODS, Display
from pipelines.records import RunSettings
from pipelines.run_config import stored_methods
from pipelines.store import RunStore, runs_dir
from tests.test_cli_errors import assert_user_error

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"
PNG_SIDE = 224  # smallcnn's 32 px input, drawn at the CLI's minimum side

pytestmark = pytest.mark.usefixtures("restore_explainers")

# A stand-in for occlusion (the real one may not be registered in this checkout): slow, reports
# progress between its "passes", and returns the class probability intact and with patches
# hidden as extras.
SLOW_PLUGIN = textwrap.dedent(
    """
    import os
    import time

    import numpy as np
    from pipelines.explain import Display, Explainer, MethodResult, register


    @register
    class FakeOcclusion(Explainer):
        name = "fake_occlusion"
        title = "Fake occlusion"
        display = Display.SIGNED
        needs = frozenset()
        slow = True

        def explain(self, passes, out_size):
            marker = os.environ.get("LAYERSCOPE_TEST_MARKER")
            for done in range(1, 4):
                if marker:  # the Ctrl-C test: say we started, then take our time
                    open(marker, "w").close()
                    time.sleep(60)
                passes.report(done, 3)
            probability = passes.decode(passes.logits).gather(1, passes.classes[:, None])[:, 0]
            maps = np.zeros((len(passes.images), out_size, out_size), np.float16)
            maps[:, : out_size // 2] = 0.5
            maps[:, out_size // 2 :] = -0.5
            intact = probability.cpu().numpy()
            return MethodResult(
                maps, {"probability": intact, "probability_without_top_patches": intact / 4}
            )
    """
)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Image files: a digit (8x8 grayscale, as in the dataset), one in another folder with the
    same name, and files that are not images."""
    folder = tmp_path_factory.mktemp("images")
    digits = load_digits()
    (folder / "other").mkdir()
    paths = {"three": folder / "three.png", "twin": folder / "other" / "three.png"}
    for key, index in (("three", 3), ("twin", 13)):
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).save(paths[key])
    data = paths["three"].read_bytes()
    paths["truncated"] = folder / "truncated.png"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["text"] = folder / "notes.png"
    paths["text"].write_text("not an image")
    return paths


@pytest.fixture
def slow_plugin(tmp_path) -> Path:
    folder = tmp_path / "slow-plugins"
    folder.mkdir()
    (folder / "fake_occlusion.py").write_text(SLOW_PLUGIN)
    return folder


def explain_args(small_run, *args: str) -> list[str]:
    data_dir, run_id = small_run
    return ["explain", "--data-dir", str(data_dir), "--run", run_id, *args]


def top_k_lines(out: str) -> list[tuple[int, float, str]]:
    rows = re.findall(r"^\s+(\d+)\.\s+([\d.]+)%\s+(\S.*)$", out, flags=re.MULTILINE)
    return [(int(rank), float(prob) / 100, name) for rank, prob, name in rows]


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())))


# ---- the happy path -------------------------------------------------------------------------


def test_every_registered_method_writes_a_png_and_the_top_10_prints(
    small_run, images, tmp_path, capsys, restore_explainers
):
    out = tmp_path / "out"
    status = main(explain_args(small_run, "--image", str(images["three"]), "--out", str(out)))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = top_k_lines(captured.out)
    assert [rank for rank, _, _ in rows] == list(range(1, 11))
    assert rows[0][2] == "3" and rows[0][1] > 0.5  # smallcnn reads the digit
    assert sorted(name for _, _, name in rows) == [str(d) for d in range(10)]
    probabilities = [prob for _, prob, _ in rows]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001
    assert "explaining '3' (class 3)" in captured.out
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(f"three_{name}.png" for name in restore_explainers)
    for name, method in restore_explainers.items():
        pixels = decoded(out / f"three_{name}.png")
        assert pixels.shape == (PNG_SIDE, PNG_SIDE, 3) and pixels.dtype == np.uint8, name
        assert f"{method.title}: {out / f'three_{name}.png'}" in captured.out


def test_class_method_and_layer_choices(small_run, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = explain_args(
        small_run,
        "--image", str(images["three"]), str(images["twin"]),
        "--class", "8",
        "--method", "gradcam,guided_backprop", "--method", "gradcam",
        "--layer", "features.4",
        "--out", str(out),
    )  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert stdout.count("explaining '8' (class 8)") == 2
    # two files called three.png: the second one's PNGs get their own names
    assert sorted(path.name for path in out.iterdir()) == [
        "three-2_gradcam.png",
        "three-2_guided_backprop.png",
        "three_gradcam.png",
        "three_guided_backprop.png",
    ]


def test_another_layer_gives_another_grad_cam(small_run, images, tmp_path, capsys):
    pictures = []
    for layer in ("features.7", "features.4"):
        out = tmp_path / layer
        args = explain_args(
            small_run, "--image", str(images["three"]), "--method", "gradcam", "--layer", layer,
            "--out", str(out),
        )  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        pictures.append(decoded(out / "three_gradcam.png"))
    assert not np.array_equal(*pictures)


def test_the_example_plugin_through_the_cli_draws_its_signed_map(
    small_run, images, tmp_path, capsys
):
    from pipelines.explain import explain
    from pipelines.models import open_run_model, square_view, to_mode

    out = tmp_path / "out"
    args = explain_args(
        small_run, "--image", str(images["three"]), "--method", "input_x_gradient",
        "--plugins", str(EXAMPLES), "--out", str(out),
    )  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "Input × gradient:" in capsys.readouterr().out
    # the same map through the engine, drawn as a signed map over the grey image
    model = open_run_model(RunStore(runs_dir(small_run[0]) / small_run[1]), small_run[0], "cpu")
    image = Image.open(images["three"])
    inputs = model.adapter.preprocess([image])
    values = explain(model.adapter.module, None, inputs, None, ["input_x_gradient"], PNG_SIDE)
    signed = values.maps["input_x_gradient"][0]
    assert signed.min() < 0 < signed.max()
    base = np.asarray(square_view(to_mode(image, 3), PNG_SIDE))
    expected = decoded_bytes(explanation_png(Display.SIGNED.value, signed, base))
    np.testing.assert_array_equal(decoded(out / "three_input_x_gradient.png"), expected)


def decoded_bytes(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_a_slow_method_shows_progress_and_prints_its_extras(
    small_run, images, slow_plugin, tmp_path, capsys
):
    out = tmp_path / "out"
    args = explain_args(
        small_run, "--image", str(images["three"]), "--plugins", str(slow_plugin),
        "--method", "fake_occlusion", "gradcam", "--out", str(out),
    )  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "three: Fake occlusion" in captured.err  # the tqdm bar
    assert "3/3" in captured.err
    intact = re.search(r"Fake occlusion probability: ([\d.]+)", captured.out)
    hidden = re.search(r"Fake occlusion probability without top patches: ([\d.]+)", captured.out)
    assert intact and hidden, captured.out
    top1 = top_k_lines(captured.out)[0][1]
    assert float(intact.group(1)) == pytest.approx(top1, abs=1e-3)
    assert float(hidden.group(1)) == pytest.approx(top1 / 4, abs=1e-3)
    assert sorted(path.name for path in out.iterdir()) == [
        "three_fake_occlusion.png",
        "three_gradcam.png",
    ]
    # signed: red over the top half (+0.5), blue over the bottom (-0.5)
    pixels = decoded(out / "three_fake_occlusion.png").astype(int)
    assert pixels[10, 112, 0] > pixels[10, 112, 2] and pixels[200, 112, 2] > pixels[200, 112, 0]


def test_occlusion_prints_the_probability_intact_and_with_the_top_patch_hidden(
    small_run, images, tmp_path, capsys, restore_explainers
):
    if "occlusion" not in restore_explainers:
        pytest.skip("occlusion is not registered in this checkout")
    out = tmp_path / "out"
    args = explain_args(
        small_run, "--image", str(images["three"]), "--method", "occlusion", "--out", str(out)
    )
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "three: Occlusion" in captured.err  # its progress bar
    top1 = top_k_lines(captured.out)[0][1]
    intact = re.search(r"Occlusion probability: ([\d.e-]+)", captured.out)
    hidden = re.search(
        r"Occlusion occluded probability: (\d+) values, lowest ([\d.e-]+) at \((\d+), (\d+)\)",
        captured.out,
    )
    assert intact and hidden, captured.out
    assert float(intact.group(1)) == pytest.approx(top1, abs=1e-3)
    assert int(hidden.group(1)) > 1 and float(hidden.group(2)) <= float(intact.group(1)) + 1e-6
    assert (out / "three_occlusion.png").is_file()


REFUSING_PLUGIN = textwrap.dedent(
    """
    from pipelines.errors import UserError
    from pipelines.explain import Display, Explainer, register


    @register
    class VggOnly(Explainer):
        name = "vgg_only"
        title = "VGG only"
        display = Display.HEAT
        needs = frozenset()

        def explain(self, passes, out_size):
            raise UserError("vgg_only has no rules for this model; use a VGG")
    """
)


def test_a_method_that_refuses_the_model_is_left_out_only_by_default(
    small_run, images, tmp_path, capsys, restore_explainers
):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "vgg_only.py").write_text(REFUSING_PLUGIN)
    out = tmp_path / "out"
    base = explain_args(small_run, "--image", str(images["three"]), "--plugins", str(plugins))
    assert main([*base, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: VGG only left out: vgg_only has no rules for this model" in err
    expected = sorted(f"three_{name}.png" for name in restore_explainers if name != "vgg_only")
    assert sorted(path.name for path in out.iterdir()) == expected
    status = main([*base, "--method", "vgg_only", "gradcam", "--out", str(tmp_path / "o")])
    assert_user_error(status, capsys.readouterr().err, "vgg_only has no rules")


def test_a_run_without_a_grad_cam_layer(small_run, images, tmp_path, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(runs_dir(small_run[0]) / small_run[1], runs_dir(data_dir) / "no-cam")
    store = RunStore(runs_dir(data_dir) / "no-cam")
    manifest = store.read_manifest()
    manifest["model"]["gradcam_layer"] = None  # as for a model without a spatial conv layer
    store.write_manifest(manifest)
    base = ["explain", "--data-dir", str(data_dir), "--run", "no-cam", "--image"]
    out = tmp_path / "out"
    assert main([*base, str(images["three"]), "--out", str(out)]) == 0
    assert "no default Grad-CAM layer" in capsys.readouterr().err
    written = {path.name for path in out.iterdir()}
    assert "three_guided_backprop.png" in written and "three_gradcam.png" not in written
    status = main([*base, str(images["three"]), "--method", "gradcam", "--out", str(out)])
    assert_user_error(status, capsys.readouterr().err, "no default Grad-CAM layer", "--layer")
    args = [*base, str(images["three"]), "--layer", "features.7", "--out", str(out)]
    assert main([*args, "--method", "gradcam"]) == 0
    assert (out / "three_gradcam.png").is_file()


# ---- user mistakes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        pytest.param(["--image", "{text}"], ["notes.png", "not an image"], id="not-an-image"),
        pytest.param(["--image", "{truncated}"], ["truncated.png", "damaged"], id="truncated"),
        pytest.param(["--image", "{missing}"], ["does not exist"], id="missing-image"),
        pytest.param(["--image", "{folder}"], ["is a folder"], id="folder-as-image"),
        pytest.param(["--run", "nope"], ["unknown run 'nope'", "python main.py runs"], id="run"),
        pytest.param(["--run", "../x"], ["unknown run '../x'"], id="run-outside-the-data-dir"),
        pytest.param(["--class", "eleven"], ["unknown class 'eleven'", "0, 1, 2"], id="class"),
        pytest.param(["--class", "10"], ["--class 10 is out of range", "0..9"], id="class-index"),
        pytest.param(
            ["--method", "nope"], ["unknown explanation method 'nope'", "gradcam"], id="method"
        ),
        pytest.param(
            ["--layer", "featurs.7"],
            ["unknown layer", "features.7", "python main.py runs"],
            id="layer",
        ),
        pytest.param(
            ["--layer", "classifier.1"], ["no spatial maps", "features.7"], id="dense-layer"
        ),
        pytest.param(["--layer", "input"], ["not a module of its model"], id="input-layer"),
        pytest.param(["--out", "{afile}"], ["--out", "is a file"], id="out-is-a-file"),
        pytest.param(["--out", "{afile}/sub"], ["cannot write to --out"], id="out-not-writable"),
        pytest.param(["--plugins", "{missing}"], ["plugin folder", "does not exist"], id="plugins"),
    ],
)
def test_each_mistake_is_one_error_line(small_run, images, tmp_path, capsys, args, phrases):
    afile = tmp_path / "afile"
    afile.write_text("x")
    values = {
        "text": images["text"],
        "truncated": images["truncated"],
        "missing": tmp_path / "missing.png",
        "folder": tmp_path,
        "afile": afile,
    }
    given = dict(zip(args[::2], (value.format(**values) for value in args[1::2]), strict=True))
    defaults = {
        "--run": small_run[1],
        "--image": str(images["three"]),
        "--out": str(tmp_path / "o"),
    }
    options = [item for key, value in {**defaults, **given}.items() for item in (key, value)]
    status = main(["explain", "--data-dir", str(small_run[0]), *options])
    assert_user_error(status, capsys.readouterr().err, *phrases)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_unique_start_of_a_class_name_and_an_ambiguous_one():
    from cli_explain import resolve_class

    names = ["tench", "goldfish", "great white shark", "crane", "crane", "golden retriever"]
    assert resolve_class("GOLDF", names) == 1 and resolve_class("Tench", names) == 0
    assert resolve_class("4", names) == 4
    with pytest.raises(Exception, match="starts 2 class names"):
        resolve_class("gol", names)
    with pytest.raises(Exception, match="names classes 3, 4"):
        resolve_class("crane", names)
    many = [f"class name {i}" for i in range(100)] + ["goldfinch"]
    with pytest.raises(Exception, match="close names: goldfinch.*0..100"):
        resolve_class("goldfnch", many)


def test_the_real_process_exits_2_with_one_line(small_run, images, tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", *explain_args(small_run, "--image", str(images["text"]))]
        + ["--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "notes.png" in lines[0]


def test_ctrl_c_exits_130_and_leaves_only_whole_pngs(small_run, images, slow_plugin, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "slow-method-started"
    process = subprocess.Popen(
        [sys.executable, "main.py"]
        + explain_args(
            small_run,
            "--image",
            str(images["three"]),
            "--plugins",
            str(slow_plugin),
            "--method",
            "gradcam",
            "fake_occlusion",
            "--out",
            str(out),
        ),  # fmt: skip
        cwd=ROOT,
        env={**os.environ, "LAYERSCOPE_TEST_MARKER": str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), process.communicate(timeout=30)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert [path.name for path in out.iterdir()] == ["three_gradcam.png"]  # no temp files
    assert decoded(out / "three_gradcam.png").shape == (PNG_SIDE, PNG_SIDE, 3)


# ---- precompute --explain -------------------------------------------------------------------


def precompute_args(data_dir: Path, run_id: str, *extra: str) -> list[str]:
    return [
        "precompute", "--dataset", "digits", "--model", "smallcnn", "--samples", "40",
        "--subsets", "all", "--perplexities", "5", "--data-dir", str(data_dir),
        "--run-id", run_id, *extra,
    ]  # fmt: skip


def test_a_slow_method_is_not_precomputed(tmp_path, slow_plugin, capsys):
    args = precompute_args(
        tmp_path, "r", "--plugins", str(slow_plugin), "--explain", "fake_occlusion"
    )
    status = main(args)
    assert_user_error(
        status,
        capsys.readouterr().err,
        "fake_occlusion is slow",
        "on demand in the page",
        "gradcam",
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("value", "phrase"), [("nope", "unknown explanation method 'nope'"), (",", "at least one")]
)
def test_explain_names_must_be_registered_methods(tmp_path, capsys, value, phrase):
    status = main(precompute_args(tmp_path, "r", "--explain", value))
    assert_user_error(status, capsys.readouterr().err, phrase, "guided_backprop")


def test_explain_gradcam_stores_only_grad_cam_and_the_run_keeps_its_list(
    small_run, tmp_path, capsys
):
    data_dir = tmp_path / "data"
    shutil.copytree(small_run[0] / "models", data_dir / "models")  # no training
    assert main(precompute_args(data_dir, "cams", "--explain", "gradcam")) == 0
    capsys.readouterr()
    store = RunStore(runs_dir(data_dir) / "cams")
    assert store.has("explanation", method="gradcam")
    assert not any(
        store.has("explanation", method=m) for m in ("guided_backprop", "guided_gradcam")
    )
    assert store.load_array("explanation", method="gradcam").shape[0] == 40
    assert store.read_manifest()["config"]["explain"] == ["gradcam"]
    assert store.read_record().require_config().explain == ("gradcam",)

    # Another list on the same run is refused, naming both ways out.
    status = main(precompute_args(data_dir, "cams", "--explain", "gradcam,guided_backprop"))
    assert_user_error(
        status, capsys.readouterr().err, "stores the explanations gradcam", "--run-id"
    )
    # Without --explain (or with the same list) the run is the run.
    for extra in ([], ["--explain", "gradcam"]):
        assert main(precompute_args(data_dir, "cams", *extra)) == 0
        assert "already complete" in capsys.readouterr().err

    assert main(["runs", "--data-dir", str(data_dir)]) == 0
    assert "explanations stored: gradcam\n" in capsys.readouterr().out


def test_a_run_without_explain_stores_the_default_three(small_run):
    store = RunStore(runs_dir(small_run[0]) / small_run[1])
    assert store.read_manifest()["config"]["explain"] == list(STORED_METHODS)
    for method in STORED_METHODS:
        assert store.has("explanation", method=method)


def test_runs_made_before_the_list_was_recorded_store_the_default_three():
    old = RunSettings.from_json({"dataset": "digits", "model": "smallcnn", "identity": {}})
    assert old.explain is None and stored_methods(old) == STORED_METHODS
    assert "explain" not in old.to_json()
    new = RunSettings.from_json({"dataset": "digits", "model": "smallcnn", "explain": ["gradcam"]})
    assert stored_methods(new) == ("gradcam",) and new.to_json()["explain"] == ["gradcam"]
