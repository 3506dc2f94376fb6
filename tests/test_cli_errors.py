"""Every user mistake ends as one `error:` line and exit status 2, with no traceback."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.err


def assert_user_error(status, err, *phrases):
    assert status == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    for phrase in phrases:
        assert phrase in error_lines[0], error_lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def precompute(data_dir, *args):
    return ["precompute", "--data-dir", str(data_dir), *args]


def test_unknown_dataset(data_dir, capsys):
    status, err = run_cli(precompute(data_dir, "--dataset", "nope", "--model", "smallcnn"), capsys)
    assert_user_error(status, err, "nope", "digits")


def test_unknown_model(data_dir, capsys):
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", "alexnetz"), capsys
    )
    assert_user_error(status, err, "unknown model", "smallcnn")


def test_missing_folder(data_dir, tmp_path, capsys):
    status, err = run_cli(
        precompute(data_dir, "--dataset", f"folder:{tmp_path}/absent", "--model", "resnet18"),
        capsys,
    )
    assert_user_error(status, err, "absent")


def test_folder_without_images(data_dir, tmp_path, capsys):
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    write(tmp_path / "imgs" / "cats" / "notes.txt", "no images here")
    status, err = run_cli(
        precompute(data_dir, "--dataset", f"folder:{tmp_path}/imgs", "--model", "resnet18"), capsys
    )
    assert_user_error(status, err)


def test_samples_zero(data_dir, capsys):
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", "smallcnn", "--samples", "0"), capsys
    )
    assert_user_error(status, err, "--samples")


def test_perplexity_too_large_for_the_data(data_dir, capsys):
    args = precompute(
        data_dir,
        "--dataset",
        "digits",
        "--model",
        "smallcnn",
        "--samples",
        "90",
        "--perplexities",
        "30",
    )
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, "erplexity")


def test_missing_model_file(data_dir, tmp_path, capsys):
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"torchscript:{tmp_path}/m.pt"),
        capsys,
    )
    assert_user_error(status, err, "does not exist")


def test_torchscript_file_that_is_not_a_model(data_dir, tmp_path, capsys):
    bogus = write(tmp_path / "model.pt", "this is not a model")
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"torchscript:{bogus}"), capsys
    )
    assert_user_error(status, err, "not a TorchScript model")


def test_weights_file_that_is_not_a_state_dict(data_dir, tmp_path, capsys):
    bogus = write(tmp_path / "w.pt", "garbage")
    args = precompute(
        data_dir, "--dataset", "digits", "--model", "resnet18", "--weights", str(bogus)
    )
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, "not a PyTorch state dict")


def test_python_model_that_raises_when_built(data_dir, tmp_path, capsys):
    source = write(tmp_path / "broken.py", "def get_model():\n    raise ValueError('bad config')\n")
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"python:{source}"), capsys
    )
    assert_user_error(status, err, "get_model()", "bad config")


def test_python_file_without_get_model(data_dir, tmp_path, capsys):
    source = write(tmp_path / "empty.py", "x = 1\n")
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"python:{source}"), capsys
    )
    assert_user_error(status, err, "no get_model()")


def test_model_whose_input_does_not_fit_the_data(data_dir, tmp_path, capsys):
    source = write(
        tmp_path / "mlp.py",
        "import torch.nn as nn\n"
        "input_size = 32\n"
        "def get_model():\n    return nn.Sequential(nn.Flatten(), nn.Linear(10, 10))\n",
    )
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"python:{source}"), capsys
    )
    assert_user_error(status, err, "failed on an input of shape", "--input-size")


def test_model_with_fewer_outputs_than_classes_and_no_names(data_dir, tmp_path, capsys):
    source = write(
        tmp_path / "two.py",
        "import torch.nn as nn\n"
        "input_size = 8\n"
        "def get_model():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))\n",
    )
    status, err = run_cli(
        precompute(data_dir, "--dataset", "digits", "--model", f"python:{source}"), capsys
    )
    assert_user_error(status, err, "2 outputs", "10 classes")


def test_bad_arguments_are_user_errors_too(capsys):
    status, err = run_cli(["precompute", "--dataset", "digits"], capsys)
    assert_user_error(status, err, "--model")


def test_real_process_exit_status_and_single_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "precompute",
            "--dataset",
            "nope",
            "--model",
            "smallcnn",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]


def test_usage_hint_names_the_program_once(capsys):
    status, err = run_cli(["frobnicate"], capsys)
    assert_user_error(status, err, "see `python main.py --help`")
    assert "main.py main.py" not in err
    status, err = run_cli(["precompute", "--dataset", "digits", "--nope"], capsys)
    assert_user_error(status, err, "see `python main.py precompute --help`")


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("--seed", "-1", "--seed -1"),
        ("--seed", str(2**32), "--seed"),
        ("--input-size", "0", "--input-size 0"),
        ("--input-size", "-5", "--input-size -5"),
    ],
)
def test_nonsensical_numbers_are_user_errors(data_dir, capsys, option, value, phrase):
    args = precompute(data_dir, "--dataset", "digits", "--model", "smallcnn", option, value)
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, phrase)
    assert not (data_dir / "runs").exists()  # refused before any run folder is made


@pytest.mark.parametrize("command", ["precompute", "runs", "serve"])
def test_a_data_dir_that_is_a_file(tmp_path, capsys, command):
    afile = write(tmp_path / "notes.txt", "not a folder")
    args = [command, "--data-dir", str(afile)]
    if command == "precompute":
        args += ["--dataset", "digits", "--model", "smallcnn"]
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, "notes.txt is a file")


def test_serve_port_out_of_range(tmp_path, capsys):
    status, err = run_cli(["serve", "--data-dir", str(tmp_path), "--port", "70000"], capsys)
    assert_user_error(status, err, "--port")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--workers", "0"),
        ("--workers", "two"),
        ("--workers", "٢"),
        ("--threads", "-1"),
        ("--cache-mb", "8"),
        ("--cache-mb", "1e3"),
    ],
)
def test_serve_workers_and_threads_are_whole_numbers(tmp_path, capsys, option, value):
    status, err = run_cli(["serve", "--data-dir", str(tmp_path), option, value], capsys)
    assert_user_error(status, err, option)


def test_serve_on_a_port_in_use_names_the_fix(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, err = run_cli(["serve", "--data-dir", str(tmp_path), "--port", str(port)], capsys)
    assert_user_error(status, err, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_default_perplexities_adapt_to_small_data_with_a_warning():
    from pipelines.stages.index import resolve_perplexities

    chosen, warning = resolve_perplexities(None, [100, 200])
    assert chosen == {100: [10.0, 30.0], 200: [10.0, 30.0]}
    assert "90" in warning and "--perplexities" in warning
    chosen, warning = resolve_perplexities(None, [20])  # not even 10 fits: the largest that does
    assert chosen == {20: [6.0]} and "10, 30, 90" in warning
    assert resolve_perplexities(None, [1797]) == ({1797: [10.0, 30.0, 90.0]}, None)


def test_explicit_perplexities_the_data_cannot_support_name_the_flag(data_dir, capsys):
    args = precompute(
        data_dir, "--dataset", "digits", "--model", "smallcnn", "--samples", "200",
        "--perplexities", "10,90",
    )  # fmt: skip
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, "--perplexities 90", "200 samples")


def test_a_failed_precompute_shows_as_failed(data_dir, tmp_path, capsys):
    from dashboard.data import RunCatalog

    source = write(tmp_path / "broken.py", "def get_model():\n    raise ValueError('bad config')\n")
    args = precompute(data_dir, "--dataset", "digits", "--model", f"python:{source}")
    assert run_cli(args, capsys)[0] == 2
    status, out = main(["runs", "--data-dir", str(data_dir)]), capsys.readouterr().out
    assert status == 0 and "FAILED" in out and "bad config" in out
    (summary,) = RunCatalog(data_dir).summaries()
    assert "FAILED" in summary.label and "bad config" in summary.label
    note = RunCatalog(data_dir).open(summary.run_id).not_ready_note()
    assert note is not None and "failed" in note and "bad config" in note


def test_weights_with_a_model_file_is_refused(data_dir, tmp_path, capsys):
    source = write(
        tmp_path / "net.py", "import torch.nn as nn\ndef get_model():\n    return nn.Identity()\n"
    )
    args = precompute(
        data_dir, "--dataset", "digits", "--model", f"python:{source}", "--weights", "w.pt"
    )
    status, err = run_cli(args, capsys)
    assert_user_error(status, err, "--weights")
    assert not (data_dir / "runs").exists()
