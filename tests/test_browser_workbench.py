"""The workbench in a real Chromium: a confusion cell highlights the map and fills the gallery,
a box drawn in the map does the same, relabelling updates the count and the export, a reload
keeps the corrections, and the selection survives a layer switch and a link."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboard.app import create_app
from tests import browser_helpers as bh
from tests.test_browser import open_small_run

pytestmark = pytest.mark.browser

RUN = "digits-small"
# What the map shows as selected: the rows of every trace's selectedpoints (null: no selection).
SELECTED_ROWS = """gd => {
  const meta = gd.layout.meta, rows = [];
  let any = false;
  gd.data.forEach((t, i) => {
    if (i === meta.pinnedTrace || i === meta.uploadsTrace || !t.customdata) return;
    if (t.selectedpoints === null || t.selectedpoints === undefined) return;
    any = true;
    t.selectedpoints.forEach(j => rows.push(t.customdata[j]));
  });
  return any ? rows.sort((a, b) => a - b) : null;
}"""
GALLERY_ROWS = "() => Array.from(document.querySelectorAll('#gallery .ls-gallery-item')).map(e => Number(e.dataset.row))"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    bh.require_browser()
    with bh.chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def server(small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The small run in a data dir of its own: these tests write corrections beside it."""
    source, run_id = small_run
    target = tmp_path_factory.mktemp("workbench-data")
    shutil.copytree(source / "runs" / run_id, target / "runs" / run_id)
    with bh.serve(create_app(target).server) as url:
        yield url


@pytest.fixture
def watch(browser: Any) -> Iterator[bh.PageWatch]:
    page = bh.PageWatch(browser, bh.LARGE)
    yield page
    page.close()


def selection_rows(page: Any) -> dict[str, Any]:
    return page.evaluate("() => window.layerscope.state.embedding.rows")


def click_confusion_cell(page: Any, true_class: int, predicted: int) -> dict[str, Any]:
    """Click the confusion cell (true, predicted) where plotly draws it; returns its count."""
    bh.scroll_to(page, "confusion-graph")
    bh.wait_for_graph(
        page, "confusion-graph", "gd => gd.data.length === 1 && gd.data[0].customdata"
    )
    cell = bh.graph_eval(
        page,
        "confusion-graph",
        f"""gd => {{
          const t = gd.data[0], spec = 'true={true_class};pred={predicted};split=held-out';
          for (let i = 0; i < t.customdata.length; i++) for (let j = 0; j < t.customdata[i].length; j++) {{
            if (t.customdata[i][j] !== spec) continue;
            const L = gd._fullLayout, b = gd.getBoundingClientRect();
            return {{x: b.left + L.xaxis._offset + L.xaxis.d2p(t.x[j]), y: b.top + L.yaxis._offset + L.yaxis.d2p(t.y[i]), count: t.meta.counts[i][j]}};
          }}
          return null;
        }}""",
    )
    assert cell is not None
    page.mouse.click(cell["x"], cell["y"])
    return cell


def test_a_confusion_cell_highlights_the_map_and_fills_the_gallery(watch, server):
    page = open_small_run(watch, server)
    cell = click_confusion_cell(page, 3, 3)
    page.wait_for_function(
        "(n) => document.querySelectorAll('#gallery .ls-gallery-item').length === n",
        arg=cell["count"],
    )
    rows = page.evaluate(GALLERY_ROWS)
    bh.wait_for_graph(page, "embedding-graph", f"gd => ({SELECTED_ROWS})(gd) !== null")
    assert bh.graph_eval(page, "embedding-graph", SELECTED_ROWS) == sorted(rows)
    assert "sel=true%3D3%3Bpred%3D3%3Bsplit%3Dheld-out" in page.url
    # Every thumbnail is a real image of its row, loaded by URL.
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    # The selection survives a layer switch ...
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => !window.layerscope.state.embedding.animating")
    bh.wait_for_graph(page, "embedding-graph", f"gd => ({SELECTED_ROWS})(gd) !== null")
    assert bh.graph_eval(page, "embedding-graph", SELECTED_ROWS) == sorted(rows)
    # ... and a link.
    link = page.url
    again = bh.PageWatch(watch.context.browser, bh.SMALL)
    try:
        other = open_small_run(again, link.split("/?")[0], "&" + link.split("?")[1])
        try:
            other.wait_for_function(
                "(n) => document.querySelectorAll('#gallery .ls-gallery-item').length === n",
                arg=cell["count"],
            )
        except Exception:
            again.screenshot("workbench-link-failed", full_page=True)
            print(
                link,
                other.url,
                other.evaluate("() => document.getElementById('selection-text').textContent"),
                again.errors,
            )
            raise
        again.screenshot("workbench-small", full_page=True)
        assert again.errors == []
    finally:
        again.close()
    watch.screenshot("workbench-confusion-cell", full_page=True)
    assert watch.errors == []


