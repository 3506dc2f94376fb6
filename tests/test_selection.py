"""Selection specs: parsing (ASCII only, every mistake a UserError naming the form), the
canonical text and its round trip, compact rows, and exact rows resolved on a hand-made frame."""

from __future__ import annotations

import base64
import random
import zlib

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.metrics import OTHER
from pipelines.sample_table import sample_frame
from pipelines.selection import (
    MAX_BITMAP_ROWS,
    NeedsQuality,
    Selection,
    parse_selection,
    resolve,
    rows_spec,
    selection_argument,
    to_ranges,
)
from tests.workbench_runs import add_quality, make_run

# row:        0  1  2  3  4  5  6  7
LABELS = [0, 0, 1, 1, 2, 2, 0, 1]
PREDICTED = [0, 1, 1, 3, 2, 0, 0, 3]  # model output 3 ("wolf") is no dataset class
SPLITS = ["train", "held-out"] * 4


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def store(data_dir):
    return make_run(
        data_dir,
        "r",
        LABELS,
        PREDICTED,
        model_names=["cat", "dog", "fox", "wolf"],
        dataset_to_model=[0, 1, 2],
        model_split=SPLITS,
    )


@pytest.fixture
def frame(store, data_dir):
    add_quality(
        store,
        label_issue_score=[0.1, 0.8, 0.1, 0.7, 0.0, 0.9, 0.2, 0.3],
        is_label_issue=[False, True, False, True, False, True, False, False],
        suggested_label=[0, 1, 1, 0, 2, 0, 0, 1],
        neighbours=[[6], [2], [1], [7], [5], [4], [0], [3]],
        similarities=[[0.99], [0.9], [0.9], [0.97], [0.5], [0.5], [0.99], [0.97]],
        outlier_score=[0.1, 0.5, 0.2, 0.9, 0.3, 0.8, 0.1, 0.4],
    )
    return sample_frame(store, data_dir, corrections={"s-0003": 0, "s-0005": 2})


def rows(text, frame):
    return resolve(parse_selection(text), frame).tolist()


def test_the_grammar(frame):
    assert rows("", frame) == list(range(8))
    assert rows("true=1", frame) == [2, 3, 7]
    assert rows("pred=0", frame) == [0, 5, 6]
    assert rows("pred=other", frame) == [3, 7]
    assert rows("correct", frame) == [0, 2, 4, 6]
    assert rows("wrong", frame) == [1, 3, 5, 7]
    assert rows("split=held-out", frame) == [1, 3, 5, 7]
    assert rows("split=train", frame) == [0, 2, 4, 6]
    assert rows("loss>=1", frame) == [1, 3, 5, 7]  # the wrong ones: -log(0.1 / 3)
    assert rows("issues", frame) == [1, 3, 5]
    assert rows("dup>=0.98", frame) == [0, 6]
    assert rows("dup>=0.9", frame) == [0, 1, 2, 3, 6, 7]
    assert rows("outliers=2", frame) == [3, 5]
    assert rows("corrected", frame) == [3, 5]
    assert rows("rows=1-3,6", frame) == [1, 2, 3, 6]


def test_terms_are_anded_and_outliers_rank_within_the_rest(frame):
    assert rows("true=1;wrong", frame) == [3, 7]
    assert rows("true=1;pred=other;split=held-out", frame) == [3, 7]
    assert rows(" wrong ; issues ;rows=0-4", frame) == [1, 3]
    # the 2 least typical of class 1 (rows 2, 3, 7 score 0.2, 0.9, 0.4), not of the whole run
    assert rows("true=1;outliers=2", frame) == [3, 7]
    assert rows("true=2;correct", frame) == [4]


def test_canonical_text_and_description():
    selection = parse_selection("split=held-out;PRED=5; true = 3")
    assert selection == Selection(true=3, pred=5, split="held-out")
    assert selection.to_text() == "true=3;pred=5;split=held-out"
    names = [str(i) for i in range(10)]
    assert selection.describe(names) == "true 3 · predicted 5 · held-out"
    assert Selection().describe(names) == "all samples"
    assert parse_selection("pred=other;wrong;loss>=1.50").to_text() == "pred=other;wrong;loss>=1.5"
    assert parse_selection("loss>=2.0").to_text() == "loss>=2"
    assert parse_selection("rows=9,1-3,2-5,6").to_text() == "rows=1-6,9"
    full = parse_selection(
        "corrected;rows=4;outliers=50;dup>=0.98;issues;loss>=1.5;wrong;pred=other;true=0;split=train"
    )
    assert full.to_text() == (
        "true=0;pred=other;wrong;split=train;loss>=1.5;issues;dup>=0.98;outliers=50;corrected;rows=4"
    )
    assert full.describe(["cat"]) == (
        "true cat · predicted no dataset class · wrong · train · loss ≥ 1.5 · label issues · "
        "near-duplicates (similarity ≥ 0.98) · 50 least typical · corrected · 1 chosen sample"
    )


