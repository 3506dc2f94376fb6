"""The workbench's callbacks called as plain functions on a hand-made run whose every value the
test chose (tests/workbench_runs.py): confusion and metrics, the selection's rows, the filters,
relabelling with undo, saved selections and downloads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dash import no_update

from components.packing import unpack
from dashboard import ids
from dashboard.app import create_app
from dashboard.context import current
from dashboard.panels import embedding, gallery, inspector, workbench
from dashboard.state import COLOR_OPTIONS
from tests.test_dashboard_callbacks import apply_patch, call, text_of
from tests.workbench_runs import add_quality, make_run

RUN = "hand"
# Eight samples of classes cat, dog, fox; rows 2 and 5 are wrong, row 6 is a likely label issue
# (suggested: fox), rows 0 and 3 are near-duplicates, rows 0-3 were the model's training rows.
LABELS = [0, 0, 1, 1, 2, 2, 0, 1]
PREDICTED = [0, 0, 0, 1, 2, 1, 0, 1]
SPLIT = ["train"] * 4 + ["held-out"] * 4


@pytest.fixture
def app(tmp_path: Path) -> Any:
    store = make_run(tmp_path, RUN, LABELS, PREDICTED, model_split=SPLIT)
    n = len(LABELS)
    neighbours = [[(i + 1) % n, (i + 2) % n] for i in range(n)]
    neighbours[0], neighbours[3] = [3, 1], [0, 2]
    similarities = [[0.5, 0.4]] * n
    similarities[0], similarities[3] = [0.999, 0.4], [0.999, 0.4]
    add_quality(
        store,
        label_issue_score=[0.1, 0.1, 0.3, 0.1, 0.1, 0.6, 0.95, 0.2],
        is_label_issue=[False] * 6 + [True, False],
        suggested_label=[0, 0, 0, 1, 2, 1, 2, 1],
        neighbours=neighbours,
        similarities=similarities,
        outlier_score=[0.1, 0.2, 0.3, 0.1, 0.9, 0.2, 0.4, 0.2],
    )
    return create_app(tmp_path)


def selection(sel: str = "", pinned: int | None = None) -> dict[str, Any]:
    return {"run": RUN, "layer": None, "sel": sel, "pinned": pinned, "upload": None}


def rows_of(app: Any, sel: str, sort: str = "row") -> dict[str, Any]:
    payload, _text = call(
        app, gallery.resolve_selection, {"run": RUN, "sel": sel}, None, None, sort, 0.98
    )
    return payload


def test_confusion_and_metrics_follow_the_split(app):
    figure, note = call(app, workbench.render_confusion, RUN, None, "held-out", "counts", "class")
    assert note is None
    # Held-out rows 4..7: fox→fox, fox→dog, cat→cat, dog→dog.
    assert figure["data"][0]["meta"]["counts"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    figure, _ = call(app, workbench.render_confusion, RUN, None, "all", "counts", "class")
    assert np.array(figure["data"][0]["meta"]["counts"]).sum() == len(LABELS)
    summary, table = call(app, workbench.render_metrics, RUN, None, "held-out")
    text = text_of(table)
    # fox: precision 1/1, recall 1/2 -> F1 66.7%, the worst, listed first.
    assert text.index("fox") < text.index("cat") and "66.7%" in text
    assert "held-out" in text_of(summary)


def test_a_confusion_cell_resolves_to_its_rows_and_the_gallery_marks(app):
    payload = rows_of(app, "true=2;pred=1")
    assert unpack(payload["rows"]).tolist() == [5] and payload["count"] == 1 and not payload["all"]
    assert "fox" in payload["description"] and "dog" in payload["description"]
    everything = rows_of(app, "")
    assert everything["all"] and unpack(everything["rows"]).tolist() == list(range(len(LABELS)))
    assert unpack(everything["issue"]).tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert unpack(everything["suggested"])[6] == 2
    by_score = rows_of(app, "", sort="label_issue_score")
    assert unpack(by_score["rows"])[:2].tolist() == [6, 5]
    assert by_score["sortValue"][0] == pytest.approx(0.95)
    assert unpack(rows_of(app, "dup>=0.99")["rows"]).tolist() == [0, 3]
    bad, text = call(
        app, gallery.resolve_selection, {"run": RUN, "sel": "true=３"}, None, None, "row", 0.98
    )
    assert bad["error"] and bad["rows"] == [] and "ASCII" in text_of(text)


def selection_route(app: Any, **query: Any) -> Any:
    encoded = {name: json.dumps(value) for name, value in query.items()}
    return app.server.test_client().get(gallery.SELECTION_URL, query_string=encoded)


def test_the_selection_route_answers_rows_and_the_line(app):
    answer = selection_route(app, key={"run": RUN, "sel": "true=2;pred=1"}, sort="row").get_json()
    assert unpack(answer["rows"]["rows"]).tolist() == [5] and "1 of 8 samples" in answer["text"]
    ordered = selection_route(app, key={"run": RUN, "sel": ""}, sort="label_issue_score")
    assert unpack(ordered.get_json()["rows"]["rows"])[:2].tolist() == [6, 5]
    # What the user can fix is the line above the gallery, as the callback said it.
    bad = selection_route(app, key={"run": RUN, "sel": "true=３"}).get_json()
    assert bad["rows"]["error"] and "ASCII" in bad["text"]["props"]["children"]
    gone = selection_route(app, key={"run": "no-such-run", "sel": ""}).get_json()
    assert "is not in" in gone["rows"]["error"]
    assert selection_route(app, key=None).get_json() == {"rows": None, "text": ""}


@pytest.mark.parametrize(
    "query",
    [
        {"key": "{"},
        {"key": json.dumps({"run": RUN, "sel": 5})},
        {"key": json.dumps({"run": RUN}), "sort": json.dumps("nope")},
        {"key": json.dumps({"run": RUN}), "threshold": json.dumps("high")},
    ],
)
def test_the_selection_route_refuses_malformed_queries_with_one_line(app, query):
    response = app.server.test_client().get(gallery.SELECTION_URL, query_string=query)
    assert response.status_code == 400 and response.mimetype == "text/plain"
    assert len(response.data.decode().splitlines()) == 1 and b"Traceback" not in response.data


def test_filters_show_the_selection_and_edit_it(app):
    values = call(
        app,
        gallery.filters_from_selection,
        {"run": RUN, "sel": "true=2;pred=other;wrong"},
        None,
        None,
        None,
        "any",
        "any",
        None,
    )
    # The class menus arrive with their values (a value before its options would be dropped).
    assert [o["value"] for o in values[1]] == [0, 1, 2, "other"]
    assert values[2:5] == (2, "other", "wrong")
    patch = call(
        app, gallery.filters_to_selection, 2, 1, "wrong", "held-out", 0.5, selection("issues")
    )
    updated = apply_patch(selection("issues"), patch)
    assert updated["sel"] == "true=2;pred=1;wrong;split=held-out;loss>=0.5;issues"
    # Nothing changed: no update, so the filters and the selection cannot chase each other.
    same = call(app, gallery.filters_to_selection, 2, 1, "wrong", "held-out", 0.5, updated)
    assert same is no_update
    # A negative or non-finite loss is no filter.
    cleared = call(
        app, gallery.filters_to_selection, None, None, "any", "any", -3, selection("true=1")
    )
    assert apply_patch(selection("true=1"), cleared)["sel"] == ""


def relabel(app: Any, action: str, label: int | None, chosen: dict[str, Any]) -> tuple:
    """Click a relabel button (``action``) with ``label`` in the class menu."""
    return call(
        app,
        gallery.relabel_clicked,
        *[None] * 5,
        label,
        chosen,
        0.98,
        triggered=f"{action}.n_clicks",
    )


def test_relabel_undo_and_the_corrected_count(app, tmp_path):
    state, status = relabel(app, ids.RELABEL_PINNED, 2, selection(pinned=6))
    assert state["count"] == 1 and "row 6 relabelled as fox" in text_of(status)
    state, status = relabel(app, ids.RELABEL_SELECTION, 1, selection("true=0"))
    assert state["count"] == 3 and "3 samples relabelled as dog" in text_of(status)
    assert unpack(rows_of(app, "corrected")["rows"]).tolist() == [0, 1, 6]
    assert unpack(rows_of(app, "")["corrected"])[:2].tolist() == [1, 1]
    state, status = relabel(app, ids.RELABEL_UNDO, None, selection())
    assert state["count"] == 1 and "undone" in text_of(status)
    # Accepting suggestions touches only the flagged rows of the selection.
    state, status = relabel(app, ids.RELABEL_ACCEPT, None, selection(""))
    assert "accepted 1 suggestions" in text_of(status)
    # Mistakes are a line in the page, never a write; no selection is not "relabel everything".
    _, status = relabel(app, ids.RELABEL_SELECTION, 1, selection(""))
    assert "select some samples first" in text_of(status)
    _, status = relabel(app, ids.RELABEL_PINNED, None, selection(pinned=6))
    assert "choose the new label" in text_of(status)
    # Kept beside the run, never inside it.
    assert (tmp_path / "annotations" / RUN / "corrections.jsonl").is_file()
    assert not list((tmp_path / "runs" / RUN).glob("*correct*"))


def test_saved_selections_and_downloads(app):
    options, message = call(app, gallery.save_selection, 1, "foxes", selection("true=2"))
    assert options == [{"label": "foxes", "value": "true=2"}] and "foxes" in message
    download, _ = call(
        app,
        gallery.download,
        1,
        None,
        None,
        None,
        None,
        selection("true=2"),
        "held-out",
        0.98,
        triggered=f"{ids.EXPORT_SELECTION_CSV}.n_clicks",
    )
    frame = pd.read_csv(io.BytesIO(_content(download)))
    assert frame["uid"].tolist() == ["s-0004", "s-0005"]
    download, _ = call(
        app,
        gallery.download,
        1,
        None,
        None,
        None,
        None,
        selection(""),
        "held-out",
        0.98,
        triggered=f"{ids.EXPORT_SELECTION_PARQUET}.n_clicks",
    )
    assert len(pd.read_parquet(io.BytesIO(_content(download)))) == len(LABELS)
    download, _ = call(
        app,
        gallery.download,
        1,
        None,
        None,
        None,
        None,
        selection(""),
        "held-out",
        0.98,
        triggered=f"{ids.EXPORT_CONFUSION}.n_clicks",
    )
    assert b"fox" in _content(download) and download["filename"].endswith("confusion-held-out.csv")


def _content(download: dict[str, Any]) -> bytes:
    import base64

    return (
        base64.b64decode(download["content"])
        if download.get("base64")
        else download["content"].encode()
    )


def test_colour_by_label_issue_and_split_and_the_inspector_names_issues(app):
    run = call(app, lambda: current().catalog.open(RUN))
    values = embedding.row_values(run, len(LABELS))
    assert values.label_issue is not None and list(values.split[:4]) == ["train"] * 4
    assert {"split", "loss", "label_issue"} <= {o["value"] for o in COLOR_OPTIONS}
    table, info = call(app, inspector.load_table, RUN, None, None)
    issues = unpack(table["issue"])
    assert table["issueNames"][issues[6]] == "fox" and issues[0] == -1 and info["hasQuality"]
