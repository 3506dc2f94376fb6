"""The embeddings stage's worker processes: what they import, how many threads they use, at
which priority, and which layer they reduce first."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import threadpoolctl

from pipelines.layer_jobs import TSNE_NICENESS, LayerWorkers
from pipelines.stages.embeddings import first_view_first

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


def thread_niceness(_layer_id: str) -> tuple[int, list[int]]:
    """A stand-in for a layer's phase: its process id, and the nice value of every thread of
    that process after starting one more thread (as openTSNE and BLAS pools do)."""
    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
    return os.getpid(), [
        os.getpriority(os.PRIO_PROCESS, int(thread)) for thread in os.listdir("/proc/self/task")
    ]


class NicenessProbe:
    """A layer job whose phases report where they ran and at which nice values."""

    def phase(self, _name: str) -> Any:
        return thread_niceness


def test_the_map_a_page_waits_for_runs_here_and_the_rest_in_niced_workers():
    layers = ["a", "b", "c", "d"]
    with LayerWorkers(workers=2, blas_threads=1) as workers:
        workers.start()
        assert workers.pool is not None
        # The workers' start (their imports) runs niced already, before any work reaches them.
        for process in workers.pool._processes.values():
            assert os.getpriority(os.PRIO_PROCESS, process.pid) >= TSNE_NICENESS
        urgent = list(workers.run_phase(NicenessProbe(), "pca", layers[:1]))  # type: ignore[arg-type]
        tsne = list(
            workers.run_phase(NicenessProbe(), "tsne", layers, background=True)  # type: ignore[arg-type]
        )
    assert [pid for pid, _ in urgent] == [os.getpid()]
    assert os.getpriority(os.PRIO_PROCESS, 0) < TSNE_NICENESS
    assert os.getpid() not in {pid for pid, _ in tsne}
    assert all(len(values) >= 2 for _, values in tsne)
    assert min(value for _, values in tsne for value in values) >= TSNE_NICENESS, tsne


def test_the_pages_first_layer_is_reduced_first():
    layers = ["input", "features.0", "features.3", "classifier.1"]
    assert first_view_first(layers, "features.3", {}) == [
        "features.3",
        "input",
        "features.0",
        "classifier.1",
    ]
    # A reshape-only first layer reuses its parent's maps: the parent goes first.
    assert first_view_first(layers, "flatten", {"flatten": "features.0"})[0] == "features.0"
    assert first_view_first(layers, None, {}) == layers
