"""`python main.py` on an empty data dir: how soon is the page interactive, and how soon is the
run complete (targets: first interactive page <= 15 s on 2 cores; the complete run no later
than a plain precompute of it):

    .venv/bin/python benchmarks/bench_first_page.py [--work-dir DIR] [--json results.json]
        [--skip-plain | --interactive-only]

1. ``python main.py --data-dir EMPTY --port P`` is started; the clock runs from its start.
   "listening" is the first answer of its HTTP server; "interactive" is the first moment a
   headless Chromium on the page shows the embedding map with every sample as a point.
2. "complete" is when the run's manifest says every stage is done (the server keeps serving).
3. For comparison, ``python main.py precompute --dataset digits --model smallcnn`` on another
   empty data dir, timed from its start to its exit.

The shared cached smallcnn of data/models is per data dir, so both train it. The load average
is printed: these are wall-clock times on a possibly shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.stages import STAGES  # noqa: E402
from pipelines.store import RunStore  # noqa: E402
from tests import browser_helpers as bh  # noqa: E402

RUN_ID = "digits-smallcnn"
POINTS = 1797
# Every sample drawn in the map's traces (the last two, the uploads and the pinned ring, empty).
ALL_POINTS = f"gd => gd.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) >= {POINTS}"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min), {os.cpu_count()} cores"


def listening(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def complete(data_dir: Path) -> bool:
    store = RunStore(data_dir / "runs" / RUN_ID)
    if not store.exists():
        return False
    record = store.read_record()
    return all(record.stage(name).state == "done" for name in STAGES)


def first_page(data_dir: Path, until_complete: bool = True) -> dict[str, float]:
    port = bh.free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "main.py", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    times: dict[str, float] = {}
    with bh.stopped_at_exit(process), bh.chromium() as browser:
        bh.wait_until(lambda: listening(url), 600, "the server to answer", process)
        times["listening_s"] = time.perf_counter() - start
        watch = bh.PageWatch(browser, {"width": 1366, "height": 768})
        watch.page.goto(url)
        bh.wait_for_graph(watch.page, "embedding-graph", ALL_POINTS, timeout=120_000)
        times["interactive_s"] = time.perf_counter() - start
        watch.close()
        if until_complete:
            bh.wait_until(lambda: complete(data_dir), 900, "the run to complete", process)
            times["complete_s"] = time.perf_counter() - start
    return times


def plain_precompute(data_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "main.py", "precompute", "--dataset", "digits", "--model", "smallcnn"]
        + ["--data-dir", str(data_dir)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--skip-plain", action="store_true", help="no plain precompute to compare with"
    )
    parser.add_argument(
        "--interactive-only",
        action="store_true",
        help="stop once the page is interactive (no complete run, no plain precompute): "
        "for many short runs of two trees, alternated",
    )
    args = parser.parse_args()
    bh.require_browser()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-first-page-"))
    for name in ("served", "plain"):
        shutil.rmtree(work / name, ignore_errors=True)
    print(f"before: {load()}")
    results: dict[str, Any] = first_page(work / "served", not args.interactive_only)
    print(f"after python main.py: {load()}")
    if not (args.skip_plain or args.interactive_only):
        results["plain_precompute_s"] = plain_precompute(work / "plain")
    results["load"] = load()
    complete_s = results.get("complete_s")
    print(
        f"python main.py: listening {results['listening_s']:.1f} s, interactive "
        f"{results['interactive_s']:.1f} s (target <= 15 s)"
        + (f", run complete {complete_s:.1f} s" if complete_s is not None else "")
    )
    if "plain_precompute_s" in results:
        print(f"plain precompute of the same run: {results['plain_precompute_s']:.1f} s")
    print(results["load"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
