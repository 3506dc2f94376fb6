"""What a callback needs from its app: the data dir, its run catalog, its on-demand results
(``service``: per-sample torch work, cached), the pictures users dropped onto the page, and the
server folders a new run may read datasets from (``serve --allow-folder``; none by default).

Request-time callbacks find it on the Flask app serving the request, so several apps (several
data dirs) can live in one process. Background callbacks run without a request (on a job thread,
see ``dashboard/jobs.py``, or in a Celery worker); the page hands them its data dir's opaque token (a store in the
layout), which ``by_token`` resolves in that process's registry. The token is a hash of the data
dir, so a Celery worker started on the same data dir resolves it too, and the page never sees
the path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import flask

from dashboard.data import RunCatalog
from dashboard.on_demand import OnDemand, for_data_dir
from dashboard.uploads import UploadStore
from pipelines.errors import UserError

CONFIG_KEY = "LAYERSCOPE"


@dataclass(frozen=True)
class AppContext:
    data_dir: Path
    catalog: RunCatalog
    service: OnDemand
    token: str
    uploads: UploadStore
    # Resolved roots for pipelines.allowed_folders; empty: no server folder may be picked.
    allowed_folders: tuple[Path, ...] = ()


_by_token: dict[str, AppContext] = {}


def configure(data_dir: Path, allowed_folders: Sequence[Path] = ()) -> AppContext:
    """Create (and register) the context of one app serving ``data_dir``."""
    data_dir = Path(data_dir)
    context = AppContext(
        data_dir=data_dir,
        catalog=RunCatalog(data_dir),
        service=for_data_dir(data_dir),
        token=hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16],
        uploads=UploadStore(data_dir),
        allowed_folders=tuple(Path(root).expanduser().resolve() for root in allowed_folders),
    )
    _by_token[context.token] = context
    return context


def current() -> AppContext:
    """The context of the app handling this request."""
    if flask.has_app_context():
        context = flask.current_app.config.get(CONFIG_KEY)
        if context is not None:
            return context
    if len(_by_token) == 1:
        return next(iter(_by_token.values()))
    raise RuntimeError(
        "no LayerScope app is handling this call; create one with create_app(data_dir)"
    )


def by_token(token: str | None) -> AppContext:
    """The context a page belongs to (background callbacks get the token from the page)."""
    context = _by_token.get(token or "")
    if context is None:
        raise UserError(
            "this page belongs to a LayerScope server for another data dir; reload the page"
        )
    return context
