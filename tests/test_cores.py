"""Core counting: what the precompute and the dashboard size their thread pools by."""

from __future__ import annotations

import subprocess
import sys
import time

from pipelines.cores import available_cores, idle_cores


def test_idle_cores_sees_busy_cores_and_is_within_bounds():
    cores = available_cores()
    assert 1 <= idle_cores(0.05) <= cores
    # Busy every core this process may use: none is idle, and the answer is still at least one.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)
        assert idle_cores(0.2) == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
