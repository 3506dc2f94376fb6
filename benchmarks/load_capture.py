"""What the page really sends, action by action: recorded in headless Chromium for the load
benchmark (bench_load.py), which replays it from many simulated users (locustfile.py).

Each action (page load, hover, pin, a top-10 bar, the class picker, a layer switch, the
gallery's next page) is done once in the real page; every request it makes to the server is
kept in order with its body. ``retarget`` then points a recorded request at another sample,
class or layer, so the replaying users do not all ask for the same cached answer.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from tests import browser_helpers as bh

ACTIONS = ("load", "hover", "pin", "top10", "class_picker", "layer", "gallery")
# Requests the page repeats on a timer (the run list, an unfinished run's status): their own
# kind, whatever the user was doing when they fired.
POLL = "poll"
SCRIPTS = "scripts"  # the JS/CSS bundles: fetched once per browser, then cached

# /runs/<run>/<what>/<row>.png with <what>: thumb | explain/<m> | explain-class/<c>/<m> |
# activations/<layer>
IMAGE_PATH = re.compile(
    r"^/runs/(?P<run>[^/]+)/(?P<what>thumb|explain/[^/]+|explain-class/(?P<cls>\d+)/[^/]+"
    r"|activations/(?P<layer>[^/]+))/(?P<row>\d+)\.png"
)
# The map's data for a view key (dashboard/panels/embedding.py VIEW_URL): a layer switch; and a
# selection's rows (gallery.py SELECTION_URL): a workbench click.
VIEW_PATH = "/maps/view"
SELECTION_PATH = "/selections/rows"


def request_kind(path: str, body: dict[str, Any] | None) -> str:
    """A short name for what a request is, the unit the benchmark reports p95 for."""
    if body is not None:
        outputs = body.get("outputs")
        first = outputs[0] if isinstance(outputs, list) else outputs
        return f"callback {first['id']}" if isinstance(first, dict) else "callback"
    image = IMAGE_PATH.match(path)
    if image:
        what = image.group("what").split("/")[0]
        return {
            "thumb": "image thumbnail",
            "explain": "image explanation (stored)",
            "explain-class": "image explanation (class, on demand)",
            "activations": "image activation grid",
        }[what]
    if path.startswith(VIEW_PATH):
        return "map view"
    if path.startswith(SELECTION_PATH):
        return "selection rows"
    if path.startswith("/_dash-component-suites/") or path.startswith("/assets/"):
        return "page scripts"
    if path in ("/", "") or path.startswith("/?"):
        return "page index"
    return "page " + path.split("?")[0].strip("/")


def is_poll(body: dict[str, Any] | None) -> bool:
    return body is not None and any(
        item.get("property") == "n_intervals" for item in body.get("inputs") or []
    )


def needs_channel_maps(path: str) -> bool:
    """A picture the page asks for only when its layer has channel maps (a grid, or Grad-CAM
    weighed at the layer); for a dense layer the page draws the values in the figure."""
    image = IMAGE_PATH.match(path)
    return bool(image and (image.group("layer") is not None or "layer=" in path))


def retarget(
    path: str, body: dict[str, Any] | None, row: int, cls: int, layer: str
) -> tuple[str, dict[str, Any] | None]:
    """The same request for sample ``row``, class ``cls`` and layer ``layer``."""
    image = IMAGE_PATH.match(path)
    if image:
        start, end = image.span("row")
        path = path[:start] + str(row) + path[end:]
        if image.group("cls") is not None:
            start, end = image.span("cls")
            path = path[:start] + str(cls) + path[end:]
        if image.group("layer") is not None:
            start, end = image.span("layer")
            path = path[:start] + quote(layer, safe="") + path[end:]
        path = re.sub(r"([?&]layer=)[^&]*", lambda m: m.group(1) + quote(layer, safe=""), path)
    if path.startswith(VIEW_PATH + "?"):
        query = dict(parse_qsl(urlsplit(path).query))
        query["key"] = json.dumps(_retarget_value(json.loads(query["key"]), row, cls, layer))
        path = VIEW_PATH + "?" + urlencode(query)
    if body is not None:
        body = json.loads(json.dumps(body))
        for item in body.get("inputs") or []:
            item["value"] = _retarget_value(item.get("value"), row, cls, layer)
    return path, body


def _retarget_value(value: Any, row: int, cls: int, layer: str) -> Any:
    """Inside a callback input: the sample (``row``/``pinned``), class (``cls``) and layer
    (``layer``) keys of the stores the page keys its requests by."""
    if not isinstance(value, dict):
        return value
    changed = dict(value)
    for key in ("row", "pinned"):
        if isinstance(changed.get(key), int) and not isinstance(changed.get(key), bool):
            changed[key] = row
    if isinstance(changed.get("cls"), int):
        changed["cls"] = cls
        changed["name"] = str(cls)
    if isinstance(changed.get("layer"), str):
        changed["layer"] = layer
    return changed


class Recorder:
    """Every request the page makes to the server, tagged with the action under way."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.action = "load"
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: Any) -> None:
        url = urlsplit(request.url)
        if f"{url.scheme}://{url.netloc}" != self.base_url:
            return
        path = url.path + (f"?{url.query}" if url.query else "")
        body = None
        if request.method == "POST":
            try:
                body = json.loads(request.post_data or "")
            except ValueError:
                return  # an upload, not part of the mix
            if "cacheKey=" in path:
                return  # a background job's poll: the replay polls by itself
        action = POLL if is_poll(body) else self.action
        if request_kind(path, body) == "page scripts":
            action = SCRIPTS
        self.requests.append(
            {"action": action, "method": request.method, "path": path, "body": body}
        )


