"""The new-run page in a real Chromium, against the real job queue: a training started from the
page shows its curves growing, finishes, and opens as a run; a cancelled one stops; a dataset
zip uploads through the browser's file chooser."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dashboard import ids
from dashboard.app import create_app
from pipelines import job_queue
from pipelines.store import RunStore, runs_dir
from tests import browser_helpers as bh

pytestmark = pytest.mark.browser

# Points on the curves chart: the train-loss trace's (every trace has one per point).
CURVE_POINTS = "gd => (gd.data.length && gd.data[0].x) ? gd.data[0].x.length : 0"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    bh.require_browser()
    with bh.chromium() as chromium:
        yield chromium


@pytest.fixture
def page_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The dashboard on an empty data dir, with the job runner ``serve`` starts beside it."""
    runner = job_queue.JobRunner(tmp_path).start()
    try:
        with bh.serve(create_app(tmp_path).server) as url:
            yield url, tmp_path
    finally:
        runner.stop()


def fill_small_run(page: Any, epochs: int) -> None:
    """smallcnn on 200 digits with one t-SNE map per layer: a run of well under a minute."""
    page.select_option(f"#{ids.NEW_MODEL_PRESET}", "smallcnn")
    page.fill(f"#{ids.NEW_SAMPLES}", "200")
    page.fill(f"#{ids.NEW_SUBSETS}", "all")
    page.fill(f"#{ids.NEW_PERPLEXITIES}", "10")
    page.fill(f"#{ids.NEW_EPOCHS}", str(epochs))
    page.fill(f"#{ids.NEW_BATCH_SIZE}", "32")


def job_state(page: Any) -> str:
    return page.inner_text(f"#{ids.NEW_JOB_TITLE}").split()[0]


def test_a_training_started_from_the_page_grows_its_curves_and_opens(browser, page_url):
    url, data_dir = page_url
    watch = bh.PageWatch(browser, bh.SMALL)
    page = watch.page
    try:
        page.goto(url)
        page.click(f"#{ids.NEW_LINK}")  # the navbar link: the page switches without a reload
        page.wait_for_selector(f"#{ids.NEW_START}", state="visible")
        assert not page.is_visible(f"#{ids.EXPLORE_PAGE}")
        fill_small_run(page, epochs=40)
        page.fill(f"#{ids.NEW_RUN_NAME}", "lesson")
        page.click(f"#{ids.NEW_START}")
        page.wait_for_function(
            f"() => document.getElementById({ids.NEW_MESSAGE!r}).innerText.includes('lesson')"
        )
        # The curves appear after the first epoch and grow while it trains.
        bh.wait_for_graph(page, ids.NEW_JOB_CURVES, f"gd => ({CURVE_POINTS})(gd) >= 1", 120_000)
        first = bh.graph_eval(page, ids.NEW_JOB_CURVES, CURVE_POINTS)
        bh.wait_for_graph(page, ids.NEW_JOB_CURVES, f"gd => ({CURVE_POINTS})(gd) > {first}", 60_000)
        page.wait_for_function(
            f"() => document.getElementById({ids.NEW_JOB_TITLE!r}).innerText.startsWith('done')",
            timeout=240_000,
        )
        assert bh.graph_eval(page, ids.NEW_JOB_CURVES, CURVE_POINTS) == 40
        store = RunStore(runs_dir(data_dir) / "lesson")
        assert all(stage.state == "done" for stage in store.read_record().stages.values())
        # The finished run opens in the explorer, its map drawn.
        page.click(f"#{ids.NEW_JOB_OPEN}")
        page.wait_for_url(f"{url}/?run=lesson*")
        bh.wait_for_graph(page, ids.EMBEDDING_GRAPH, "gd => gd.data.length > 2", 60_000)
        assert page.is_visible(f"#{ids.EXPLORE_PAGE}")
        assert watch.errors == []
    finally:
        watch.close()


def test_a_job_cancelled_from_the_page_stops_and_keeps_its_run_resumable(browser, page_url):
    url, data_dir = page_url
    watch = bh.PageWatch(browser, bh.SMALL)
    page = watch.page
    try:
        page.goto(f"{url}/new")
        page.wait_for_selector(f"#{ids.NEW_START}", state="visible")
        fill_small_run(page, epochs=400)
        page.click(f"#{ids.NEW_START}")
        bh.wait_for_graph(page, ids.NEW_JOB_CURVES, f"gd => ({CURVE_POINTS})(gd) >= 2", 120_000)
        page.click(f"#{ids.NEW_JOB_CANCEL}")
        page.wait_for_function(
            f"""() => document.getElementById({ids.NEW_JOB_TITLE!r}).innerText
                .startsWith('cancelled')""",
            timeout=60_000,
        )
        (job,) = job_queue.list_jobs(data_dir)
        assert job.state == "cancelled" and job.run_id
        # Nothing half-written: the model stage is not done, so running it again trains anew.
        record = RunStore(runs_dir(data_dir) / job.run_id).read_record()
        assert record.stage("model").state != "done"
        assert watch.errors == []
    finally:
        watch.close()


def test_a_dataset_zip_uploads_through_the_file_chooser(browser, page_url, tmp_path):
    url, data_dir = page_url
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for label, value in (("dark", 30), ("light", 220)):
            for i in range(6):
                picture = tmp_path / f"{label}{i}.png"
                Image.fromarray(np.full((12, 12), value + i, np.uint8)).save(picture)
                zipped.write(picture, f"{label}/{i}.png")
        zipped.writestr("notes.txt", "not an image")
    watch = bh.PageWatch(browser, bh.SMALL)
    page = watch.page
    try:
        page.goto(f"{url}/new")
        page.click(f"label[for='_dbcprivate_radioitems_{ids.NEW_DATASET_SOURCE}_input_upload']")
        with page.expect_file_chooser() as chooser:
            page.click(f"#{ids.NEW_DATASET_FILE}")
        chooser.value.set_files(str(archive))
        page.wait_for_function(
            f"() => document.getElementById({ids.NEW_DATASET_STATUS!r}).innerText.startsWith('✓')",
            timeout=30_000,
        )
        status = page.inner_text(f"#{ids.NEW_DATASET_STATUS}")
        assert "2 classes, 12 images" in status and "skipped 1 files" in status, status
        assert watch.errors == []
    finally:
        watch.close()
