"""Explain anything, in Chromium: pick a method, pick a class from the searchable picker, cancel
a slow method, drop your own image and find it in the map.

The app is served in this process (``bh.serve``) on a copy of the session's digits run, so a
test can register a method of its own (a slow one it can watch and cancel) before the page is
built: the page lists whatever is registered, as it does for a user's ``--plugins``.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from dashboard import ids
from dashboard.app import create_app, stop_background_jobs
from pipelines.explain import EXPLAINERS, Display, Explainer, Passes, register
from pipelines.explain.base import Gradient
from tests import browser_helpers as bh

pytestmark = pytest.mark.browser

SLOW_STEPS = 1000
STEP_SECONDS = 0.05  # 50 s in all, unless cancelled


class _SlowSteps(Explainer):
    """A slow method the test watches: SLOW_STEPS passes of STEP_SECONDS, reporting each."""

    name = "test_slow_steps"
    title = "Slow steps"
    display = Display.HEAT
    needs: ClassVar[frozenset[Gradient]] = frozenset()
    slow = True
    steps_run = 0
    stopped = threading.Event()

    def explain(self, passes: Passes, out_size: int) -> np.ndarray:
        try:
            for step in range(SLOW_STEPS):
                passes.report(step, SLOW_STEPS)
                type(self).steps_run = step + 1
                time.sleep(STEP_SECONDS)
            passes.report(SLOW_STEPS, SLOW_STEPS)
        finally:
            type(self).stopped.set()
        return np.zeros((passes.images.shape[0], out_size, out_size), np.float16)


@pytest.fixture
def app_url(small_run: tuple[Path, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, run id) of an app with the slow test method registered."""
    bh.require_browser()
    source, run_id = small_run
    shutil.copytree(source / "runs" / run_id, tmp_path / "runs" / run_id)
    register(_SlowSteps)
    app = create_app(tmp_path)
    try:
        with bh.serve(app.server) as url:
            yield url, run_id
    finally:
        stop_background_jobs(app)
        EXPLAINERS.pop(_SlowSteps.name, None)


@pytest.fixture
def page(app_url: tuple[str, str]) -> Iterator[Any]:
    with bh.chromium() as browser:
        watch = bh.PageWatch(browser, bh.LARGE)
        try:
            yield watch
        finally:
            watch.close()


def open_pinned(watch: bh.PageWatch, url: str, run_id: str, row: int) -> Any:
    page = watch.page
    page.goto(f"{url}/?run={run_id}&row={row}")
    page.wait_for_function(
        "(id) => document.getElementById(id)?.textContent?.includes('pinned')",
        arg=ids.INSPECTOR_HINT,
    )
    return page


def toggle_method(page: Any, title: str) -> None:
    page.locator(f"#{ids.EXPLAIN_METHODS} label", has_text=title).first.click()


def image_src(page: Any, method: str) -> str:
    return page.evaluate(
        "(m) => document.getElementById(`explain-image-${m}`)?.getAttribute('src') || ''",
        method,
    )


def wait_for_loaded_image(page: Any, method: str, contains: str) -> None:
    page.wait_for_function(
        """([m, part]) => {
            const img = document.getElementById(`explain-image-${m}`);
            return img && img.getAttribute('src').includes(part) && img.complete && img.naturalWidth > 0;
        }""",
        arg=[method, contains],
        # A class explanation is a background job: on two cores shared with the rest of the
        # suite's servers, three of them in a row took over 30 s twice in a full run.
        timeout=60_000,
    )


def test_picking_a_method_and_a_class_draws_them(page: bh.PageWatch, app_url):
    url, run_id = app_url
    browser_page = open_pinned(page, url, run_id, 20)
    # Saliency is not stored by the precompute: ticking it computes it for the pinned sample.
    toggle_method(browser_page, "Saliency")
    wait_for_loaded_image(browser_page, "saliency", "/explain-class/")
    # The picker searches the model's class names: type, pick, and every shown method follows.
    bh.pick_option(browser_page, ids.EXPLAIN_CLASS, "7: 7")
    for method in ("gradcam", "guided_backprop", "saliency"):
        wait_for_loaded_image(browser_page, method, "/explain-class/7/")
    caption = browser_page.inner_text(f"#{ids.INSPECTOR_EXPLAIN_CAPTION}")
    assert "“7” (chosen)" in caption
    assert (
        browser_page.locator(f"#{ids.INSPECTOR_TOP10} button.ls-bar.is-explained").get_attribute(
            "data-cls"
        )
        == "7"
    )
    # "true class" is one click away, and "predicted" goes back to the stored maps.
    browser_page.click(f"#{ids.EXPLAIN_TRUE}")
    table = "window.layerscope.state.inspector.table"
    true_name = browser_page.evaluate(f"() => {table}.classes[{table}.model_label[20]]")
    browser_page.wait_for_function(
        "([id, text]) => document.getElementById(id).textContent.includes(text)",
        arg=[ids.INSPECTOR_EXPLAIN_CAPTION, f"“{true_name}” (chosen)"],
    )
    browser_page.click(f"#{ids.EXPLAIN_PREDICTED}")
    wait_for_loaded_image(browser_page, "gradcam", "/explain/gradcam/20.png")
    # Unticking a method hides its figure.
    toggle_method(browser_page, "Saliency")
    browser_page.wait_for_function(
        "() => document.getElementById('explain-figure-saliency').style.display === 'none'"
    )
    page.screenshot("explain-method-and-class")
    assert page.errors == []


