"""Shared fixtures: one real, small precompute run reused by every dashboard test."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL_RUN_ID = "digits-small"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C handled as in a terminal, also when the suite was started in the background
    (`cmd &` in a script ignores SIGINT for it): the Ctrl-C tests send SIGINT to this process
    and to children that inherit its handling."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def ctrl_c_left_as_it_was() -> Iterator[None]:
    """Fail the test that leaves Ctrl-C handled otherwise than Python's default in this process
    (``cli.main`` ignores it on its way out; a Ctrl-C handler of the precompute left installed),
    and restore the default: every later test that sends a Ctrl-C, to this process or to a child
    that inherits its handling, would fail instead of this one."""
    yield
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pytest.fail(f"the test left SIGINT handled by {handler!r}")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real digits + smallcnn run (300 samples, subsets 100/all, perplexities 10/30), made by
    the CLI in its own process exactly as a user would, so other processes can reproduce it."""
    data_dir = tmp_path_factory.mktemp("layerscope-data")
    result = subprocess.run(
        [sys.executable, "main.py", *small_run_arguments(data_dir, SMALL_RUN_ID)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return data_dir, SMALL_RUN_ID


def small_run_arguments(data_dir: Path, run_id: str) -> list[str]:
    return [
        "precompute",
        "--dataset",
        "digits",
        "--model",
        "smallcnn",
        "--samples",
        "300",
        "--subsets",
        "100,all",
        "--perplexities",
        "10,30",
        "--data-dir",
        str(data_dir),
        "--run-id",
        run_id,
    ]


@pytest.fixture
def restore_explainers():
    """The explanation registry; whatever a test registers (a plugin the CLI loaded in this
    process) is gone again after it, so other tests see the built-in methods only."""
    from pipelines.explain import EXPLAINERS

    saved = dict(EXPLAINERS)
    yield EXPLAINERS
    EXPLAINERS.clear()
    EXPLAINERS.update(saved)
