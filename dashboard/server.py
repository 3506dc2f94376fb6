"""The production server: the Dash app under gunicorn, in worker processes with threads.

Why gunicorn: it is the maintained WSGI server Dash documents for Linux, it runs several worker
processes (the GIL makes one process's threads take turns for the Python half of every
callback: JSON, figure building), restarts a worker that dies, and needs no reverse proxy for a
room of users. Threaded workers (``gthread``) rather than one request per process: a hover
fetches four images at once, and a slow request (a VGG16 grid) must not block a worker.

The app is built once, in the master, before the workers fork (``preload_app``): its setup,
the scripts it serves and the signing secret of its callback handles are then the same in
every worker, and the pages of the libraries it imported (torch above all) are shared between
them instead of loaded once per worker. Models and tables load in each worker on first use. Nothing in
the master may run a thread at that point (a fork copies only the calling thread; a lock another
thread held would stay locked in the worker for ever, dashboard/jobs.py tells that story), so
whatever needs threads (the job runner, background jobs) starts in each worker after the fork.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication

from pipelines.errors import UserError

DEFAULT_THREADS = 8
# A worker whose main loop is stuck this long is restarted; a request itself may take longer
# (threads serve requests, the main loop only accepts them).
WORKER_TIMEOUT_S = 120
# Ctrl-C: how long the master waits for workers to finish what they are answering.
GRACEFUL_TIMEOUT_S = 10


def default_workers() -> int:
    """One worker per core the process may use, 1 to 4: more processes than cores only add
    copies of the caches, and beyond 4 the per-worker memory (models, tables) outgrows the win."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


@dataclass(frozen=True)
class ServerOptions:
    host: str
    port: int
    workers: int
    threads: int
    cache_mb: int = 1024  # on-demand results in memory, all workers together

    def bind(self) -> str:
        """gunicorn's bind address: an IPv6 host goes in brackets."""
        try:
            is_v6 = ipaddress.ip_address(self.host).version == 6
        except ValueError:
            is_v6 = False  # a host name
        return f"[{self.host}]:{self.port}" if is_v6 else f"{self.host}:{self.port}"


def check_port_free(host: str, port: int) -> None:
    """A clear error now instead of gunicorn's five retries and a log line: the port is taken
    (another LayerScope?) or the host is not an address of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port, "
                "or stop the program using it"
            ) from None


def prepare_for_workers(flask_app: Any, headers: dict[str, str] | None = None) -> None:
    """Render the page once in the master, before the fork. Dash registers the script bundles
    it may serve, and sets itself up, on the first request *of each process*: without this, a
    worker that had not served the page yet answered its scripts with HTTP 500 ("dash is not
    a registered library"), and the page stayed blank."""
    response = flask_app.test_client().get("/", headers=headers or {})
    if response.status_code != 200:
        raise RuntimeError(f"the page did not render before serving: HTTP {response.status_code}")


class DashboardServer(BaseApplication):
    """gunicorn running ``wsgi_app`` with ``options``; ``in_worker()`` is called in each worker
    after the fork and returns what to call as the worker exits (start and stop its threads)."""

    def __init__(
        self,
        wsgi_app: Any,
        options: ServerOptions,
        in_worker: Callable[[], Callable[[], None]],
        on_ready: Callable[[], None],
    ):
        self.wsgi_app = wsgi_app
        self.options = options
        self.in_worker = in_worker
        self.on_ready = on_ready
        self.stop_worker: Callable[[], None] | None = None
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": [self.options.bind()],
            "workers": self.options.workers,
            "threads": self.options.threads,
            "worker_class": "gthread",
            "preload_app": True,
            "timeout": WORKER_TIMEOUT_S,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            # Longer than a user's pause between clicks: a browser reusing a connection the
            # server has just closed sees the request fail (locust saw "HTTP 0" at 5 s).
            "keepalive": 75,
            # The terminal shows LayerScope's own lines and warnings, not gunicorn's boot log;
            # no access log (a page load is thirty requests).
            "loglevel": "warning",
            "accesslog": None,
            "errorlog": "-",
            "proc_name": "layerscope",
            # Its control socket is a thread in the master, which would then fork workers
            # while that thread runs; nothing here uses it.
            "control_socket_disable": True,
            "post_worker_init": self._post_worker_init,
            "post_fork": self._post_fork,
            "worker_exit": self._worker_exit,
            "when_ready": lambda _arbiter: self.on_ready(),
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.wsgi_app

    def _post_worker_init(self, _worker: Any) -> None:
        self.stop_worker = self.in_worker()

    @staticmethod
    def _post_fork(_arbiter: Any, _worker: Any) -> None:
        # Out of the terminal's process group: Ctrl-C reaches the master only, which stops
        # each worker once (SIGQUIT). Otherwise every Ctrl-C also hit every worker directly,
        # and a second one during its clean-up ended it by signal, with a traceback.
        os.setpgid(0, 0)

    def _worker_exit(self, _arbiter: Any, worker: Any) -> None:
        if self.stop_worker is not None:
            self.stop_worker()
        if worker.booted:
            # Done: what is left is the interpreter's own teardown of torch and the tables,
            # seconds of it on 2 cores, which the master (and the person at Ctrl-C) would wait
            # for. A worker that failed to boot exits normally, so the master sees its status.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
