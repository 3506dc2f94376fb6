"""Celery worker for durable jobs (training, precompute) when the server has ``REDIS_URL`` set.

Jobs are heavy, so each worker runs one at a time; start one per machine that shares the data
dir (at the same path) with the server::

    REDIS_URL=redis://127.0.0.1:6379/0 celery -A dashboard.job_worker worker --concurrency 1

It listens on the ``layerscope-jobs`` queue only, apart from the dashboard's background
callbacks (dashboard/worker.py). The task is ``pipelines.job_queue.run_job``: the same code the
server's own runner uses without Redis.
"""

from __future__ import annotations

import os

from pipelines.errors import UserError
from pipelines.job_queue import REDIS_ENV, celery_app

if not os.environ.get(REDIS_ENV):
    raise UserError(f"the job worker needs {REDIS_ENV} (the same one the dashboard server uses)")

celery = celery_app(os.environ[REDIS_ENV])
