"""The architecture for papers: the light figure (pure), the SVG/PDF route and ``main.py figure``
through the real kaleido + Debian's Chromium, and the route's refusals.

Renders (marked ``browser``) skip when /usr/bin/chromium is missing, and fail instead with
LAYERSCOPE_REQUIRE_BROWSER=1 (as the browser tests do).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
import torch
import torchvision

import cli
from components import architecture as arch
from components.theme import FAMILY_TITLES, LIGHT
from dashboard import figure_export
from dashboard.app import create_app
from dashboard.panels import model_view
from pipelines.features import discover_layers
from tests import browser_helpers as bh
from tests.test_browser import write_described_only_run

SVG = "{http://www.w3.org/2000/svg}"
RESNET = "resnet50-pending"  # layers only, as a precompute leaves it after the model stage


@pytest.fixture(scope="module")
def resnet18_layers() -> list[Any]:
    model = torchvision.models.resnet18(weights=None).eval()
    return discover_layers(model, torch.zeros(1, 3, 64, 64))


def trace(figure: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in figure["data"] if t.get("name") == name)


def legend_names(figure: dict[str, Any]) -> list[str]:
    return [t["name"] for t in figure["data"] if t.get("showlegend")]


# ---- the light figure -------------------------------------------------------------------------


@pytest.mark.parametrize("collapsed", [True, False], ids=["collapsed", "expanded"])
def test_publication_figure_is_white_with_a_legend_and_shape_labels(resnet18_layers, collapsed):
    figure = arch.publication_figure(resnet18_layers, collapsed)
    go.Figure(figure)  # plotly accepts every key
    layout = figure["layout"]
    assert layout["paper_bgcolor"] == layout["plot_bgcolor"] == "#ffffff"
    assert layout["font"]["color"] == LIGHT.text
    assert layout["showlegend"] is True

    expanded = () if collapsed else arch.collapsible_groups(resnet18_layers)
    nodes = arch.diagram_nodes(resnet18_layers, expanded)
    labels = trace(figure, "labels")
    assert labels["text"] == [arch.shape_label(node.output_shape) for node in nodes]
    assert "64×16×16" in labels["text"] and labels["text"][-1] == "1000"
    names = legend_names(figure)
    assert {"input", "convolution", "pooling", "fully connected"} <= set(names)
    assert set(names) <= {*FAMILY_TITLES.values(), "skip connection"}
    if collapsed:
        # One box per ResNet block: 8 of them, drawn as a chain.
        assert len(nodes) == 15 and sum(node.kind == "block" for node in nodes) == 8
        assert "block (collapsed)" in names and "skip connection" not in names
    else:
        assert len(nodes) == len(resnet18_layers)
        assert "skip connection" in names and "block (collapsed)" not in names
    # Nothing of the page's interaction: no hover markers, selection ring or silhouettes.
    assert {t["name"] for t in figure["data"]}.isdisjoint({"layers", "selected"})
    assert "meta" not in layout and layout["hovermode"] is False
    # Sized to the diagram, every label inside the figure.
    assert 480 <= layout["width"] <= 2 * arch.PUBLICATION.fit_width and layout["height"] >= 150
    x0, x1 = layout["xaxis"]["range"]
    px_per_unit = (layout["width"] - layout["margin"]["l"] - layout["margin"]["r"]) / (x1 - x0)
    left, right = arch.text_extent(labels, arch.LABEL_SIZE, px_per_unit)
    assert x0 <= left and right <= x1


def test_labels_that_would_overlap_move_down_a_row(resnet18_layers):
    boxes = arch.place_nodes(arch.diagram_nodes(resnet18_layers, ()))
    texts = ["a" * 4] * len(boxes)
    assert set(arch.label_rows(boxes, texts, px_per_unit=48)) == {0}  # room for everyone
    rows = arch.label_rows(boxes, ["0" * 40] * len(boxes), px_per_unit=48)
    assert all(a != b for a, b in zip(rows, rows[1:], strict=False))  # neighbours alternate


def test_the_page_keeps_its_dark_interactive_diagram(resnet18_layers):
    figure = arch.architecture_figure(resnet18_layers)
    assert figure["layout"]["paper_bgcolor"] == "#303030"
    assert "width" not in figure["layout"] and "outlines" in figure["layout"]["meta"]
    assert trace(figure, "labels")["text"][-1] == "fc"
    assert "conv" in legend_names(figure)


# ---- the route and the command ----------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(small_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, run_id = small_run
    target = tmp_path_factory.mktemp("figure-data")
    shutil.copytree(source / "runs" / run_id, target / "runs" / run_id)
    write_described_only_run(target, RESNET)
    return target


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[Any]:
    app = create_app(data_dir)
    yield app.server.test_client()
    figure_export.renderer().close()


@pytest.fixture
def chromium() -> None:
    bh.require_browser(playwright=False)


def svg_texts(data: bytes) -> list[str]:
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]


@pytest.mark.browser
def test_the_route_serves_the_architecture_as_svg_and_pdf(client, small_run, chromium):
    run_id = small_run[1]
    response = client.get(f"/runs/{run_id}/figures/architecture.svg?v=1")
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == "image/svg+xml"
    assert response.headers["Content-Disposition"] == (
        f"attachment; filename={run_id}-architecture.svg"
    )
    texts = svg_texts(response.data)
    assert {"1×32×32", "16×32×32", "10", "convolution", "features", "classifier"} <= set(texts)
    assert re.search(rb"fill: ?rgb\(255, ?255, ?255\)", response.data)  # white paper

    response = client.get(f"/runs/{run_id}/figures/architecture.pdf")
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == "application/pdf"
    assert response.data.startswith(b"%PDF-")
    assert "architecture.pdf" in response.headers["Content-Disposition"]


@pytest.mark.browser
def test_collapsed_blocks_draw_each_resnet_block_as_one_box(client, chromium):
    collapsed = client.get(f"/runs/{RESNET}/figures/architecture.svg?blocks=collapsed")
    expanded = client.get(f"/runs/{RESNET}/figures/architecture.svg?blocks=expanded")
    assert collapsed.status_code == expanded.status_code == 200
    assert "architecture-collapsed.svg" in collapsed.headers["Content-Disposition"]
    short, full = svg_texts(collapsed.data), svg_texts(expanded.data)
    assert "block (collapsed)" in short and "block (collapsed)" not in full
    assert "skip connection" in full
    shapes = [text for text in full if re.fullmatch(r"\d+(×\d+)*", text)]
    assert len(shapes) > 100 > len([t for t in short if re.fullmatch(r"\d+(×\d+)*", t)])


@pytest.mark.parametrize(
    "path",
    [
        "/runs/..%2F..%2Fetc/figures/architecture.svg",
        "/runs/../../etc/figures/architecture.svg",
        "/runs/nope/figures/architecture.svg",
        "/runs/{run}/figures/architecture.png",
        "/runs/{run}/figures/architecture.svg.pdf",
        "/runs/{run}/figures/architecture.svg?blocks=..%2Fmanifest",
        "/runs/{run}/figures/..%2Fmanifest.json",
        "/runs/{run}/figures/embedding.svg",
    ],
)
def test_the_route_refuses_anything_else(client, small_run, path):
    response = client.get(path.format(run=small_run[1]))
    assert response.status_code == 404
    assert response.mimetype == "text/plain"
    assert b"Traceback" not in response.data


def test_without_a_browser_the_route_says_so_and_the_page_disables_the_buttons(
    client, small_run, monkeypatch
):
    monkeypatch.setenv(figure_export.BROWSER_ENV, "/nonexistent/chromium")
    response = client.get(f"/runs/{small_run[1]}/figures/architecture.pdf")
    assert response.status_code == 503
    assert response.mimetype == "text/plain"
    text = response.data.decode()
    assert "\n" not in text.strip() and "apt-get install chromium" in text
    assert client.get("/figures/warm").status_code == 503

    with client.application.app_context():
        *links, svg_off, pdf_off, _blocks_off, note = model_view.export_links(
            small_run[1], None, True
        )
    assert svg_off and pdf_off and note == text


def test_the_page_links_name_the_run_and_the_blocks_choice(client, small_run):
    with client.application.app_context():
        svg, pdf, svg_name, _, svg_off, _, blocks_off, note = model_view.export_links(
            RESNET, None, True
        )
        small = model_view.export_links(small_run[1], None, True)
    if figure_export.export_problem():
        pytest.skip("no browser: the links are disabled (tested above)")
    assert svg.startswith(f"/runs/{RESNET}/figures/architecture.svg?blocks=collapsed&v=")
    assert pdf.startswith(f"/runs/{RESNET}/figures/architecture.pdf?blocks=collapsed&")
    assert svg_name == f"{RESNET}-architecture-collapsed.svg"
    assert not svg_off and not blocks_off and note == ""
    # smallcnn has no blocks: the choice is off and changes nothing.
    assert "blocks=" not in small[0] and small[6] is True


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.browser
def test_the_renderer_replaces_a_browser_that_died_and_closes_when_idle(chromium):
    figure = {"data": [{"type": "bar", "y": [1, 3, 2]}], "layout": {"width": 300, "height": 200}}
    renderer = figure_export.Renderer(idle_close_s=1.0)
    try:
        assert renderer.render(figure, "svg").startswith(b"<svg")
        wrapper = renderer._kaleido.subprocess.pid  # choreographer's wrapper, Chromium below it
        os.kill(children(wrapper)[0], signal.SIGKILL)
        assert renderer.render(figure, "pdf").startswith(b"%PDF-")  # a fresh browser
        assert renderer._kaleido.subprocess.pid != wrapper
        deadline = time.monotonic() + 10
        while renderer.running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not renderer.running
        assert renderer.render(figure, "svg").startswith(b"<svg")  # and starts again
    finally:
        renderer.close()
    assert not renderer.running


@pytest.mark.browser
def test_main_py_figure_writes_the_file_and_refuses_mistakes(
    data_dir, small_run, tmp_path, capsys, chromium
):
    data = ["--data-dir", str(data_dir)]
    out = tmp_path / "arch.svg"
    assert cli.main(["figure", "--run", RESNET, "--out", str(out), "--collapsed", *data]) == 0
    assert "block (collapsed)" in svg_texts(out.read_bytes())
    pdf = tmp_path / "arch.pdf"
    assert cli.main(["figure", "--run", small_run[1], "--out", str(pdf), *data]) == 0
    assert pdf.read_bytes().startswith(b"%PDF-")
    capsys.readouterr()

    mistakes = [
        (["--run", "nope", "--out", str(out)], "unknown run 'nope'"),
        (["--run", RESNET, "--out", str(tmp_path / "arch.png")], "must end in .svg or .pdf"),
        (["--run", RESNET, "--out", str(tmp_path / "no" / "arch.svg")], "does not exist"),
        (["--run", RESNET, "--out", str(tmp_path)], "must end in .svg or .pdf"),
    ]
    for arguments, message in mistakes:
        code = cli.main(["figure", *arguments, *data])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and message in err, (arguments, err)
        assert "\n" not in err