def test_a_slow_method_shows_progress_and_its_cancel_stops_it(page: bh.PageWatch, app_url):
    url, run_id = app_url
    _SlowSteps.stopped.clear()
    browser_page = open_pinned(page, url, run_id, 33)
    toggle_method(browser_page, "Slow steps")
    # The progress bar moves while the method runs, and the page stays usable.
    browser_page.wait_for_function(
        "(id) => getComputedStyle(document.getElementById(id)).display !== 'none'",
        arg=ids.EXPLAIN_PROGRESS_ROW,
    )
    browser_page.wait_for_function(
        "(id) => (document.querySelector(`#${id} .progress-bar`)?.textContent || '').includes('Slow steps')",
        arg=ids.EXPLAIN_PROGRESS,
        timeout=15_000,
    )
    bh.hover_point(browser_page, ids.EMBEDDING_GRAPH)
    browser_page.wait_for_function(
        "(id) => document.getElementById(id).textContent.includes('hovering')",
        arg=ids.INSPECTOR_HINT,
    )
    browser_page.mouse.move(5, 5)
    browser_page.click(f"#{ids.EXPLAIN_CANCEL}")
    assert _SlowSteps.stopped.wait(5), "the cancelled method kept running"
    assert _SlowSteps.steps_run < SLOW_STEPS
    browser_page.wait_for_function(
        "(id) => getComputedStyle(document.getElementById(id)).display === 'none'",
        arg=ids.EXPLAIN_PROGRESS_ROW,
    )
    note = browser_page.inner_text("#explain-note-test_slow_steps")
    assert "cancelled" in note
    page.screenshot("explain-slow-cancelled")
    assert page.errors == []


def digit_png(index: int, size: int = 64) -> bytes:
    """A scikit-learn digit as the PNG a user would drop: grey, larger than the model's input."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[index] * (255 / 16)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def star_count(page: Any) -> int:
    return page.evaluate(
        """(id) => {
            const gd = document.querySelector(`#${id} .js-plotly-plot`);
            const meta = gd && gd.layout && gd.layout.meta;
            return meta ? (gd.data[meta.uploadsTrace].x || []).length : -1;
        }""",
        ids.EMBEDDING_GRAPH,
    )


def test_an_uploaded_image_gets_the_inspector_its_grid_and_a_star_in_every_layer(
    page: bh.PageWatch, app_url
):
    url, run_id = app_url
    browser_page = page.page
    browser_page.goto(f"{url}/?run={run_id}&layer=features.7")
    browser_page.wait_for_selector(f"#{ids.UPLOAD_DROP} input[type=file]", state="attached")
    browser_page.set_input_files(
        f"#{ids.UPLOAD_DROP} input[type=file]",
        files=[
            {"name": "my three.png", "mimeType": "image/png", "buffer": digit_png(1503)},
            {"name": "notes.txt", "mimeType": "image/png", "buffer": b"not a picture"},
        ],
    )
    # The bad file is named with the reason; the good one is listed with its prediction.
    browser_page.wait_for_function(
        "(id) => document.getElementById(id).textContent.includes('notes.txt: the file is not a readable image')",
        arg=ids.UPLOAD_MESSAGE,
    )
    button = browser_page.locator(f"#{ids.UPLOAD_LIST} button.ls-upload")
    assert button.count() == 1 and "my three.png →" in button.inner_text()
    # Placed in the map on screen with that map's own embedding, as a star.
    wait_for_stars(browser_page, 1)
    button.click()
    browser_page.wait_for_function(
        "(id) => document.getElementById(id).textContent === 'your image'", arg=ids.INSPECTOR_HINT
    )
    assert browser_page.locator(f"#{ids.INSPECTOR_TOP10} button.ls-bar").count() == 10
    wait_for_loaded_image(browser_page, "gradcam", "/upload/")
    browser_page.wait_for_function(
        "(id) => document.getElementById(id).textContent.includes('your image · layer features.7')",
        arg=ids.ACTIVATIONS_HEADER,
    )
    # The star follows a layer switch: placed again in the next layer's map.
    browser_page.click(f"#{ids.MODEL_NEXT}")
    browser_page.wait_for_function(
        "(id) => document.getElementById(id).textContent.includes('layer features.8')",
        arg=ids.ACTIVATIONS_HEADER,
    )
    wait_for_stars(browser_page, 1)
    assert browser_page.inner_text(f"#{ids.INSPECTOR_HINT}") == "your image"
    page.screenshot("upload-in-the-map")
    assert page.errors == []


def wait_for_stars(page: Any, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if star_count(page) == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the map shows {star_count(page)} stars, expected {count}")
