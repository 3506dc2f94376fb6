"""Background callbacks (a click on a top-10 bar): jobs that always finish, time out visibly,
and never outlive the server.

The regression this guards: dash's DiskcacheManager forked the multi-threaded server for every
job, and a child forked while another thread held SQLite's allocator mutex blocked for ever; the
page said "computing…" for ever, and the child kept the port after the server stopped. The
served tests drive a real ``python main.py serve`` the way dash's renderer does (a POST that
returns a job handle, then polls with it).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from dashboard import ids
from dashboard.app import create_app, stop_background_jobs
from dashboard.context import CONFIG_KEY
from dashboard.jobs import TIMEOUT_ENV, ThreadJobManager, job_timeout_s, on_timeout, slow_job
from pipelines.errors import UserError
from pipelines.explain import STORED_METHODS
from tests import browser_helpers as bh

ROOT = Path(__file__).resolve().parent.parent
# 8 users clicking bar after bar, 8 each: 64 jobs, each for a sample and class no other asked
# for (no cache hits). Under the forking manager about one job in ten never finished.
USERS = 8
CLICKS = 8
JOB_SECONDS = 30.0  # every click answered within this (a job takes milliseconds)
STOP_SECONDS = 10.0
SHORT_TIMEOUT_S = 1.0  # the deadline where a test makes a job run past it


# ---- a client that speaks dash's background-callback protocol --------------------------------


class ExplainClient:
    """Clicks on top-10 bars as the page does: POST /_dash-update-component with the callback's
    inputs and state, which answers a signed job handle; then POST again with the handle (and
    the inputs blanked, as the renderer sends them) every ``interval`` until the answer."""

    def __init__(self, base_url: str, interval: float = 0.2):
        self.base_url = base_url
        self.interval = interval
        html = self._open("GET", "/")[1].decode()
        config = re.search(
            r'<script id="_dash-config" type="application/json">(.*?)</script>', html, re.S
        )
        assert config, "the page has no _dash-config"
        self.end_id = json.loads(config.group(1))["end_id"]
        layout = json.loads(self._open("GET", "/_dash-layout")[1])
        self.token = _find_store(layout, ids.APP_TOKEN)

    def _open(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=JOB_SECONDS) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def body(self, run_id: str | None, row: int | None, cls: int | None) -> dict[str, Any]:
        # What assets/explain.js's explainRequest writes for a click on class ``cls``'s bar.
        request = None
        if cls is not None:
            request = {
                "run": run_id,
                "row": row,
                "cls": cls,
                "name": f"class {cls}",
                "layer": None,
                "methods": list(STORED_METHODS),
                "click": 1,
            }
        return {
            "output": f"{ids.INSPECTOR_CLASS}.data",
            "outputs": {"id": ids.INSPECTOR_CLASS, "property": "data"},
            "inputs": [{"id": ids.EXPLAIN_REQUEST_QUICK, "property": "data", "value": request}],
            "changedPropIds": [f"{ids.EXPLAIN_REQUEST_QUICK}.data"],
            "state": [{"id": ids.APP_TOKEN, "property": "data", "value": self.token}],
        }

    def explain(self, run_id: str, row: int, cls: int, seconds: float) -> dict[str, Any]:
        """The callback's answer to a click on class ``cls`` of sample ``row``; AssertionError
        naming what happened instead (an HTTP error, no answer within ``seconds``)."""
        query = "/_dash-update-component?" + urllib.parse.urlencode({"endId": self.end_id})
        status, data = self._open("POST", query, self.body(run_id, row, cls))
        assert status == 200, f"starting the job answered HTTP {status}: {data[:300]!r}"
        handles = json.loads(data)
        poll = self.body(None, None, None)
        handle_query = {
            "endId": self.end_id,
            "cacheKey": handles["cacheKey"],
            "job": handles["job"],
        }
        poll_path = "/_dash-update-component?" + urllib.parse.urlencode(handle_query)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(self.interval)
            status, data = self._open("POST", poll_path, poll)
            assert status == 200, f"row {row} class {cls}: a poll answered HTTP {status}"
            answer = json.loads(data)
            if "response" in answer:
                return answer["response"][ids.INSPECTOR_CLASS]["data"]
        raise AssertionError(f"row {row} class {cls}: no answer after {seconds:.0f} s")


def _find_store(node: Any, component_id: str) -> Any:
    if isinstance(node, dict):
        if node.get("props", {}).get("id") == component_id:
            return node["props"]["data"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_store(child, component_id)
        if found is not None:
            return found
    return None


# ---- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the small run (the servers here write their caches into it)."""
    source, run_id = small_run
    target = tmp_path_factory.mktemp("background-jobs-data")
    shutil.copytree(source / "runs" / run_id, target / "runs" / run_id)
    return target


