"""How many CPU cores this process may use, and how many of them are idle right now.

Shared by the precompute (threads for training the small CNN, worker processes for the
embeddings) and the dashboard (threads for one request's forward pass). No torch: the embedding
workers import it.
"""

from __future__ import annotations

import os

import psutil


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def idle_cores(sample_seconds: float) -> int:
    """Cores of this process's CPU set that were idle over the next ``sample_seconds``; at least
    one. Sampled now rather than read from the load average, which lags by a minute (right
    after a pip install it still says one core is busy). Even 20 ms tell idle from busy: on two
    cores, 40 of 40 samples of 20 ms said 2 idle, 1 with one busy process, 1 with two."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return count_idle(psutil.cpu_percent(interval=sample_seconds, percpu=True), usable)


def count_idle(per_cpu: list[float], usable: list[int] | None) -> int:
    """Idle cores among ``usable`` (CPU numbers; None: all) given each CPU's busy percentage over
    a sample, at least one. Pure, so the rule is tested without depending on the host's load."""
    if usable is not None:
        per_cpu = [per_cpu[cpu] for cpu in usable if cpu < len(per_cpu)]
    idle = sum(1.0 - percent / 100.0 for percent in per_cpu)
    return max(1, min(len(per_cpu), round(idle)))