def settle(page: Any, seconds: float = 2.0) -> None:
    """Let an action's requests (and those they trigger) go out."""
    page.wait_for_timeout(200)
    try:
        page.wait_for_load_state("networkidle", timeout=seconds * 1000)
    except Exception:  # noqa: BLE001 - a poll kept the network busy: the time is enough
        pass
    time.sleep(0.5)


def capture(base_url: str, run_id: str, out: Path) -> dict[str, Any]:
    """Do each action once in Chromium on ``run_id``; write and return the recording:
    {"run": id, "pinned": row, "cls": class, "layer": layer, "requests": [...]}."""
    recorder = Recorder(base_url)
    with bh.chromium() as browser:
        watch = bh.PageWatch(browser, bh.LARGE)
        page = watch.page
        page.on("request", recorder)
        try:
            page.goto(f"{base_url}/?run={run_id}")
            bh.wait_for_graph(
                page,
                "embedding-graph",
                "gd => gd.data.length > 2 && gd.layout.meta && gd.layout.meta.n > 0",
                timeout=120_000,
            )
            page.wait_for_function(
                "() => document.getElementById('inspector-hint').textContent.startsWith('hover a point')",
                timeout=120_000,
            )
            settle(page, 5)

            recorder.action = "hover"
            point = bh.isolated_point(page, "embedding-graph")
            page.mouse.move(point["x"], point["y"])
            settle(page)

            recorder.action = "pin"
            page.mouse.click(point["x"], point["y"])
            page.wait_for_function(
                "() => document.getElementById('inspector-hint').textContent.includes('pinned')"
            )
            settle(page)

            recorder.action = "top10"
            page.locator("#inspector-top10 button.ls-bar").nth(2).click()
            settle(page)

            recorder.action = "class_picker"
            # A class no bar was clicked for (a class explained already is answered from the
            # page's own cache, with no request).
            name = page.locator("#inspector-top10 button.ls-bar").nth(5).get_attribute("data-name")
            for _ in range(4):  # the picker can be reset by its options arriving late
                page.locator("#explain-class").click()
                page.keyboard.type(name or "")
                page.keyboard.press("Enter")
                settle(page)
                if name and name in page.locator("#explain-class").inner_text():
                    break

            recorder.action = "layer"
            layer = second_layer(page)
            box = layer_position(page, layer)
            page.mouse.click(box["x"], box["y"])
            page.wait_for_function(
                "(layer) => document.getElementById('model-info').textContent.startsWith(layer)",
                arg=layer,
            )
            settle(page)

            recorder.action = "gallery"
            bh.scroll_to(page, "gallery-card")
            page.click("#gallery-next")
            settle(page)
        finally:
            watch.close()
    recording = {"run": run_id, "requests": recorder.requests}
    out.write_text(json.dumps(recording, indent=1))
    return recording


def second_layer(page: Any) -> str:
    """A layer other than the one shown (the click must change the map)."""
    return bh.graph_eval(
        page,
        "model-graph",
        """gd => {
          const t = gd.data.find(t => t.name === 'layers');
          const shown = document.getElementById('model-info').textContent;
          return t.customdata.map(c => c[0]).find(id => id && !shown.startsWith(id));
        }""",
    )


def layer_position(page: Any, layer_id: str) -> dict[str, float]:
    bh.scroll_to(page, "model-graph")
    return bh.graph_eval(
        page,
        "model-graph",
        f"""gd => {{
          const t = gd.data.find(t => t.name === 'layers');
          const i = t.customdata.findIndex(c => c[0] === {layer_id!r});
          const L = gd._fullLayout, b = gd.getBoundingClientRect();
          return {{x: b.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), y: b.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])}};
        }}""",
    )