@contextmanager
def served(data_dir: Path, port: int, log: Path) -> Iterator[subprocess.Popen]:
    """``python main.py serve`` on ``port``, its output in ``log``, until the block ends (a test
    stops it itself to check how it stops; this only cleans up after a failure)."""
    command = [sys.executable, "main.py", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        bh.wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200,
            120,
            "the dashboard server",
            process,
        )
        yield process
    finally:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def stop(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Send ``sig``; the process and every process it started must be gone within
    ``STOP_SECONDS``."""
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(sig)
    _, alive = psutil.wait_procs(family, timeout=STOP_SECONDS)
    assert not alive, f"still running {STOP_SECONDS:.0f} s after {sig.name}: {alive}"
    process.wait()


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ForkWatch:
    """Samples the server's child processes until stopped, keeping any that is a fork of the
    server itself (same command line; a spawned worker's would differ)."""

    def __init__(self, server: subprocess.Popen):
        self.server = psutil.Process(server.pid)
        self.command = self.server.cmdline()
        self.forks: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for child in self.server.children(recursive=True):
                try:
                    if child.cmdline() == self.command:
                        self.forks.add(child.pid)
                except psutil.Error:  # gone, or a zombie
                    pass

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join()
        return self.forks


def users_clicking(
    client: ExplainClient, run_id: str, clicks: list[list[tuple[int, int]]]
) -> dict[tuple[int, int], Any]:
    """One thread per user, each clicking its (row, class) pairs one after another, the next as
    soon as the last is answered; every answer, or the failure that stopped everyone."""
    answers: dict[tuple[int, int], Any] = {}
    failed = threading.Event()

    def user(pairs: list[tuple[int, int]]) -> None:
        for row, cls in pairs:
            if failed.is_set():
                return
            try:
                answers[row, cls] = client.explain(run_id, row, cls, JOB_SECONDS)
            except AssertionError as failure:
                answers[row, cls] = failure
                failed.set()

    threads = [threading.Thread(target=user, args=(pairs,)) for pairs in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.slow
def test_concurrent_clicks_all_get_explanations_and_the_server_stops_cleanly(
    data_dir: Path, small_run: tuple[Path, str], tmp_path: Path
):
    """Under the forking manager this failed: a fork per job, jobs never answered (or a poll
    answering 204), and the stopped server's children kept the port."""
    run_id = small_run[1]
    port = bh.free_port()
    log = tmp_path / "serve.log"
    pairs = [(row, cls) for cls in range(10) for row in range(0, 300, 7)][: USERS * CLICKS]
    clicks = [pairs[user::USERS] for user in range(USERS)]
    with served(data_dir, port, log) as server:
        forks = ForkWatch(server)
        answers = users_clicking(ExplainClient(f"http://127.0.0.1:{port}"), run_id, clicks)
        # Jobs run inside the server: it never forks a copy of itself, whose locks could be
        # held by threads that do not exist in the copy.
        forked = forks.stop()
        failed = {pair: a for pair, a in answers.items() if not isinstance(a, dict)}
        assert not failed and not forked, (
            f"{len(failed)} of {len(answers)} clicks failed: {failed}; "
            f"{len(forked)} forks of the server"
        )
        assert len(answers) == USERS * CLICKS
        for (row, cls), answer in answers.items():
            assert (answer["row"], answer["cls"]) == (row, cls) and "error" not in answer
            assert set(answer["urls"]) == {"gradcam", "guided_backprop", "guided_gradcam"}

        # Ctrl-C stops it promptly and frees the port: the same command starts again at once,
        # and SIGTERM (a service manager's stop) does the same.
        stop(server, signal.SIGINT)
        assert server.returncode == 0, log.read_text()[-2000:]
    assert port_is_free(port)
    with served(data_dir, port, tmp_path / "serve-again.log") as again:
        assert ExplainClient(f"http://127.0.0.1:{port}").explain(run_id, 5, 3, 30)["urls"]
        stop(again, signal.SIGTERM)
    assert port_is_free(port)


# ---- a job that runs past its deadline ---------------------------------------------------------


@pytest.fixture
def stuck_explanations(
    small_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """An app (served in this process, on its own copy of the run) whose background jobs time
    out after 1 s, where explaining class 6 never finishes until the test ends; yields (url,
    run id)."""
    source, run_id = small_run
    shutil.copytree(source / "runs" / run_id, tmp_path / "runs" / run_id)
    monkeypatch.setenv(TIMEOUT_ENV, str(SHORT_TIMEOUT_S))
    app = create_app(tmp_path)
    context = app.server.config[CONFIG_KEY]
    service = context.service
    release = threading.Event()
    compute = service.class_explanations
    # Load the model and run one explanation now (nothing is cached in this copy): the jobs
    # that are not stuck then take milliseconds, far within the deadline.
    compute(context.catalog.open(run_id), 0, 0, STORED_METHODS)

    def class_explanations(run: Any, row: int, class_index: int, *args: Any) -> Any:
        if class_index == 6:
            release.wait(60)
        return compute(run, row, class_index, *args)

    monkeypatch.setattr(service, "class_explanations", class_explanations)
    try:
        with bh.serve(app.server) as url:
            yield url, run_id
    finally:
        release.set()
        stop_background_jobs(app)


def test_a_job_past_its_deadline_answers_an_error_the_page_shows(stuck_explanations):
    url, run_id = stuck_explanations
    client = ExplainClient(url, interval=0.1)
    start = time.monotonic()
    answer = client.explain(run_id, 12, 6, 10)
    assert time.monotonic() - start < 5
    assert (answer["run"], answer["row"], answer["cls"]) == (run_id, 12, 6)
    assert f"took longer than {SHORT_TIMEOUT_S:g} s" in answer["error"] and "urls" not in answer
    # Other clicks are still answered while that job's thread is stuck.
    assert client.explain(run_id, 12, 2, 10)["urls"]


@pytest.mark.browser
def test_the_page_says_when_explaining_a_class_timed_out(stuck_explanations):
    bh.require_browser()
    url, run_id = stuck_explanations
    with bh.chromium() as browser:
        watch = bh.PageWatch(browser, bh.LARGE)
        try:
            check_the_page_says_it_timed_out(watch, url, run_id)
        finally:
            watch.close()


def check_the_page_says_it_timed_out(watch: bh.PageWatch, url: str, run_id: str) -> None:
    """Click class 6's bar of row 20: the note under the images says the job took too long,
    and "computing…" is gone."""
    page = watch.page
    page.goto(f"{url}/?run={run_id}&row=20")
    page.wait_for_function(
        "() => document.getElementById('inspector-hint')?.textContent?.includes('pinned')"
    )
    page.locator(f"#{ids.INSPECTOR_TOP10} button.ls-bar[data-cls='6']").click()
    page.wait_for_function(
        "(id) => document.getElementById(id)?.textContent?.startsWith('computing')",
        arg=ids.INSPECTOR_EXPLAIN_STATUS,
    )
    page.wait_for_function(
        "(text) => document.querySelector('.ls-explanation .ls-hint')?.textContent?.includes(text)",
        arg=f"took longer than {SHORT_TIMEOUT_S:g} s",
        timeout=10_000,
    )
    assert page.inner_text(f"#{ids.INSPECTOR_EXPLAIN_STATUS}") == ""
    watch.screenshot("class-explanation-timed-out")
    assert watch.errors == []


# ---- the manager on its own ------------------------------------------------------------------


def run_job(manager: ThreadJobManager, function: Any, *args: Any, key: str = "k") -> str:
    return manager.call_job_fn(key, manager.make_job_fn(function, False), list(args), {})


def answer(manager: ThreadJobManager, job: str, key: str = "k", seconds: float = 10) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = manager.get_result(key, job)
        if result is not manager.UNDEFINED:
            assert not manager.job_running(job)
            return result
        assert manager.job_running(job)
        time.sleep(0.01)
    raise AssertionError(f"job {job} has no answer after {seconds} s")


def job_threads(manager: ThreadJobManager) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if getattr(t, "manager", None) is manager]


def test_jobs_answer_results_errors_and_timeouts_and_stuck_threads_stay_bounded():
    manager = ThreadJobManager(workers=2, timeout_s=0.3)
    release = threading.Event()

    @on_timeout(lambda seconds, name: {"name": name, "error": f"over {seconds:g} s"})
    def work(name: str) -> dict[str, str]:
        if name.startswith("stuck"):
            release.wait(30)
        if name == "broken":
            raise ValueError("no such thing")
        return {"name": name}

    try:
        assert answer(manager, run_job(manager, work, "a")) == {"name": "a"}
        error = answer(manager, run_job(manager, work, "broken"))
        assert error["background_callback_error"]["msg"] == "no such thing"
        # Six jobs that never end: each is answered at its deadline, and threads are replaced
        # only up to twice the pool, so work that never ends cannot pile up threads.
        stuck = [run_job(manager, work, f"stuck {i}") for i in range(6)]
        for i, job in enumerate(stuck):
            assert answer(manager, job) == {"name": f"stuck {i}", "error": "over 0.3 s"}
        assert len(job_threads(manager)) <= 4
        release.set()
        # The stuck ones finish now (their results dropped) and the pool serves again.
        assert answer(manager, run_job(manager, work, "b")) == {"name": "b"}
        job = run_job(manager, work, "c")
        manager.terminate_job(job)  # a newer click replaced it
        assert manager.get_result("k", job) is manager.UNDEFINED and not manager.job_running(job)
    finally:
        release.set()
        manager.shutdown()
    deadline = time.monotonic() + 5
    while job_threads(manager) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job_threads(manager) == []


def test_a_job_without_a_timeout_result_times_out_as_a_callback_error():
    manager = ThreadJobManager(workers=1, timeout_s=0.05)
    release = threading.Event()
    try:
        result = answer(manager, run_job(manager, release.wait, 30))
        assert "took longer than 0.05 s" in result["background_callback_error"]["msg"]
    finally:
        release.set()
        manager.shutdown()


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_a_bad_job_timeout_setting_names_the_fix(monkeypatch, value):
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(UserError, match=f"{TIMEOUT_ENV}=.*unset it for the default"):
        job_timeout_s()


def test_the_job_timeout_setting(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert ThreadJobManager().timeout_s == job_timeout_s() == 30.0
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert ThreadJobManager().timeout_s == 2.5


def test_slow_jobs_run_on_their_own_threads_and_stop_when_cancelled():
    """A burst of slow jobs (occlusion, IG) never makes a quick one wait for a thread, and a
    cancelled slow job stops at its next progress report instead of running on."""
    manager = ThreadJobManager(workers=1, timeout_s=5, slow_workers=2, slow_timeout_s=30)
    release = threading.Event()
    steps: dict[str, int] = {}

    @slow_job
    def slow(set_progress: Any, name: str) -> dict[str, str]:
        for step in range(1000):
            set_progress((step, 1000))
            steps[name] = step + 1
            if release.wait(0.01):
                break
        return {"name": name}

    def quick(name: str) -> dict[str, str]:
        return {"name": name}

    try:
        slow_jobs = [
            manager.call_job_fn(f"s{i}", manager.make_job_fn(slow, True), [f"slow {i}"], {})
            for i in range(3)
        ]
        start = time.monotonic()
        assert answer(manager, run_job(manager, quick, "quick")) == {"name": "quick"}
        assert time.monotonic() - start < 1.0
        # The third slow job waits for a slow thread; cancelling the first frees one.
        time.sleep(0.2)
        assert manager.job_running(slow_jobs[2])
        manager.terminate_job(slow_jobs[0])
        time.sleep(0.1)
        stopped_at, running_at = steps["slow 0"], steps["slow 1"]
        time.sleep(0.3)
        assert steps["slow 0"] == stopped_at  # stopped at its next report
        assert steps["slow 1"] > running_at and steps.get("slow 2", 0) > 0  # the others go on
        release.set()
        assert answer(manager, slow_jobs[1], key="s1") == {"name": "slow 1"}
        assert answer(manager, slow_jobs[2], key="s2") == {"name": "slow 2"}
    finally:
        release.set()
        manager.shutdown(1.0)
