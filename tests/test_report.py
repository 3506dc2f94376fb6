"""The one warning channel (pipelines.report): one `warning: …` line on stderr per warning, clear
of progress bars, never twice, from the library, from Python's warnings and from the CLI."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from tqdm import tqdm

from pipelines import report

ROOT = Path(__file__).resolve().parent.parent


def unique(text: str) -> str:
    # ``once`` remembers messages for the whole test process: each test says something new.
    return f"{text} {uuid.uuid4().hex[:8]}"


def segments(err: str) -> list[str]:
    """What a terminal shows line by line: tqdm redraws its bar after a carriage return."""
    return [part for part in re.split(r"[\r\n]", err) if part.strip()]


def test_a_warning_is_one_prefixed_stderr_line(capsys):
    message = unique("the sky is falling")
    report.warn(message)
    assert capsys.readouterr() == ("", f"warning: {message}\n")


def test_a_note_is_one_prefixed_stderr_line(capsys):
    message = unique("forward pass in bfloat16")
    report.note(message)
    assert capsys.readouterr().err == f"note: {message}\n"


def test_once_says_a_repeated_message_once(capsys):
    message, other = unique("no ReLU"), unique("no ReLU")
    for _ in range(3):
        report.warn(message, once=True)
    report.warn(other, once=True)
    report.warn(message)  # without ``once``: every time
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {message}",
        f"warning: {other}",
        f"warning: {message}",
    ]


def test_not_duplicated_by_a_root_handler_or_a_second_install(capsys):
    """A host that configures root logging (Celery, gunicorn, basicConfig) and a second install
    (CLI then dashboard in one process) still print each warning once."""
    root_handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_handler)
    try:
        with warnings.catch_warnings():  # restores showwarning afterwards
            report.install()
            report.install()
            message = unique("disk cache write failed")
            report.warn(message)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert capsys.readouterr().err.splitlines() == [f"warning: {message}"]


def test_python_warnings_go_through_the_same_channel_once(capsys):
    message = unique("a library is unhappy")
    with warnings.catch_warnings():
        report.install()
        warnings.simplefilter("default")  # the interpreter's default: once per code location
        for _ in range(3):
            warnings.warn(message, UserWarning, stacklevel=1)
    # Only the message: no file name, line number or source line of the library's code.
    assert capsys.readouterr().err.splitlines() == [f"warning: {message}"]


def test_a_warning_lifts_an_active_progress_bar_off_its_line(capsys):
    message = unique("half-way problem")
    with tqdm(total=4, desc="forward", file=sys.stderr, ascii=True) as bar:
        bar.update(2)
        report.warn(message)
        bar.update(2)
    shown = segments(capsys.readouterr().err)
    assert [part for part in shown if message in part] == [f"warning: {message}"]
    # The bar was drawn both before and after the warning, on lines of its own.
    position = shown.index(f"warning: {message}")
    assert any(part.startswith("forward:") for part in shown[:position])
    assert any(part.startswith("forward: 100%") for part in shown[position + 1 :])


NO_RELU_MODEL = """\
import torch.nn as nn

input_size = 8


def get_model():
    # Tanh, not ReLU: guided backprop warns on every batch of the forward stage.
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
"""


@pytest.mark.slow
def test_precompute_prints_each_warning_once_clear_of_the_progress_bars(tmp_path):
    model = tmp_path / "tanh.py"
    model.write_text(NO_RELU_MODEL)
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "precompute",
            "--dataset",
            "digits",
            "--model",
            f"python:{model}",
            # 40 samples: too few for the default perplexities 30 and 90; batches of 8: the
            # forward stage's bar is on screen while guided backprop warns, five times.
            "--samples",
            "40",
            "--batch-size",
            "8",
            "--data-dir",
            str(tmp_path / "data"),
            "--run-id",
            "warns",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shown = segments(result.stderr)
    assert any(part.startswith("forward + explanations:") for part in shown)  # the bar was drawn
    for text in ("too few for the default perplexities", "the model has no nn.ReLU modules"):
        lines = [part for part in shown if text in part]
        assert len(lines) == 1, (text, result.stderr[-3000:])
        assert lines[0].startswith("warning: "), lines  # not glued to a bar
    said = [part for part in shown if part.startswith("warning: ")]
    assert len(said) == len(set(said)), said  # no warning twice
    assert not [part for part in shown if "warning" in part and not part.startswith("warning: ")]
