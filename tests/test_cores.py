"""Core counting: what the precompute and the dashboard size their thread pools by."""

from __future__ import annotations

import pytest

from pipelines import cores
from pipelines.cores import available_cores, count_idle, idle_cores


@pytest.mark.parametrize(
    ("per_cpu", "usable", "expected"),
    [
        ([0.0, 0.0], None, 2),  # all idle
        ([100.0, 0.0], None, 1),  # one busy process on two cores
        ([100.0, 100.0], None, 1),  # every core busy: still one, never zero threads
        ([100.0, 100.0, 100.0, 100.0], [0, 1, 2, 3], 1),
        ([40.0, 30.0, 0.0], None, 2),  # 2.3 idle cores round to 2
        ([20.0, 20.0, 20.0], None, 2),  # 2.4 round to 2
        ([10.0, 10.0, 10.0], None, 3),  # 2.7 round to 3
        # Only this process's CPU set counts: idle cores outside it are not ours to use.
        ([0.0, 0.0, 100.0, 100.0], [2, 3], 1),
        ([100.0, 100.0, 0.0, 0.0], [2, 3], 2),
        ([0.0, 100.0, 0.0, 100.0], [0, 2], 2),
        # A CPU number psutil did not report (hot-unplugged) is skipped, not an IndexError.
        ([0.0, 0.0], [0, 1, 5], 2),
    ],
)
def test_count_idle(per_cpu, usable, expected):
    assert count_idle(per_cpu, usable) == expected


def test_idle_cores_samples_the_process_cpu_set(monkeypatch):
    """idle_cores passes psutil's per-CPU sample and the affinity set to count_idle."""
    calls = []

    def cpu_percent(interval, percpu):
        calls.append((interval, percpu))
        return [100.0, 0.0, 100.0, 100.0]

    monkeypatch.setattr(cores.psutil, "cpu_percent", cpu_percent)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
    assert idle_cores(0.2) == 1  # CPU 1 is idle but not in the set; 2 and 3 are busy
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert idle_cores(0.2) == 1
    monkeypatch.setattr(cores.psutil, "cpu_percent", lambda interval, percpu: [0.0, 0.0, 0.0, 9.0])
    assert idle_cores(0.2) == 2
    assert calls == [(0.2, True), (0.2, True)]


def test_idle_cores_on_this_host_is_within_bounds():
    # The real sample: whatever the host's load, between one and the cores we may use.
    assert 1 <= idle_cores(0.05) <= available_cores()
