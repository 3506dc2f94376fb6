"""Celery worker for precompute units (``python main.py precompute ... --workers celery``).

Start one on each machine that sees the data dir at the same path (a shared filesystem), with
the Redis the precompute uses::

    REDIS_URL=redis://HOST:6379/0 celery -A pipelines.precompute_worker worker --concurrency 1

It listens to the ``layerscope-precompute`` queue only, apart from the page's jobs
(dashboard/job_worker.py) and background callbacks (dashboard/worker.py). One unit at a time: a
unit already uses the machine's cores, or its GPU (each worker resolves the run's ``--device``
on its own machine, so ``auto`` means its GPU where it has one). The task is
``pipelines.units.run_unit``; ``pipelines/precompute_celery.py`` says what happens when a worker
or the precompute is killed.
"""

from __future__ import annotations

import os

from pipelines.errors import UserError
from pipelines.job_queue import REDIS_ENV
from pipelines.precompute_celery import celery_app

if not os.environ.get(REDIS_ENV):
    raise UserError(f"the precompute worker needs {REDIS_ENV} (the Redis the precompute uses)")

celery = celery_app(os.environ[REDIS_ENV])
