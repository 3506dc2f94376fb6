"""Shared fixtures: one real, small precompute run reused by every dashboard test."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_RUN_ID = "digits-small"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real digits + smallcnn run (300 samples, subsets 100/all, perplexities 10/30)."""
    from pipelines.precompute import Precompute, PrecomputeConfig

    data_dir = tmp_path_factory.mktemp("layerscope-data")
    config = PrecomputeConfig(
        dataset="digits",
        model="smallcnn",
        samples=300,
        subsets=("100", "all"),
        perplexities=(10.0, 30.0),
    )
    Precompute(config, data_dir, run_id=SMALL_RUN_ID, progress=False).run()
    return data_dir, SMALL_RUN_ID
