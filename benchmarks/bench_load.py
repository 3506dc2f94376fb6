"""Load benchmark: a room of users on one server, with locust.

    .venv/bin/python benchmarks/bench_load.py [--work-dir DIR] [--users 10,50,100]
        [--duration 90] [--workers N] [--threads N] [--cache-mb N] [--json results.json]

1. Makes the embedded default run (digits + smallcnn, 1,797 samples) in ``--work-dir`` unless it
   is there, and starts ``python main.py serve`` on it (the production server, as users get it).
2. Records what the page sends for each action in headless Chromium (load_capture.py).
3. For each user count, runs locust headless for ``--duration`` seconds against the server
   (locustfile.py: a mix of page loads, hovers, pins with their activation grid, top-10 bars,
   the class picker, layer switches, gallery pages and the page's polls), statistics reset once
   every user is started, while sampling the server's memory (PSS of the master and its
   workers) every 2 s.
4. Prints, per request kind, requests/s, p50/p95/p99 and failures, and checks the target:
   zero errors and p95 <= 300 ms for every interactive kind (callbacks and pictures; the page's
   own first load is reported, not held to it). Memory: after warm-up vs at the end.

Locust runs on the same machine as the server, so on 2 cores it takes its share of the CPU;
the table says how many cores there were.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load_capture import capture  # noqa: E402
from tests import browser_helpers as bh  # noqa: E402

RUN_ID = "digits-smallcnn"
TARGET_P95_MS = 300.0
NOT_INTERACTIVE = ("page ",)  # the first page load: scripts, index, layout (reported only)
MEMORY_EVERY_S = 2.0


def ensure_run(data_dir: Path) -> None:
    if (data_dir / "runs" / RUN_ID / "manifest.json").exists():
        return
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "precompute",
            "--dataset",
            "digits",
            "--model",
            "smallcnn",
            "--data-dir",
            str(data_dir),
        ],
        check=True,
    )


def start_server(
    root: Path, data_dir: Path, port: int, extra: list[str], log: Path
) -> subprocess.Popen:
    command = [
        sys.executable,
        str(root / "main.py"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        *extra,
    ]
    with open(log, "w") as output:
        server = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Ctrl-C-able like a terminal's server, also when this runs in the background.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    bh.wait_until(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200,
        120,
        "the dashboard server",
        server,
    )
    return server


def locust_environment(data_dir: Path, run_id: str, url: str, recording: Path) -> dict[str, str]:
    """What locustfile.py needs to know of the run and the page."""
    from dashboard.data import RunCatalog

    run = RunCatalog(data_dir).open(run_id)
    return {
        "LAYERSCOPE_LOAD_RECORDING": str(recording),
        "LAYERSCOPE_LOAD_ROWS": str(run.num_samples),
        "LAYERSCOPE_LOAD_CLASSES": str(len(run.model_class_names)),
        "LAYERSCOPE_LOAD_LAYERS": ",".join(run.layer_ids),
        "LAYERSCOPE_LOAD_MAP_LAYERS": ",".join(
            spec.id for spec in run.layers if len(spec.output_shape) == 3 and spec.parents
        ),
        "LAYERSCOPE_LOAD_INTERVALS": json.dumps(background_intervals(url)),
    }


def background_intervals(url: str) -> dict[str, int]:
    """The poll interval (ms) of every background callback, by output, as the page has it."""
    with urllib.request.urlopen(f"{url}/_dash-dependencies", timeout=30) as response:
        dependencies = json.loads(response.read())
    return {
        item["output"]: int(item["background"]["interval"])
        for item in dependencies
        if item.get("background")
    }


def commit_of(root: Path) -> str:
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


class MemorySampler:
    """PSS of the server and its workers (shared pages split fairly between them), in MiB,
    every ``MEMORY_EVERY_S`` seconds."""

    def __init__(self, pid: int):
        self.server = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_EVERY_S):
            total = 0
            for process in [self.server, *self.server.children(recursive=True)]:
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic() - self._start, total / 2**20))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def run_locust(
    url: str, users: int, duration: int, environment: dict[str, str], prefix: Path
) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "benchmarks" / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(max(1, users // 5)),
        "--run-time",
        f"{duration}s",
        "--host",
        url,
        "--csv",
        str(prefix),
        "--reset-stats",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "10",
    ]
    subprocess.run(
        command,
        env={**os.environ, **environment},
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    with open(f"{prefix}_stats.csv") as table:
        return list(csv.DictReader(table))


def summarise(rows: list[dict[str, Any]], duration: int) -> list[dict[str, Any]]:
    summary = []
    for row in rows:
        count = int(row["Request Count"])
        if not count:
            continue
        summary.append(
            {
                "kind": row["Name"],
                "requests": count,
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
                "interactive": row["Name"] != "Aggregated"
                and not row["Name"].startswith(NOT_INTERACTIVE),
            }
        )
    return summary


def memory_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    after = [mib for t, mib in samples if t >= warmup_s] or [mib for _, mib in samples]
    return {
        "after_warmup_mib": round(after[0], 1),
        "end_mib": round(after[-1], 1),
        "peak_mib": round(max(after), 1),
        # Every 30 s: whether it levels off (bounded caches filling) or keeps growing (a leak).
        "every_30s_mib": [round(mib) for t, mib in samples if int(t) % 30 < MEMORY_EVERY_S],
    }


def print_level(users: int, summary: list[dict[str, Any]], memory: dict[str, Any]) -> bool:
    print(f"\n{users} users")
    print(f"  {'kind':<48} {'req/s':>6} {'p50':>6} {'p95':>6} {'p99':>6} {'fail':>5}")
    met = True
    for item in summary:
        flag = ""
        if item["interactive"] and (item["p95_ms"] > TARGET_P95_MS or item["failures"]):
            flag, met = "  <- misses", False
        elif not item["interactive"] and item["failures"]:
            flag, met = "  <- errors", False
        print(
            f"  {item['kind']:<48} {item['rps']:>6} {item['p50_ms']:>6.0f} {item['p95_ms']:>6.0f} "
            f"{item['p99_ms']:>6.0f} {item['failures']:>5}{flag}"
        )
    print(
        f"  server memory (PSS): {memory['after_warmup_mib']} MiB after warm-up, "
        f"{memory['end_mib']} MiB at the end, peak {memory['peak_mib']} MiB"
    )
    print(f"  every 30 s: {memory['every_30s_mib']} MiB")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--users", default="10,50,100")
    parser.add_argument("--duration", type=int, default=90)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-mb", type=int, default=None, help="serve --cache-mb")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="the checkout whose main.py serves (e.g. an older commit, for before/after)",
    )
    args = parser.parse_args(argv)
    bh.require_browser()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layerscope-load-"))
    data_dir = work / "data"
    ensure_run(data_dir)
    extra = []
    if args.workers:
        extra += ["--workers", str(args.workers)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.cache_mb:
        extra += ["--cache-mb", str(args.cache_mb)]
    port = bh.free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.server_root, data_dir, port, extra, work / "server.log")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "server": " ".join(["main.py serve", *extra]),
        "server_commit": commit_of(args.server_root),
        "levels": {},
    }
    met = True
    try:
        recording = capture(url, RUN_ID, work / "recording.json")
        environment = locust_environment(data_dir, RUN_ID, url, work / "recording.json")
        print(
            f"recorded {len(recording['requests'])} requests; server: {results['server']} "
            f"at {results['server_commit']}"
        )
        for users in [int(u) for u in args.users.split(",")]:
            sampler = MemorySampler(server.pid)
            rows = run_locust(url, users, args.duration, environment, work / f"locust-{users}")
            memory = memory_summary(sampler.stop(), warmup_s=min(30.0, args.duration / 3))
            summary = summarise(rows, args.duration)
            met = print_level(users, summary, memory) and met
            results["levels"][users] = {"requests": summary, "memory": memory}
            print(f"  load average: {os.getloadavg()[0]:.1f}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\ntarget (every interactive kind p95 <= 300 ms, no errors):", "met" if met else "missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
