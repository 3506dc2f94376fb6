"""Celery worker for the dashboard's background callbacks (the scale-out path).

With ``REDIS_URL`` set, ``create_app`` hands background callbacks to Celery instead of the
server's own job threads (dashboard/jobs.py). Start workers on the same data dir as the server::

    REDIS_URL=redis://127.0.0.1:6379/0 LAYERSCOPE_DATA_DIR=data celery -A dashboard.worker worker

Importing this module builds the app, which registers every background callback as a Celery
task; ``celery`` is the Celery application the command line looks for.
"""

from __future__ import annotations

import os
from pathlib import Path

from dashboard.app import create_app
from pipelines.errors import UserError

if not os.environ.get("REDIS_URL"):
    raise UserError("the Celery worker needs REDIS_URL (the same one the dashboard server uses)")

# Not named ``app``: ``celery -A dashboard.worker`` takes a module attribute called ``app`` first,
# and would find the Dash app instead of the Celery one.
dash_app = create_app(Path(os.environ.get("LAYERSCOPE_DATA_DIR", "data")))
manager = dash_app._background_manager
if manager is None:
    raise UserError("the dashboard has no Celery background manager; is REDIS_URL set?")
celery = manager.handle
