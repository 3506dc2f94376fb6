"""Comparing two runs' artifacts: a resumed or distributed run against one made in one go."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.store import RunStore


def artifact_files(store: RunStore) -> list[Path]:
    """Every array and JSON file of the run but its manifest (temp files included: a run must
    not keep any), relative to the run folder."""
    return sorted(
        p.relative_to(store.run_dir)
        for p in store.run_dir.rglob("*")
        if p.is_file() and p.suffix in (".npy", ".npz", ".json") and p.name != "manifest.json"
    )


def same_values(mine: np.ndarray, theirs: np.ndarray, **tolerance) -> bool:
    """Floats within ``tolerance``; booleans, labels, indices and pixels exactly, as must the
    dtype and shape (allclose's relative tolerance lets large integers differ: 1000000 ≈ 1000005)."""
    if mine.dtype != theirs.dtype or mine.shape != theirs.shape:
        return False
    if np.issubdtype(theirs.dtype, np.floating):
        return bool(np.allclose(mine, theirs, **tolerance))
    return bool(np.array_equal(mine, theirs))


def assert_same_artifacts(store: RunStore, reference: RunStore) -> None:
    """``store`` has the files of ``reference``, with the same values (maps within 1e-4); its
    JSON the same text, but for the layers' records, which carry their timings."""
    assert artifact_files(store) == artifact_files(reference)
    for relative in artifact_files(reference):
        mine_path, theirs_path = store.run_dir / relative, reference.run_dir / relative
        if relative.suffix == ".npy":
            mine, theirs = np.load(mine_path), np.load(theirs_path)
            assert same_values(mine, theirs, atol=1e-4), relative
        elif relative.suffix == ".npz":
            mine, theirs = np.load(mine_path), np.load(theirs_path)
            for name in theirs.files:
                assert same_values(mine[name], theirs[name], equal_nan=True), (relative, name)
        elif relative.parts[0] not in ("reduction", "pca_info"):
            assert mine_path.read_text() == theirs_path.read_text(), relative
