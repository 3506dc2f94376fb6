"""The workbench in Chromium at Imagenette size (targets from issue 12, 2 CPU cores):

    .venv/bin/python benchmarks/bench_workbench_page.py [--work-dir DIR] [--points 13000]
                                                        [--repeats 5] [--json results.json]

1. Confusion-cell click -> map highlighted (<= 300 ms): from the click on a cell to the first
   animation frame in which the embedding's traces carry the selection (the browser drew it).
2. Gallery page of 200 thumbnails visible (<= 1 s): from the click on "next ›" to the frame in
   which the new page's 200 items are in the page and every thumbnail in the gallery's visible
   area has loaded (the rest load lazily as the user scrolls).

Runs on the synthetic 13,000-sample run of ``bench_dashboard.py`` (a real digits run provides
its layers) served by the dashboard in its own process. Medians over ``--repeats``; the load
average is printed, since these are wall-clock times on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_dashboard import (  # noqa: E402
    SMALLCNN_RUN,
    make_large_run,
    make_smallcnn_run,
    open_run,
    start_server,
)

from tests import browser_helpers as bh  # noqa: E402

# A rAF loop in the page: the first frame at which the map shows a selection of `count` points.
HIGHLIGHT_PROBE = """(count) => { window.probe = new Promise(resolve => {
  const outer = document.getElementById('embedding-graph');
  const gd = outer.classList.contains('js-plotly-plot') ? outer : outer.querySelector('.js-plotly-plot');
  const armed = performance.now();
  function frame(now) {
    const start = window.clickedAt > armed ? window.clickedAt : null;
    const meta = gd.layout.meta;
    let selected = 0, marked = false;
    gd.data.forEach((t, i) => {
      if (i === meta.pinnedTrace || i === meta.uploadsTrace || !t.selectedpoints) return;
      marked = true;
      selected += t.selectedpoints.length;
    });
    if (start !== null && marked && selected === count) { resolve(performance.now() - start); return; }
    if (performance.now() - armed > 30000) { resolve(null); return; }  // reported as a failure
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
}); }"""

# The first frame at which the gallery shows page `page` (its first row changed) with 200
# items and every thumbnail inside the gallery's visible box loaded.
PAGE_PROBE = """(firstBefore) => { window.probe = new Promise(resolve => {
  const gallery = document.getElementById('gallery');
  const armed = performance.now();
  function visibleLoaded() {
    const box = gallery.getBoundingClientRect();
    const images = Array.from(gallery.querySelectorAll('img')).filter(img => {
      const r = img.getBoundingClientRect();
      return r.bottom > box.top && r.top < box.bottom;
    });
    return images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
  }
  function frame() {
    const start = window.clickedAt > armed ? window.clickedAt : null;
    const items = gallery.querySelectorAll('.ls-gallery-item');
    if (start !== null && items.length === 200 && items[0].dataset.row !== firstBefore && visibleLoaded()) {
      resolve({ms: performance.now() - start, visible: Array.from(gallery.querySelectorAll('img')).filter(img => {
        const r = img.getBoundingClientRect(), b = gallery.getBoundingClientRect();
        return r.bottom > b.top && r.top < b.bottom; }).length});
      return;
    }
    if (performance.now() - armed > 30000) { resolve(null); return; }  // reported as a failure
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
}); }"""


def cell_position(page: Any, true_class: int, predicted: int) -> dict[str, Any]:
    return bh.graph_eval(
        page,
        "confusion-graph",
        f"""gd => {{
          const t = gd.data[0], L = gd._fullLayout, b = gd.getBoundingClientRect();
          for (let i = 0; i < t.customdata.length; i++) for (let j = 0; j < t.customdata[i].length; j++) {{
            if (!t.customdata[i][j].startsWith('true={true_class};pred={predicted};')) continue;
            return {{x: b.left + L.xaxis._offset + L.xaxis.d2p(t.x[j]), y: b.top + L.yaxis._offset + L.yaxis.d2p(t.y[i]),
                     count: t.meta.counts[i][j]}};
          }}
          return null;
        }}""",
    )


def stamp_clicks(page: Any) -> None:
    """Record the time of every mouse press (capture phase: before any handler runs)."""
    page.evaluate(
        "() => document.addEventListener('mousedown', () => { window.clickedAt = performance.now(); }, true)"
    )


# After a click: when its request for the selection's rows left and when the answer was in,
# from the browser's resource timing (ms after the mouse press).
ROWS_REQUEST_TIMING = """() => {
  const entry = performance.getEntriesByType('resource')
    .filter(e => e.name.includes('/selections/rows')).pop();
  return entry ? [entry.startTime - window.clickedAt, entry.responseEnd - window.clickedAt] : null;
}"""


def bench_confusion_clicks(
    page: Any, repeats: int
) -> tuple[list[float], list[float], list[list[float]]]:
    times: list[float] = []
    arrived: list[float] = []
    requests: list[list[float]] = []
    bh.scroll_to(page, "confusion-graph")
    bh.wait_for_graph(page, "confusion-graph", "gd => gd.data.length === 1 && gd.data[0].meta")
    # Alternate cells so every click is a new selection: the diagonal, then confusions.
    cells = [(c, c) for c in range(repeats)] + [(c, (c + 1) % 10) for c in range(repeats)]
    for true_class, predicted in cells[: 2 * repeats]:
        bh.scroll_to(page, "confusion-graph")
        cell = cell_position(page, true_class, predicted)
        if cell is None or not cell["count"]:
            continue
        page.evaluate(HIGHLIGHT_PROBE, cell["count"])
        # Room for this click's entries (the buffer keeps 250, and the thumbnails fill it).
        page.evaluate("() => performance.clearResourceTimings()")
        page.mouse.click(cell["x"], cell["y"])
        took = page.evaluate("() => window.probe")
        if took is None:
            raise RuntimeError(
                f"the map never showed the {cell['count']} samples of cell {true_class},{predicted}: "
                + page.evaluate("() => document.getElementById('selection-text').textContent")
            )
        times.append(float(took))
        # Of which: until the selection's rows reached the map's callback (the Dash round trip
        # and the server), the rest is drawing.
        arrived.append(
            float(
                page.evaluate(
                    "() => window.layerscope.state.embedding.highlightedAt - window.clickedAt"
                )
            )
        )
        timing = page.evaluate(ROWS_REQUEST_TIMING)
        if timing is not None:
            requests.append(timing)
        time.sleep(0.3)
    return times, arrived, requests


def bench_gallery_pages(page: Any, repeats: int) -> list[dict[str, Any]]:
    results = []
    bh.scroll_to(page, "gallery-card")
    page.click("#selection-clear")
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery .ls-gallery-item').length === 200"
    )
    for _ in range(repeats):
        first = page.evaluate(
            "() => document.querySelector('#gallery .ls-gallery-item').dataset.row"
        )
        page.evaluate(PAGE_PROBE, first)
        page.click("#gallery-next")
        page_time = page.evaluate("() => window.probe")
        if page_time is None:
            raise RuntimeError("the gallery's next page never showed 200 loaded thumbnails")
        results.append(page_time)
        time.sleep(0.3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--points", type=int, default=13000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="layerscope-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}; building runs (first time only)…", flush=True)
    make_smallcnn_run(work)
    large_run = make_large_run(work, work / "runs" / SMALLCNN_RUN, args.points)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    process, url = start_server(work)
    try:
        with bh.chromium() as browser:
            watch = bh.PageWatch(browser, bh.LARGE)
            page = watch.page
            open_run(page, url, large_run)
            stamp_clicks(page)
            clicks, arrived, requests = bench_confusion_clicks(page, args.repeats)
            results["confusion_click_to_map_ms"] = {
                "median": round(statistics.median(clicks), 1),
                "rows_arrived_median": round(statistics.median(arrived), 1),
                "rows_request_sent_median": round(statistics.median(r[0] for r in requests), 1),
                "rows_answer_received_median": round(statistics.median(r[1] for r in requests), 1),
                "max": round(max(clicks), 1),
                "all": [round(t, 1) for t in clicks],
            }
            print(
                "confusion cell -> map highlighted:",
                results["confusion_click_to_map_ms"],
                flush=True,
            )
            pages = bench_gallery_pages(page, args.repeats)
            results["gallery_page_visible_ms"] = {
                "median": round(statistics.median(p["ms"] for p in pages), 1),
                "max": round(max(p["ms"] for p in pages), 1),
                "visible_thumbnails": pages[0]["visible"],
            }
            print(
                "gallery next page -> 200 items, visible thumbnails loaded:",
                results["gallery_page_visible_ms"],
                flush=True,
            )
            results["page_errors"] = watch.errors
            watch.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
