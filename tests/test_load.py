"""The production server under a crowd: the load benchmark's own parts (the page's requests
recorded in Chromium, replayed by locust users) against ``python main.py serve`` with two
workers, briefly. Every request must succeed; how fast is the benchmark's business
(benchmarks/bench_load.py, results in benchmarks/README.md), not a test's."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import bench_load
from benchmarks.load_capture import ACTIONS, POLL, request_kind
from tests import browser_helpers as bh

USERS = 12
SECONDS = 15


@pytest.mark.slow
@pytest.mark.browser
def test_a_crowd_replaying_the_page_gets_no_errors(small_run, tmp_path):
    bh.require_browser()
    source, run_id = small_run
    data_dir = tmp_path / "data"
    shutil.copytree(source / "runs" / run_id, data_dir / "runs" / run_id)
    port = bh.free_port()
    url = f"http://127.0.0.1:{port}"
    server = bench_load.start_server(
        bench_load.ROOT, data_dir, port, ["--workers", "2"], tmp_path / "serve.log"
    )
    with bh.stopped_at_exit(server):
        recording = bench_load.capture(url, run_id, tmp_path / "recording.json")
        recorded = {r["action"] for r in recording["requests"]}
        assert set(ACTIONS) <= recorded | {"class_picker"}, recorded  # the picker may be cached
        assert POLL in recorded
        environment = bench_load.locust_environment(
            data_dir, run_id, url, tmp_path / "recording.json"
        )
        rows = bench_load.run_locust(url, USERS, SECONDS, environment, tmp_path / "locust")
    summary = {item["kind"]: item for item in bench_load.summarise(rows, SECONDS)}
    failed = {kind: item["failures"] for kind, item in summary.items() if item["failures"]}
    assert not failed, (tmp_path / "locust_failures.csv").read_text()
    # The mix reached every kind of interactive request the page makes.
    kinds = {request_kind(r["path"], r["body"]) for r in recording["requests"]}
    for kind in (
        "callback inspector-class",
        "map view",
        "callback activations-graph",
        "image thumbnail",
        "image activation grid",
        "image explanation (class, on demand)",
    ):
        assert kind in kinds and summary[kind]["requests"] > 0, (kind, sorted(summary))
