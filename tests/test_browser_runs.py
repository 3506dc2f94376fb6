"""The run menu in a real Chromium: runs started or finished while the page is open appear in it
without a reload, and the run being looked at stays selected."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dashboard import ids
from dashboard.app import create_app
from dashboard.panels.controls import RUN_LIST_POLL_MS
from dashboard.panels.embedding import VIEW_URL
from pipelines.records import Manifest, StageState
from pipelines.stages import STAGES
from pipelines.store import RunStore
from tests import browser_helpers as bh

pytestmark = pytest.mark.browser

# The points the embedding map draws (0 before the map's first figure).
POINTS_DRAWN = """(document.querySelector('#embedding-graph .js-plotly-plot')?.data || [])
  .reduce((n, trace) => n + (trace.x ? trace.x.length : 0), 0)"""
MENU_JS = f"""() => {{
  const menu = document.getElementById({ids.CONTROLS_RUN!r});
  if (!menu) return {{value: null, options: []}};  // not rendered yet
  return {{value: menu.value, options: [...menu.options].map(o => [o.value, o.text])}};
}}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    bh.require_browser()
    with bh.chromium() as chromium:
        yield chromium


@pytest.fixture
def data_dir(small_run: tuple[Path, str], tmp_path: Path) -> Path:
    """A private data dir holding a copy of the small run: this test adds runs to it."""
    source, run_id = small_run
    shutil.copytree(source / "runs" / run_id, tmp_path / "runs" / run_id)
    return tmp_path


def add_run(data_dir: Path, source_id: str, run_id: str, embeddings: str) -> RunStore:
    """Copy a run under a new id, with its embeddings stage in state ``embeddings``; the folder
    appears in runs/ in one rename, complete, as a precompute's first manifest write would."""
    staging = data_dir / "staging" / run_id
    shutil.copytree(data_dir / "runs" / source_id, staging)
    store = RunStore(staging)
    manifest = store.read_manifest()
    manifest["run_id"] = run_id
    manifest["stages"]["embeddings"]["state"] = embeddings
    store.write_manifest(manifest)
    staging.rename(data_dir / "runs" / run_id)
    return RunStore(data_dir / "runs" / run_id)


def test_a_run_made_after_the_page_loaded_appears_in_the_menu(browser, data_dir, small_run):
    run_id = small_run[1]
    polls: list[dict[str, Any]] = []  # what each poll of the run list sent back
    watch = bh.PageWatch(browser, bh.LARGE)

    def record_poll(response: Any) -> None:
        request = response.request
        if "_dash-update-component" in request.url and ids.CONTROLS_RUN_POLL in (
            request.post_data or ""
        ):
            body = response.text()  # no update: {} in "response", or an empty 204
            polls.append((json.loads(body).get("response") if body else None) or {})

    watch.page.on("response", record_poll)
    try:
        with bh.serve(create_app(data_dir).server) as url:
            page = watch.page
            page.goto(f"{url}/?run={run_id}")
            page.wait_for_function(
                f"() => ({MENU_JS})().value === {run_id!r}", timeout=RUN_LIST_POLL_MS * 10
            )
            page.evaluate("() => { window.notReloaded = true; }")
            # While nothing changes, each poll answers "no update" (nothing to set): no re-render.
            # (Counted from one interval after the menu filled, so no poll sent before is in.)
            page.wait_for_timeout(RUN_LIST_POLL_MS)
            polls.clear()
            page.wait_for_timeout(RUN_LIST_POLL_MS * 2.5)
            assert len(polls) >= 2 and not any(polls), polls

            # A precompute starts a new run in the same data dir ...
            later = add_run(data_dir, run_id, "digits-later", embeddings="running")
            page.wait_for_function(
                f"""(id) => ({MENU_JS})().options.some(
                     ([value, text]) => value === id && text.includes('precompute not finished'))""",
                arg="digits-later",
                timeout=RUN_LIST_POLL_MS * 10,
            )
            menu = page.evaluate(MENU_JS)
            # Options with an empty value are dbc.Select's placeholder, not runs.
            assert {value for value, _ in menu["options"] if value} == {run_id, "digits-later"}
            assert menu["value"] == run_id  # the run being looked at stays selected
            assert any(polls)

            # ... and finishes it: the entry's label follows.
            manifest = later.read_manifest()
            manifest["stages"]["embeddings"]["state"] = "done"
            later.write_manifest(manifest)
            page.wait_for_function(
                f"""(id) => ({MENU_JS})().options.some(
                     ([value, text]) => value === id && !text.includes('not finished'))""",
                arg="digits-later",
                timeout=RUN_LIST_POLL_MS * 10,
            )
            assert page.evaluate(MENU_JS)["value"] == run_id
            assert page.evaluate("() => window.notReloaded === true")
            assert f"run={run_id}" in page.evaluate("() => location.search")
            watch.screenshot("run-menu-refreshed", full_page=False)
            assert watch.errors == []
    finally:
        watch.close()


