"""`python main.py` serves the page as soon as the default run's model is trained, while a child
precompute builds the rest of the run (the page follows it: tests/test_browser_runs.py);
stopping the server leaves the run resumable, and the next start resumes it in the background
again."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dash
import pytest

import cli_serve
from pipelines.precompute import usable
from pipelines.run_config import PrecomputeConfig, run_id_for
from pipelines.stages import STAGES
from pipelines.store import RunStore
from tests import browser_helpers as bh

SMALL_DEFAULT = {"dataset": "digits", "model": "smallcnn", "samples": 240}


@pytest.fixture
def small_default(monkeypatch):
    """A smaller default run, so the test takes seconds, not a minute."""

    def use(settings: dict) -> None:
        monkeypatch.setattr(cli_serve, "DEFAULT_RUN", settings)
        monkeypatch.setattr(
            cli_serve, "DEFAULT_RUN_ID", run_id_for(PrecomputeConfig(**settings), None)
        )

    return use


def test_the_default_run_id_is_the_one_its_settings_give():
    config = PrecomputeConfig(**cli_serve.DEFAULT_RUN)
    assert cli_serve.DEFAULT_RUN_ID == run_id_for(config, None)


def serve_args(data_dir: Path) -> argparse.Namespace:
    return argparse.Namespace(
        data_dir=data_dir,
        host="127.0.0.1",
        port=bh.free_port(),
        allow_folder=[],
        workers=None,
        threads=None,
        cache_mb=1024,
        auth=None,
    )


def stage_states(store: RunStore) -> dict[str, str]:
    record = store.read_record()
    return {name: record.stage(name).state for name in STAGES}


def test_the_page_is_served_while_the_default_run_is_built_and_fills_in(
    tmp_path, monkeypatch, small_default
):
    small_default(SMALL_DEFAULT)
    store = cli_serve.default_store(tmp_path)
    seen: list[dict[str, str]] = []

    def visit(app: dash.Dash, *_: object) -> None:
        # Served as soon as the model is trained, before the maps ...
        seen.append(stage_states(store))
        # ... which a visitor then sees filling in: every layer's PCA map while some t-SNE
        # maps are still missing.
        deadline = time.monotonic() + 300
        while not usable(store):
            assert time.monotonic() < deadline, stage_states(store)
            time.sleep(0.1)
        seen.append(stage_states(store))

    monkeypatch.setattr(cli_serve, "serve_app", visit)
    cli_serve.serve_command(serve_args(tmp_path), build_default=True)
    at_start, when_usable = seen
    assert at_start["model"] == "done" and at_start["embeddings"] != "done"
    assert at_start["quality"] == "pending"
    assert when_usable["forward"] == "done" and when_usable["embeddings"] != "done"
    layers = store.read_record().layers
    assert all(
        store.has("embedding", layer=layer.id, subset=240, method="pca", perplexity="none")
        for layer in layers
    )
    # Stopping the server stopped the child the way Ctrl-C stops a precompute: the run is
    # incomplete, nobody writes it, and `python main.py` resumes it.
    assert not store.is_being_written() and stage_states(store)["quality"] != "done"
    assert cli_serve.default_run_pending(tmp_path)

    def serve_until_complete(app: dash.Dash, *_: object) -> None:
        deadline = time.monotonic() + 300
        while set(stage_states(store).values()) != {"done"}:
            assert time.monotonic() < deadline, stage_states(store)
            time.sleep(0.5)

    monkeypatch.setattr(cli_serve, "serve_app", serve_until_complete)
    cli_serve.serve_command(serve_args(tmp_path), build_default=True)
    assert not cli_serve.default_run_pending(tmp_path)
    record = store.read_record()
    assert all(store.has("reduction", layer=layer.id) for layer in record.layers)
    # Stored by the forward pass (not --maps-first): the explanations stage only records them.
    assert record.stage("explanations").state == "done"
    assert store.has("explanation", method="gradcam")


def test_a_failing_default_build_exits_with_its_status(tmp_path, monkeypatch, capfd, small_default):
    small_default({**SMALL_DEFAULT, "seed": 5})
    monkeypatch.setitem(cli_serve.DEFAULT_RUN, "seed", -1)  # refused by the child, not here
    monkeypatch.setattr(cli_serve, "serve_app", lambda *_: pytest.fail("served a failed run"))
    with pytest.raises(SystemExit) as stopped:
        cli_serve.serve_command(serve_args(tmp_path), build_default=True)
    assert stopped.value.code == 2
    assert "error: --seed -1 is out of range" in capfd.readouterr().err
