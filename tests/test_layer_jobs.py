"""The embeddings stage's worker processes: what they import and how many threads they use."""

import subprocess
import sys
from pathlib import Path

import threadpoolctl

from pipelines.layer_jobs import LayerWorkers

ROOT = Path(__file__).resolve().parent.parent


def test_workers_limit_blas_threads_so_parallel_pca_does_not_oversubscribe():
    with LayerWorkers(workers=2, blas_threads=1) as workers:
        workers.start()
        info = workers.pool.submit(threadpoolctl.threadpool_info).result(timeout=120)
    blas = [pool for pool in info if pool["user_api"] == "blas"]
    assert blas, "numpy's BLAS should be loaded in the worker"
    assert all(pool["num_threads"] == 1 for pool in info), info


def test_worker_module_does_not_import_torch():
    # A spawned worker imports only this module (and main.py's top level), so it starts in about
    # a second instead of the six that torch, torchvision and grad-cam take here.
    code = (
        "import sys, runpy; runpy.run_path('main.py', run_name='__mp_main__');"
        "import pipelines.layer_jobs;"
        "print(sorted(m for m in ('torch', 'torchvision', 'dash', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
