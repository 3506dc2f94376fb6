"""pipelines/lifetime.py: children that end with the process that started them."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pipelines.lifetime import die_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

PARENT_SCRIPT = """
import functools, os, subprocess, sys, time
from pipelines.lifetime import die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(120)"],
    preexec_fn=functools.partial(die_with_parent, os.getpid()),
)
print(child.pid, flush=True)
time.sleep(120)
"""


def run_child(parent: int) -> int:
    child = subprocess.Popen(
        [sys.executable, "-c", "pass"], preexec_fn=functools.partial(die_with_parent, parent)
    )
    return child.wait(30)


def test_a_child_runs_while_its_parent_lives():
    assert run_child(os.getpid()) == 0


def test_a_child_whose_parent_is_gone_already_exits_at_once():
    # Any pid but the real parent's reads as "the parent ended before the request took effect".
    assert run_child(os.getpid() + 1) == 1


def test_a_child_is_killed_with_its_parent():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.time() + 10
        while time.time() < deadline and child.is_running() and child.status() != "zombie":
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait()