def random_selection(rng: random.Random) -> Selection:
    def maybe(value):
        return value if rng.random() < 0.5 else None

    rows = sorted(rng.sample(range(20000), rng.choice([0, 1, 5, 300, 4000])))
    return Selection(
        true=maybe(rng.randrange(100)),
        pred=maybe(rng.choice([OTHER, rng.randrange(100)])),
        correct=maybe(rng.random() < 0.5),
        split=maybe(rng.choice(["train", "held-out"])),
        loss_min=maybe(rng.choice([0.0, 1.5, rng.uniform(0, 20), 1e-7])),
        issues=rng.random() < 0.5,
        dup_min=maybe(rng.choice([1.0, 0.98, rng.uniform(0.01, 1.0)])),
        outliers=maybe(rng.randrange(1, 10000)),
        corrected=rng.random() < 0.5,
        rows=maybe(to_ranges(rows)),
    )


def test_round_trip():
    rng = random.Random(12)
    for _ in range(300):
        selection = random_selection(rng)
        text = selection.to_text()
        assert parse_selection(text) == selection, text
        assert parse_selection(text).to_text() == text


def test_rows_stay_short_for_thousands_of_scattered_rows():
    assert rows_spec([12, 1, 2, 3, 4, 5, 9, 3]) == "rows=1-5,9,12"
    assert rows_spec([]) == "rows="
    assert parse_selection("rows=").rows == ()
    # a lasso over a t-SNE map: 3,000 rows scattered over a 13,000-row run
    chosen = np.sort(np.random.default_rng(1).choice(13000, 3000, replace=False))
    spec = rows_spec(chosen)
    assert spec.startswith("rows=z:") and len(spec) < 2600, len(spec)
    listed = ",".join(str(r) for r in chosen)
    assert len(spec) < len(listed) / 4
    assert parse_selection(spec).rows == to_ranges(chosen)
    # contiguous blocks stay readable ranges
    assert rows_spec(range(100, 5000)) == "rows=100-4999"
    # a huge row number (a doctored link) is never turned into a bitmap
    far = Selection(rows=tuple((i, i) for i in range(0, 40, 2)) + ((10**12, 10**12),))
    assert parse_selection(far.to_text()) == far


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("true=３", "ASCII"),
        ("true=x", "index"),
        ("true=-1", "index"),
        ("pred=", "index"),
        ("loss>1", "loss>="),
        ("loss<1", "loss>="),
        ("true==3", "true=3"),
        ("loss=1", "loss>="),
        ("loss>=-1", "never negative"),
        ("loss>=nan", "number"),
        ("loss>=inf", "number"),
        ("loss>=1_0", "number"),
        ("loss>=١", "number"),
        ("dup>=1.5", "at most 1"),
        ("dup>=0", "above 0"),
        ("split=test", "train or held-out"),
        ("outliers=0", "at least 1"),
        ("outliers=5.5", "whole number"),
        ("rows=5-1", "backwards"),
        ("rows=1-x", "rows=1-5,9,12"),
        ("rows=¹", "ASCII"),
        ("rows=z:!!!", "damaged"),
        ("true=1;true=2", "keep one"),
        ("correct;wrong", "keep one"),
        ("colour=red", "true=N"),
        ("mislabelled", "true=N"),
    ],
)
def test_mistakes_name_the_fix(text, phrase):
    with pytest.raises(UserError, match=None) as caught:
        parse_selection(text)
    assert phrase in str(caught.value), str(caught.value)


def test_a_bitmap_that_unpacks_into_too_many_rows_is_refused():
    bomb = zlib.compress(b"\xff" * (MAX_BITMAP_ROWS // 8 + 100), 9)
    text = "rows=z:" + base64.urlsafe_b64encode(bomb).decode().rstrip("=")
    assert len(text) < 100_000
    with pytest.raises(UserError, match="more than"):
        parse_selection(text)


def test_rows_past_the_run_and_quality_terms_without_quality(store, data_dir, frame):
    with pytest.raises(UserError, match="another run"):
        rows("rows=3-8", frame)
    store.delete("quality_info")  # as if the quality stage had not run
    bare = sample_frame(store, data_dir, corrections={})
    for term in ("issues", "dup>=0.9", "outliers=3"):
        with pytest.raises(NeedsQuality, match="precompute command again"):
            rows(term, bare)
    assert rows("wrong;loss>=1", bare) == [1, 3, 5, 7]


def test_a_saved_name_or_a_spec():
    saved = {"confused": "true=1;pred=other", "my picks": "rows=1-3"}
    assert selection_argument("confused", saved) == Selection(true=1, pred=OTHER)
    assert selection_argument("my picks", saved).rows == ((1, 3),)
    assert selection_argument("wrong", saved) == Selection(correct=False)
    with pytest.raises(UserError, match="neither a saved selection \\(confused, my picks\\)"):
        selection_argument("confusd", saved)