def test_a_run_opened_while_it_is_built_shows_its_first_map_when_it_lands(
    browser, data_dir, small_run
):
    """`python main.py` serves the default run before its model exists (issue 13): the page
    says what is being built, then draws the first layer's map the moment the manifest lists
    the layers, without a reload."""
    run_id = small_run[1]
    store = RunStore(data_dir / "runs" / run_id)
    built = store.read_record()
    # What a precompute's first manifest write holds: settings and source, every stage pending.
    starting = Manifest(
        run_id=built.run_id,
        created=built.created,
        config=built.config,
        stages={name: StageState() for name in STAGES},
        versions=built.versions,
        source_fingerprint=built.source_fingerprint,
    )
    watch = bh.PageWatch(browser, bh.SMALL)
    try:
        with store.writer_lock(), bh.serve(create_app(data_dir).server) as url:
            store.write_record(starting)
            page = watch.page
            page.goto(url)
            page.wait_for_function(
                f"""() => (document.getElementById({ids.EMBEDDING_MESSAGE!r}) || {{}})
                     .textContent?.includes("is being built (now: ")""",
                timeout=30_000,
            )
            page.evaluate("() => { window.notReloaded = true; }")
            assert page.evaluate(f"() => {POINTS_DRAWN}") == 0

            # The model, index and forward stages are done and the PCA maps written.
            store.write_record(
                replace(built, stages={**built.stages, "embeddings": StageState("running")})
            )
            page.wait_for_function(f"() => {POINTS_DRAWN} >= 300", timeout=30_000)
            assert page.evaluate("() => window.notReloaded === true")
            layer = page.evaluate(f"() => document.getElementById({ids.MODEL_LAYER!r}).value")
            assert layer == built.first_layer()
            assert f"layer={layer}" in page.evaluate("() => location.search")
            watch.screenshot("first-map-of-a-run-being-built", full_page=False)

            # Another layer's map lands: only the maps changed, so the map's data is asked for
            # again, and the architecture and the workbench, which it cannot alter, are not.
            asked: list[str] = []
            page.on(
                "request", lambda request: asked.append(request.url + (request.post_data or ""))
            )
            store.write_record(
                replace(
                    built,
                    stages={**built.stages, "embeddings": StageState("running", done=3, total=14)},
                )
            )
            deadline = time.monotonic() + 30
            while not any(VIEW_URL in url for url in asked) and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            page.wait_for_timeout(1_000)  # the rest of that poll's answers
            assert any(VIEW_URL in url for url in asked), asked
            untouched = (
                ids.MODEL_GRAPH,
                ids.CONFUSION_GRAPH,
                ids.METRICS_TABLE,
                ids.INSPECTOR_TABLE,
            )
            assert not [url for url in asked if any(f'"{i}"' in url for i in untouched)], asked
            assert watch.errors == []
    finally:
        watch.close()
