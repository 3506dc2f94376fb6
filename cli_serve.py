"""``python main.py [serve] ...``: serve the dashboard under gunicorn (dashboard/server.py),
and for ``python main.py`` first make the embedded default run usable.

The default run is computed by a ``main.py precompute`` child process, and the page is served as
soon as that run's model is trained (``wait_until_trained``), instead of when it is complete (80
s, most of it t-SNE). The page follows the run as it is built: the first layer's PCA map the
moment it is written, then each layer's t-SNE map as it lands (it polls an unfinished run).
Serving only once every layer's PCA map existed left the browser's own start, about 5 s of page
load and callbacks, until after it; serving from the run's first manifest write let that start
compete with the training (benchmarks/README.md, "First page"). The child is the same command a
person would type, so a stop at any point leaves a run that the next ``python main.py``
resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dashboard.auth import PASSWORD_VARIABLE, BasicAuth, is_loopback
from dashboard.server import ServerOptions, check_port_free
from pipelines.errors import UserError
from pipelines.lifetime import die_with_parent

if TYPE_CHECKING:
    from pipelines.store import RunStore

MAIN = Path(__file__).resolve().parent / "main.py"
# ``PrecomputeConfig`` fields of the embedded default; each is also a `precompute` option.
DEFAULT_RUN: dict[str, Any] = {"dataset": "digits", "model": "smallcnn"}
# ``run_config.run_id_for`` of it (tests/test_serve_start.py checks), spelled out so finding the
# run imports no torch.
DEFAULT_RUN_ID = "digits-smallcnn"
POLL_S = 0.1
STOP_WAIT_S = 15.0  # for the child to save what it has after the server's Ctrl-C


def serve_command(args: argparse.Namespace, build_default: bool) -> None:
    roots = allowed_roots(args.allow_folder)  # before a default run is built: a typo fails fast
    auth = resolve_auth(args.host, args.auth)  # once, before any app (or worker) is built
    options = server_options(args)
    check_port_free(options.host, options.port)
    master = os.getpid()
    with default_run_in_background(args.data_dir, master) if build_default else no_child() as child:
        # Built while the child computes. Waiting for its training first was slower (27 s to
        # the page instead of 25 s on 2 idle cores): the import then met the forward pass and
        # the layer workers' start instead.
        try:
            from dashboard.app import create_app

            app = create_app(args.data_dir, allowed_folders=roots, auth=auth)
            if child is not None:
                wait_until_trained(child, args.data_dir)
        except KeyboardInterrupt:
            if child is None:
                raise
            # The child says "interrupted; run the same command again…" as it stops: said
            # once, not by both processes.
            stop_child(child)
            raise SystemExit(130) from None
        serve_app(app, args.data_dir, options, auth)


def server_options(args: argparse.Namespace) -> ServerOptions:
    from dashboard.server import DEFAULT_THREADS, default_workers

    return ServerOptions(
        host=args.host,
        port=args.port,
        workers=args.workers or default_workers(),
        threads=args.threads or DEFAULT_THREADS,
        cache_mb=args.cache_mb,
    )


def serve_app(
    app: Any, data_dir: Path, options: ServerOptions, auth: BasicAuth | None = None
) -> None:
    """Serve ``app`` under gunicorn until Ctrl-C (dashboard/server.py says why gunicorn).

    Each worker process runs a ``JobRunner`` (jobs started from the page: training,
    precompute): only the one holding the data dir's runner lock runs jobs, one at a time in
    child processes, and another takes over if it dies; with REDIS_URL set, Celery workers run
    them and the runner starts nothing.
    """
    from dashboard.app import stop_background_jobs
    from dashboard.context import CONFIG_KEY
    from dashboard.job_board import JobBoard
    from dashboard.jobs import ThreadJobManager
    from dashboard.server import DashboardServer, prepare_for_workers
    from pipelines.job_queue import JobRunner

    def in_worker() -> Callable[[], None]:
        runner = JobRunner(data_dir).start()

        def stop() -> None:
            # The running job gets SIGINT and is queued again: it resumes on the next start.
            runner.stop()
            # Background jobs are threads of the worker (nothing to kill): none starts now,
            # and a running one gets a moment to end before the interpreter tears torch down.
            stop_background_jobs(app)

        return stop

    url = f"http://{options.bind()}/"

    def ready() -> None:
        print(
            f"LayerScope is serving {data_dir.resolve()} at {url} "
            f"({options.workers} worker{'s' if options.workers > 1 else ''} × "
            f"{options.threads} threads)",
            flush=True,
        )
        if auth is not None:
            print(login_note(auth, url), file=sys.stderr, flush=True)

    # Each worker keeps its share of the memory caches, so the server stays within them.
    app.server.config[CONFIG_KEY].service.limit_memory(options.workers, options.cache_mb << 20)
    if options.workers > 1:
        # Background jobs are answered to polls that reach any worker (dashboard/job_board.py).
        if isinstance(app._background_manager, ThreadJobManager):
            app._background_manager.share_across_processes(JobBoard(data_dir))
    app.server.config[CONFIG_KEY].catalog.warm()
    prepare_for_workers(app.server, auth.header() if auth is not None else None)
    DashboardServer(app.server, options, in_worker, ready).run()  # exits on Ctrl-C


def resolve_auth(
    host: str, wanted: bool | None, environ: Mapping[str, str] = os.environ
) -> BasicAuth | None:
    """The login the server asks for: with ``--auth`` (``wanted``), the password from
    ``LAYERSCOPE_PASSWORD`` or a new random one; None with ``--no-auth`` or, on a loopback
    host, by default. A host others can reach must say which it is."""
    if wanted is None and not is_loopback(host):
        raise UserError(
            f"--host {host} lets other machines reach the dashboard; pass --auth to ask them "
            "for a password (or --no-auth to serve without a login)"
        )
    if not wanted:
        return None
    password = environ.get(PASSWORD_VARIABLE)
    if password:
        return BasicAuth(password=password)
    return BasicAuth(password=secrets.token_urlsafe(16), generated=True)


def login_note(auth: BasicAuth, url: str) -> str:
    """The line that tells whoever started the server how to log in."""
    if auth.generated:
        return (
            f"log in at {url} as user {auth.user} with password {auth.password} (generated for "
            f"this start; set {PASSWORD_VARIABLE} to choose one)"
        )
    return f"log in at {url} as user {auth.user} with the password in ${PASSWORD_VARIABLE}"


def allowed_roots(roots: list[Path]) -> tuple[Path, ...]:
    """``--allow-folder`` roots, resolved; a root that is not a folder is a typo to fix now,
    not a dropdown that is silently empty later."""
    for root in roots:
        if not root.expanduser().is_dir():
            raise UserError(
                f"--allow-folder {root} is not a folder; pass an existing folder under which "
                "datasets may be picked"
            )
    return tuple(root.expanduser().resolve() for root in roots)


@contextlib.contextmanager
def no_child() -> Iterator[None]:
    yield None


def default_run_pending(data_dir: Path) -> bool:
    """True when ``python main.py`` must (re)start the default run: the data dir has no run at
    all, or its default run is incomplete and no precompute is writing it (a stopped start).

    Reads only the manifest: nothing here imports torch, so the child precompute starts at
    once instead of after the seconds those imports take (its own imports are the long pole).
    """
    from pipelines.store import list_run_dirs

    if not list_run_dirs(data_dir):
        return True
    store = default_store(data_dir)
    if not store.exists() or store.is_being_written():
        return False
    try:
        stages = store.read_record().stages
    except UserError:
        return False  # unreadable: the page says why
    return not stages or any(stage.state != "done" for stage in stages.values())


@contextlib.contextmanager
def default_run_in_background(
    data_dir: Path, owner: int
) -> Iterator[subprocess.Popen[bytes] | None]:
    """The default run's precompute as a child process (None when nothing is pending), stopped
    like a Ctrl-C'd precompute when the server stops: it keeps what it computed. Only process
    ``owner`` stops it: a server worker forked inside this block unwinds it as it exits too."""
    if not default_run_pending(data_dir):
        yield None
        return
    print(
        f"{'resuming' if default_store(data_dir).exists() else 'building'} the embedded default "
        "run (digits + smallcnn), fully offline; the page opens once its small CNN is trained "
        "and shows the run as it is built",
        file=sys.stderr,
        flush=True,
    )
    # Not --maps-first: measured on 2 cores, its first map lands during the page's own load and
    # is drawn no sooner (medians to the drawn map: 16.1 s against 13.6 s; once the page's first
    # poll no longer redrew every panel, 10.9 s against 10.3 s; benchmarks/README.md).
    command = [sys.executable, str(MAIN), "precompute", "--data-dir", str(data_dir)]
    for field, value in DEFAULT_RUN.items():
        command += [f"--{field.replace('_', '-')}", str(value)]
    # Its own session: the terminal's Ctrl-C reaches the server only, which stops the child
    # once (a second Ctrl-C does not cut that short). It dies with the server even on kill -9.
    child = subprocess.Popen(
        command, start_new_session=True, preexec_fn=functools.partial(die_with_parent, owner)
    )
    try:
        yield child
    finally:
        if os.getpid() == owner:
            stop_child(child)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the child if it still runs, and wait for it to save its work; a stubborn child
    is killed, which the precompute survives too (it resumes from its last whole file)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing
    try:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def default_store(data_dir: Path) -> RunStore:
    from pipelines.store import RunStore, runs_dir

    return RunStore(runs_dir(data_dir) / DEFAULT_RUN_ID)


def wait_for(child: subprocess.Popen[bytes], ready: Callable[[], bool]) -> int | None:
    """Poll until ``ready()`` or the child's end: its exit status (0) or None when ready first.
    A child that failed has printed its `error:` line already: the server exits with its status."""
    while True:
        status = child.poll()
        if status is not None and status != 0:
            raise SystemExit(status if status > 0 else 128 - status)
        if ready():
            return None
        if status == 0:
            return status
        time.sleep(POLL_S)


def wait_until_trained(child: subprocess.Popen[bytes], data_dir: Path) -> None:
    """Return once the default run's model is trained (its model stage done): the first page
    then opens that run while the forward pass and the first PCA map are computed, and shows
    the map seconds later. Serving from the manifest's first write instead let the page's own
    start (Chromium's page load and the server's first callbacks) compete with the training,
    which uses both cores. A child that fails first has exited with its `error:` line, and so
    does the server, instead of serving a page with no run."""
    store = default_store(data_dir)
    wait_for(child, lambda: store.exists() and store.read_record().stage("model").state == "done")