def test_a_box_in_the_map_selects_its_points(watch, server):
    page = open_small_run(watch, server)
    bh.scroll_to(page, "embedding-graph")
    box = bh.graph_eval(
        page,
        "embedding-graph",
        """gd => { const L = gd._fullLayout, b = gd.getBoundingClientRect();
          return {x0: b.left + L.xaxis._offset + L.xaxis._length * 0.2, y0: b.top + L.yaxis._offset + L.yaxis._length * 0.2,
                  x1: b.left + L.xaxis._offset + L.xaxis._length * 0.6, y1: b.top + L.yaxis._offset + L.yaxis._length * 0.6}; }""",
    )
    # The points plotly itself reports inside the box (its own hit test, not ours).
    bh.graph_eval(
        page,
        "embedding-graph",
        """gd => { gd.on('plotly_selected', e => { window.boxed = e ? e.points.map(p => p.customdata)
          .filter(c => typeof c === 'number').sort((a, b) => a - b) : null; });
          return window.Plotly.relayout(gd, {dragmode: 'select'}); }""",
    )
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    page.mouse.move((box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2, steps=5)
    page.mouse.move(box["x1"], box["y1"], steps=5)
    page.mouse.up()
    page.wait_for_function("() => new URL(location).searchParams.get('sel')?.startsWith('rows=')")
    # The gallery shows the box's rows once the server resolved them.
    page.wait_for_function(
        "() => window.boxed && document.getElementById('selection-text').textContent"
        ".includes(window.boxed.length + ' of')"
    )
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery .ls-gallery-item').length"
        " === Math.min(200, window.boxed.length)"
    )
    gallery = page.evaluate(GALLERY_ROWS)
    inside = page.evaluate("() => window.boxed")
    assert inside and sorted(gallery) == inside
    assert watch.errors == []


def test_relabel_counts_exports_and_survives_a_reload(watch, server):
    page = open_small_run(watch, server)
    cell = click_confusion_cell(page, 1, 1)
    # Wait for the cell's own gallery: the whole run's gallery is there before the click lands,
    # and a thumbnail read from it is replaced under the mouse (CI caught this).
    page.wait_for_function(
        "(n) => new URL(location).searchParams.get('sel')?.startsWith('true=1')"
        " && document.querySelectorAll('#gallery .ls-gallery-item').length === n",
        arg=cell["count"],
    )
    first = page.locator("#gallery .ls-gallery-item").first
    row = int(first.get_attribute("data-row"))
    first.hover()
    page.wait_for_function(
        "(row) => document.getElementById('inspector-hint').textContent.includes('row ' + row)",
        arg=row,
    )
    first.click()
    page.wait_for_function(
        "(row) => new URL(location).searchParams.get('row') === String(row)", arg=row
    )
    bh.pick_option(page, "relabel-class", "7: 7")
    page.click("#relabel-pinned")
    page.wait_for_function(
        "() => document.getElementById('relabel-status').textContent.includes('1 corrected')"
    )
    with page.expect_download() as download:
        page.click("#export-selection-csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    corrected = {r["uid"]: r["corrected_label"] for r in table if r["corrected_label"]}
    assert list(corrected.values()) == ["7"], corrected
    page.reload()
    page.wait_for_selector("#gallery .ls-gallery-item")
    page.click("text=Data quality")
    page.wait_for_function(
        "() => document.getElementById('quality-info').textContent.includes('1 labels corrected')"
    )
    page.click("#quality-show-corrected")
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery .ls-gallery-item').length === 1"
    )
    assert page.evaluate(GALLERY_ROWS) == [row]
    assert page.locator("#gallery .ls-gallery-mark.is-corrected").count() == 1
    assert watch.errors == []
