"""Class explanations under concurrent use, and background callbacks (the slow methods): jobs
that always finish, time out visibly, never outlive the server, and are answered whichever
server worker a poll reaches.

The regression this guards: dash's DiskcacheManager forked the multi-threaded server for every
job, and a child forked while another thread held SQLite's allocator mutex blocked for ever; the
page said "computing…" for ever, and the child kept the port after the server stopped. The
served tests drive a real ``python main.py serve`` (gunicorn, two workers) the way dash's
renderer does: a POST, answered at once by a plain callback, or with a job handle that the
page then polls with (each poll on a new connection, so it may reach either worker).
"""

from __future__ import annotations

import json
import os
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
from dashboard.job_board import JobBoard
from dashboard.jobs import (
    SLOW_TIMEOUT_ENV,
    TIMEOUT_ENV,
    ThreadJobManager,
    job_timeout_s,
    on_timeout,
    slow_job,
)
from pipelines.errors import UserError
from pipelines.explain import EXPLAINERS, STORED_METHODS
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
    inputs and state. The quick methods' callback answers at once; the slow methods' answers a
    signed job handle, and the client POSTs again with the handle (and the inputs blanked, as
    the renderer sends them) every ``interval`` until the answer."""

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

    def body(
        self, run_id: str | None, row: int | None, cls: int | None, methods: list[str]
    ) -> dict[str, Any]:
        # What assets/explain.js's explainRequest writes for a click on class ``cls``'s bar:
        # the quick methods to one callback, the slow ones to the other.
        slow = any(EXPLAINERS[m].slow for m in methods)
        output, source = (
            (ids.EXPLAIN_SLOW, ids.EXPLAIN_REQUEST_SLOW)
            if slow
            else (ids.INSPECTOR_CLASS, ids.EXPLAIN_REQUEST_QUICK)
        )
        request = None
        if cls is not None:
            request = {
                "run": run_id,
                "row": row,
                "cls": cls,
                "name": f"class {cls}",
                "layer": None,
                "methods": methods,
                "click": 1,
            }
        return {
            "output": f"{output}.data",
            "outputs": {"id": output, "property": "data"},
            "inputs": [{"id": source, "property": "data", "value": request}],
            "changedPropIds": [f"{source}.data"],
            "state": [{"id": ids.APP_TOKEN, "property": "data", "value": self.token}],
        }

    def explain(
        self,
        run_id: str,
        row: int,
        cls: int,
        seconds: float,
        methods: list[str] = list(STORED_METHODS),  # noqa: B006 - read only
    ) -> dict[str, Any]:
        """The callback's answer to a click on class ``cls`` of sample ``row``; AssertionError
        naming what happened instead (an HTTP error, no answer within ``seconds``)."""
        query = "/_dash-update-component?" + urllib.parse.urlencode({"endId": self.end_id})
        body = self.body(run_id, row, cls, methods)
        output = body["outputs"]["id"]
        status, data = self._open("POST", query, body)
        assert status == 200, f"the click answered HTTP {status}: {data[:300]!r}"
        handles = json.loads(data)
        if "response" in handles:  # a plain callback: the answer itself
            return handles["response"][output]["data"]
        poll = self.body(None, None, None, methods)
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
                return answer["response"][output]["data"]
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


SERVER_WORKERS = 2


@contextmanager
def served(
    data_dir: Path, port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``python main.py serve`` with two worker processes on ``port``, its output in ``log``,
    until the block ends (a test stops it itself to check how it stops; this only cleans up
    after a failure)."""
    command = [sys.executable, "main.py", "serve", "--data-dir", str(data_dir), "--port", str(port)]
    command += ["--workers", str(SERVER_WORKERS)]
    with open(log, "w") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
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
    server itself (same command line; a spawned process's would differ) other than its worker
    processes, which exist from the start."""

    def __init__(self, server: subprocess.Popen):
        self.server = psutil.Process(server.pid)
        self.command = self.server.cmdline()
        # gunicorn forks its workers one after another (a random pause of up to 0.1 s between
        # them): the first may answer before the second exists, more so on a loaded machine.
        deadline = time.monotonic() + 60
        self.workers = self._forks_now()
        while len(self.workers) < SERVER_WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)
            self.workers = self._forks_now()
        assert len(self.workers) == SERVER_WORKERS, f"worker processes: {self.workers}"
        self.forks: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _forks_now(self) -> set[int]:
        forks = set()
        for child in self.server.children(recursive=True):
            try:
                if child.cmdline() == self.command:
                    forks.add(child.pid)
            except psutil.Error:  # gone, or a zombie
                pass
        return forks

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.forks |= self._forks_now() - self.workers

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
        # Work runs inside the server's workers: nothing forks a copy of one per click, whose
        # locks could be held by threads that do not exist in the copy.
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


SLOW = ["occlusion"]


@pytest.fixture
def stuck_explanations(
    small_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """An app (served in this process, on its own copy of the run) whose slow-method jobs time
    out after 1 s, where the slow methods of class 6 never finish until the test ends; yields
    (url, run id)."""
    source, run_id = small_run
    shutil.copytree(source / "runs" / run_id, tmp_path / "runs" / run_id)
    monkeypatch.setenv(SLOW_TIMEOUT_ENV, str(SHORT_TIMEOUT_S))
    app = create_app(tmp_path)
    context = app.server.config[CONFIG_KEY]
    service = context.service
    release = threading.Event()
    compute = service.class_explanations
    # Load the model and run one explanation now (nothing is cached in this copy): the jobs
    # that are not stuck then take milliseconds, far within the deadline.
    compute(context.catalog.open(run_id), 0, 0, STORED_METHODS)

    def class_explanations(
        run: Any, row: int, class_index: int, methods: list[str], *args: Any
    ) -> Any:
        if class_index == 6 and any(EXPLAINERS[m].slow for m in methods):
            release.wait(60)
        return compute(run, row, class_index, methods, *args)

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
    answer = client.explain(run_id, 12, 6, 10, SLOW)
    assert time.monotonic() - start < 5
    assert (answer["run"], answer["row"], answer["cls"]) == (run_id, 12, 6)
    assert f"took longer than {SHORT_TIMEOUT_S:g} s" in answer["error"] and "urls" not in answer
    # Other clicks are still answered while that job's thread is stuck: the quick methods of
    # the same class, and the slow ones of another.
    assert client.explain(run_id, 12, 6, 10)["urls"]
    assert client.explain(run_id, 12, 2, 10, SLOW)["urls"]


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
    """Show occlusion and click class 6's bar of row 20: the note under occlusion's image says
    the job took too long, the progress row is gone, and the quick methods' images came."""
    page = watch.page
    page.goto(f"{url}/?run={run_id}&row=20")
    page.wait_for_function(
        "() => document.getElementById('inspector-hint')?.textContent?.includes('pinned')"
    )
    page.locator(f"#{ids.EXPLAIN_METHODS} label", has_text="Occlusion").first.click()
    page.locator(f"#{ids.INSPECTOR_TOP10} button.ls-bar[data-cls='6']").click()
    page.wait_for_function(
        "(text) => Array.from(document.querySelectorAll('.ls-explanation .ls-hint'))"
        ".some(hint => hint.textContent.includes(text))",
        arg=f"took longer than {SHORT_TIMEOUT_S:g} s",
        timeout=10_000,
    )
    page.wait_for_function(
        "() => document.getElementById('explain-image-gradcam')?.getAttribute('src')"
        "?.includes('/explain-class/6/')"
    )
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


# ---- several server workers ------------------------------------------------------------------


def test_a_job_is_answered_to_polls_that_reach_another_worker(tmp_path: Path):
    """Two managers on one board stand for two gunicorn workers: the job runs on the one that
    got the click, and the other answers its polls: progress, set_props, the result once, a
    cancel that stops the job, and the timeout result of a job whose owner went silent."""
    owner = ThreadJobManager(workers=1, timeout_s=0.5, slow_workers=1, slow_timeout_s=30)
    other = ThreadJobManager(workers=1, timeout_s=0.5, slow_workers=1, slow_timeout_s=30)
    owner.share_across_processes(JobBoard(tmp_path))
    other.share_across_processes(JobBoard(tmp_path))
    release = threading.Event()
    steps: list[int] = []

    @slow_job
    def slow(set_progress: Any, name: str) -> dict[str, str]:
        for step in range(1000):
            set_progress((step, 1000))
            steps.append(step)
            if release.wait(0.01):
                break
        return {"name": name}

    @on_timeout(lambda seconds, name: {"name": name, "error": f"over {seconds:g} s"})
    def quick(name: str) -> dict[str, str]:
        if name == "stuck":
            release.wait(30)
        return {"name": name}

    try:
        job = owner.call_job_fn("s", owner.make_job_fn(slow, True), ["a"], {})
        deadline = time.monotonic() + 5
        progress = None
        while progress is None and time.monotonic() < deadline:
            progress = other.get_progress("s")
            time.sleep(0.02)
        assert progress is not None and progress[1] == 1000
        assert other.job_running(job) and other.get_result("s", job) is other.UNDEFINED
        release.set()
        assert answer(other, job, key="s") == {"name": "a"}
        assert other.get_result("s", job) is other.UNDEFINED  # handed out once
        release.clear()

        # A cancel that reaches the other worker stops the owner's job at its next report.
        job = owner.call_job_fn("c", owner.make_job_fn(slow, True), ["b"], {})
        time.sleep(0.1)
        other.terminate_job(job)
        time.sleep(0.1)
        stopped_at = len(steps)
        time.sleep(0.2)
        assert len(steps) <= stopped_at + 1
        assert not other.job_running(job)

        # Nobody polls the owner, whose job never ends: the other answers at the deadline.
        job = owner.call_job_fn("t", owner.make_job_fn(quick, False), ["stuck"], {})
        assert answer(other, job, key="t") == {"name": "stuck", "error": "over 0.5 s"}
    finally:
        release.set()
        owner.shutdown(1.0)
        other.shutdown(1.0)


@pytest.mark.slow
def test_slow_explanations_come_back_from_two_server_workers(
    data_dir: Path, small_run: tuple[Path, str], tmp_path: Path
):
    """Occlusion for a few samples through ``main.py serve --workers 2``: every job's polls
    (new connections, so either worker) get its progress and its answer."""
    run_id = small_run[1]
    port = bh.free_port()
    with served(data_dir, port, tmp_path / "serve.log") as server:
        client = ExplainClient(f"http://127.0.0.1:{port}", interval=0.05)
        for row, cls in [(3, 1), (40, 7), (77, 2), (120, 9)]:
            answer = client.explain(run_id, row, cls, JOB_SECONDS, SLOW)
            assert "error" not in answer, answer
            assert (answer["row"], answer["cls"]) == (row, cls)
            assert set(answer["urls"]) == {"occlusion"} and answer["occlusion"]["patches"]
        stop(server, signal.SIGINT)
        assert server.returncode == 0
