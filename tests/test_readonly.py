"""A read-only data dir (a shared mount, a published folder): `runs`, `serve` and re-running a
finished run's command only read it. As root, permissions do not stop writes, so the commands
run as the unprivileged user `nobody` there, the way such a mount behaves for everyone else."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser_helpers import free_port, stopped_at_exit, wait_until
from tests.conftest import ROOT, small_run_arguments

NOBODY = 65534


def as_reader(command: list[str]) -> list[str]:
    """``command`` as a user who cannot write the data dir."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop write permission")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@pytest.fixture(scope="module")
def read_only_data(small_run: tuple[Path, str]) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """A copy of the small run in a data dir nobody may write (readable by everyone), and the
    environment to run commands in (a HOME the reader can write, as a real user has)."""
    data_dir, run_id = small_run
    base = Path(tempfile.mkdtemp(prefix="layerscope-readonly-"))
    home = base / "home"
    home.mkdir()
    os.chown(home, NOBODY if os.geteuid() == 0 else os.getuid(), -1)
    copy = base / "data"
    shutil.copytree(data_dir / "runs", copy / "runs")
    for path in [copy, *copy.rglob("*")]:
        mode = path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        path.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    base.chmod(0o755)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home)}
    yield copy, run_id, env
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(base, ignore_errors=True)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        as_reader([sys.executable, "main.py", *command]),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runs_lists_a_read_only_data_dir(read_only_data: tuple[Path, str, dict]) -> None:
    data_dir, run_id, env = read_only_data
    result = run(["runs", "--data-dir", str(data_dir)], env)
    assert result.returncode == 0, result.stderr
    assert run_id in result.stdout and "embeddings: done" in result.stdout
    assert "Traceback" not in result.stderr


def test_rerunning_a_finished_run_only_reads_it(read_only_data: tuple[Path, str, dict]) -> None:
    data_dir, run_id, env = read_only_data
    before = sorted((p.name, p.stat().st_mtime_ns) for p in data_dir.rglob("*"))
    result = run(small_run_arguments(data_dir, run_id), env)
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stderr and "Traceback" not in result.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in data_dir.rglob("*")) == before


def test_serve_works_on_a_read_only_data_dir(read_only_data: tuple[Path, str, dict]) -> None:
    """The page, a stored picture and an activation grid (computed on demand and cached in a
    temp folder instead of the data dir's cache/)."""
    data_dir, run_id, env = read_only_data
    port = free_port()
    command = as_reader(
        [sys.executable, "main.py", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    )
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    with stopped_at_exit(process):
        wait_until(
            lambda: urllib.request.urlopen(base, timeout=2).status == 200, 120, "serve", process
        )
        thumb = urllib.request.urlopen(f"{base}/runs/{run_id}/thumb/0.png", timeout=30)
        assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/png"
        grid = urllib.request.urlopen(
            f"{base}/runs/{run_id}/activations/features.0/3.png?sort=score", timeout=60
        )
        assert grid.status == 200 and grid.read()[:4] == b"\x89PNG"
    _, err = process.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert "not writable" in err  # the cache moved, and the user was told where
    assert not (data_dir / "cache").exists()
