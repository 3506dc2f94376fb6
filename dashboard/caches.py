"""Where the dashboard keeps its on-disk caches (the model service's activations).

The dashboard only reads runs, so a read-only data dir must still serve: its caches then live
in a per-user folder under the system's temp dir instead of ``<data-dir>/cache/``, with one
warning saying where.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pipelines import report

CACHE_DIR_NAME = "cache"


def cache_dir(data_dir: Path, name: str) -> Path:
    """``<data-dir>/cache/<name>``, created; when the data dir cannot be written, a folder
    of the same name under ``$TMPDIR/layerscope-cache-<user>/<hash of the data dir>/``."""
    preferred = Path(data_dir) / CACHE_DIR_NAME / name
    if writable_dir(preferred):
        return preferred
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / f"layerscope-cache-{os.getuid()}" / key / name
    fallback.mkdir(parents=True, exist_ok=True, mode=0o700)
    report.warn(
        f"{Path(data_dir).resolve()} is not writable; keeping the {name} cache in {fallback} instead"
    )
    return fallback


def writable_dir(path: Path) -> bool:
    """True if ``path`` exists (or could be created) and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)
