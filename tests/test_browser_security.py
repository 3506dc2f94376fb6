"""The page under its Content-Security-Policy in a real Chromium: what a person does on it (the
map, hover, a pinned sample's channel grid, a class explanation, the confusion matrix, figure
downloads, the new-run page) must work with nothing refused by the policy.

A refusal shows twice: as a "Refused to ..." console error and as a ``securitypolicyviolation``
event, which the page records from before its first script runs; both are checked.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard import ids
from dashboard.app import create_app
from tests import browser_helpers as bh
from tests.test_browser import (
    click_a_top10_bar_and_wait_for_its_explanations,
    open_small_run,
    pin_a_point,
)
from tests.test_browser_workbench import click_confusion_cell

pytestmark = pytest.mark.browser

RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    bh.require_browser()
    with bh.chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def server(small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    source, run_id = small_run
    target = tmp_path_factory.mktemp("security-data")
    shutil.copytree(source / "runs" / run_id, target / "runs" / run_id)
    with bh.serve(create_app(target).server) as url:
        yield url


class PolicyWatch(bh.PageWatch):
    """A page that also collects every console line about the content security policy (some
    are warnings, not errors) and the violation events."""

    def __init__(self, browser: Any, viewport: dict[str, int]):
        super().__init__(browser, viewport)
        self.policy_messages: list[str] = []
        self.context.add_init_script(RECORD_VIOLATIONS)
        self.context.on("console", self._policy_console)

    def _policy_console(self, message: Any) -> None:
        text = message.text
        if "Refused to" in text or "Content Security Policy" in text:
            self.policy_messages.append(text)

    def violations(self) -> list[str]:
        return [*self.policy_messages, *self.page.evaluate("() => window.cspViolations || []")]


@pytest.fixture
def watch(browser: Any) -> Iterator[PolicyWatch]:
    page = PolicyWatch(browser, bh.LARGE)
    yield page
    page.close()


def test_the_page_sends_its_policy(watch, server):
    response = watch.page.goto(f"{server}/?run=digits-small")
    policy = response.headers["content-security-policy"]
    assert (
        "frame-ancestors 'none'" in policy
        and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    )
    assert response.headers["x-frame-options"] == "DENY"


def test_explore_inspect_and_explain_under_the_policy(watch, server):
    page = open_small_run(watch, server, "&row=20")
    # Hover fills the inspector (images by URL), a pinned sample draws its channel grid.
    point = pin_a_point(page)
    bh.wait_for_graph(
        page,
        "activations-graph",
        "gd => gd.data.length === 1 && gd.data[0].customdata && gd.data[0].customdata.length === 64",
    )
    assert f"sample {point['customdata']}" in page.inner_text(f"#{ids.ACTIVATIONS_HEADER}")
    # A class explanation (a background callback answering image URLs).
    page.goto(f"{server}/?run=digits-small&row=20")
    bh.wait_for_graph(page, "embedding-graph", "gd => gd.data.length > 2")
    click_a_top10_bar_and_wait_for_its_explanations(page)
    watch.screenshot("security-explain")
    assert watch.violations() == []
    assert watch.errors == []


def test_workbench_and_downloads_under_the_policy(watch, server):
    page = open_small_run(watch, server)
    cell = click_confusion_cell(page, 3, 3)
    page.wait_for_function(
        "(n) => document.querySelectorAll('#gallery .ls-gallery-item').length === n",
        arg=cell["count"],
    )
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    # plotly.js draws PNG and SVG downloads in the page (data: and blob: URLs).
    for button, suffix in (("PNG", ".png"), ("SVG", ".svg")):
        with page.expect_download() as download:
            page.locator(
                f"#{ids.EMBEDDING_CARD} .ls-figure-download button", has_text=button
            ).click()
        assert download.value.suggested_filename == f"layerscope-embedding{suffix}"
        assert Path(download.value.path()).stat().st_size > 1000
    assert watch.violations() == []
    assert watch.errors == []


def test_the_new_run_page_under_the_policy(watch, server):
    page = watch.page
    page.goto(f"{server}/new")
    page.wait_for_selector(f"#{ids.NEW_MODEL_PRESET}")
    page.wait_for_function(f"() => document.getElementById({ids.NEW_DATASET_SOURCE!r}) !== null")
    page.select_option(f"#{ids.NEW_MODEL_PRESET}", "smallcnn")
    watch.screenshot("security-new-run")
    assert watch.violations() == []
    assert watch.errors == []
