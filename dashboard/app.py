"""The Dash app: ``create_app(data_dir)`` wires layout, callbacks, image routes and the
background-callback manager for one data dir. ``python main.py serve`` calls it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dash
import dash_bootstrap_components as dbc  # noqa: F401 - registers the component suite
from dash import html

from dashboard import callback_inputs, security
from dashboard.auth import BasicAuth
from dashboard.context import CONFIG_KEY, configure
from dashboard.jobs import ThreadJobManager
from dashboard.layout import page
from dashboard.panels import new_run
from dashboard.registry import register_all, shared_with_browser
from dashboard.routes import register_routes
from pipelines.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"

# The page template, plus what the browser shares with Python (component ids, clientside output
# names, constants) for assets/*.js: each stays spelled in one Python place.
INDEX_TEMPLATE = """<!DOCTYPE html>
<html lang="en" data-bs-theme="dark">
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <script>__SHARED_SCRIPT__</script>
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


def browser_json(value: Any) -> str:
    """``value`` as JSON that is safe inside a <script> element (no "</" to close it early)."""
    return json.dumps(value).replace("</", "<\\/")


def shared_script() -> str:
    """The page's one inline script of its own (allowed by its hash in the page's CSP)."""
    return f"window.layerscopeShared = {browser_json(shared_with_browser())};"


def background_manager() -> Any:
    """Celery + Redis when ``REDIS_URL`` is set (run workers with
    ``celery -A dashboard.worker worker``); else jobs on a few threads of this process, each
    with a deadline (``dashboard/jobs.py`` says why not dash's forking ``DiskcacheManager``)."""
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        try:
            from celery import Celery
        except ImportError:
            raise UserError(
                "REDIS_URL is set but celery is not installed; `pip install -r requirements.txt` "
                "or unset REDIS_URL to run background jobs in the server itself"
            ) from None
        celery_app = Celery("layerscope", broker=redis_url, backend=redis_url)
        return dash.CeleryManager(celery_app)
    return ThreadJobManager()


def stop_background_jobs(app: dash.Dash, wait_s: float = 2.0) -> None:
    """On the server's way out: start no more background jobs, and give running ones ``wait_s``
    seconds to end (Celery's run in their own workers)."""
    manager = app._background_manager
    if isinstance(manager, ThreadJobManager):
        manager.shutdown(wait_s)


def create_app(
    data_dir: Path, *, allowed_folders: Sequence[Path] = (), auth: BasicAuth | None = None
) -> dash.Dash:
    """The LayerScope dashboard over the runs in ``data_dir`` (which may be empty).

    ``allowed_folders``: server folders under which a new run may read a dataset
    (``serve --allow-folder``); none by default. ``auth``: the login every request needs
    (``serve --auth``); None: none.
    """
    data_dir = Path(data_dir)
    context = configure(data_dir, allowed_folders)
    # Built first: the panels publish what the browser needs (the registered explanation
    # methods, plugins included) as they lay themselves out.
    layout = page(context.token)
    script = shared_script()
    app = dash.Dash(
        __name__,
        title="LayerScope",
        update_title=None,  # type: ignore[arg-type]  # Dash documents None: no "Updating..." title
        assets_folder=str(ASSETS),
        serve_locally=True,
        background_callback_manager=background_manager(),
        index_string=INDEX_TEMPLATE.replace("__SHARED_SCRIPT__", script),
        meta_tags=[{"name": "viewport", "content": "width=device-width, initial-scale=1"}],
    )
    # First: it also changes how the routes added below read numbers.
    security.install(
        app, auth=auth, page_scripts=[script], value_problem=callback_inputs.value_problem
    )
    app.server.config[CONFIG_KEY] = context
    app.layout = layout
    # The /new page's body is mounted when first shown: its callbacks are checked against both.
    # The ignore: Dash's __init__ sets this attribute to None, so mypy infers None for it.
    app.validation_layout = html.Div([layout, new_run.body()])  # type: ignore[assignment]
    register_all(app)
    register_routes(app.server, context)
    return app
