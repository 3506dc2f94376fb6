"""The workbench's sample frame: exact cells on hand-made runs, NA where a stage has not run, and
one real run's frame agreeing with what its precompute recorded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.annotations import corrections_log
from pipelines.errors import UserError
from pipelines.quality import duplicate_groups
from pipelines.sample_table import COLUMNS, sample_frame, strongest_link, with_corrections
from pipelines.store import RunStore, runs_dir
from tests.workbench_runs import add_quality, make_run

LABELS = [0, 1, 2, 0]
PREDICTED = [0, 2, 2, 1]


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def quality_of(store):
    return add_quality(
        store,
        label_issue_score=[0.1, 0.9, 0.2, 0.3],
        is_label_issue=[False, True, False, False],
        suggested_label=[0, 2, 2, -1],
        neighbours=[[1, 2], [0, 3], [3, 0], [2, 1]],
        similarities=[[0.9995, 0.4], [0.9995, 0.3], [0.6, 0.4], [0.6, 0.3]],
        outlier_score=[0.1, 0.2, 0.3, 0.4],
    )


def test_every_column_exactly(data_dir):
    store = make_run(data_dir, "r", LABELS, PREDICTED, model_split=["train", "held-out"] * 2)
    quality_of(store)
    corrections_log(data_dir, "r").set_label(["s-0001", "s-0003"], 2, "test")
    frame = sample_frame(store, data_dir)

    assert list(frame.columns) == list(COLUMNS)
    assert frame["row"].tolist() == [0, 1, 2, 3]
    assert frame["uid"].tolist() == ["s-0000", "s-0001", "s-0002", "s-0003"]
    assert frame["path_or_index"].tolist() == [100, 101, 102, 103]  # in-memory: dataset index
    assert frame["split"].tolist() == ["train", "held-out", "train", "held-out"]
    assert frame["true_index"].tolist() == LABELS
    assert frame["true_label"].tolist() == ["cat", "dog", "fox", "cat"]
    assert frame["predicted_index"].tolist() == PREDICTED
    assert frame["predicted_label"].tolist() == ["cat", "fox", "fox", "dog"]
    assert frame["correct"].tolist() == [True, False, True, False]
    np.testing.assert_allclose(frame["loss"], -np.log([0.9, 0.05, 0.9, 0.05]), rtol=1e-6)
    np.testing.assert_allclose(frame["label_issue_score"], [0.1, 0.9, 0.2, 0.3], rtol=1e-6)
    assert frame["is_label_issue"].tolist() == [False, True, False, False]
    assert frame["suggested_index"].tolist() == [0, 2, 2, pd.NA]
    assert frame["suggested_label"].isna().tolist() == [False, False, False, True]
    assert frame["suggested_label"].iloc[:3].tolist() == ["cat", "fox", "fox"]
    assert frame["corrected_index"].tolist() == [pd.NA, 2, pd.NA, 2]
    assert frame["corrected_label"].fillna("-").tolist() == ["-", "fox", "-", "fox"]
    # rows 0 and 1 are linked at 0.9995, rows 2 and 3 at 0.6: one group at the default 0.999
    assert frame["duplicate_group"].tolist() == [0, 0, -1, -1]
    np.testing.assert_allclose(frame["duplicate_score"], [0.9995, 0.9995, 0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(frame["outlier_score"], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)

    assert sample_frame(store, data_dir, duplicate_threshold=0.5)["duplicate_group"].tolist() == [
        0,
        0,
        1,
        1,
    ]


def test_quality_and_predictions_not_computed_yet_are_na(data_dir):
    store = make_run(data_dir, "r", LABELS, None)
    frame = sample_frame(store, data_dir)
    assert len(frame) == 4 and list(frame.columns) == list(COLUMNS)
    for column in COLUMNS[7:]:
        assert frame[column].isna().all(), column
    assert frame["true_label"].tolist() == ["cat", "dog", "fox", "cat"]


def test_a_prediction_outside_the_dataset_keeps_its_model_name(data_dir):
    # The model has a fourth output "wolf" no dataset class maps to, and the dataset's "fox" is
    # not among the model's outputs (mapped to -1): its correctness and loss are unknown.
    store = make_run(
        data_dir,
        "r",
        [0, 1, 2, 0],
        [3, 1, 0, 0],
        model_names=["cat", "dog", "bird", "wolf"],
        dataset_to_model=[0, 1, -1],
    )
    frame = sample_frame(store, data_dir)
    assert frame["predicted_index"].tolist() == [-1, 1, 0, 0]
    assert frame["predicted_model_index"].tolist() == [3, 1, 0, 0]
    assert frame["predicted_label"].tolist() == ["wolf", "dog", "cat", "cat"]
    assert frame["correct"].tolist() == [False, True, pd.NA, True]
    assert np.isnan(frame["loss"].iloc[2]) and not np.isnan(frame["loss"].iloc[0])


def test_file_datasets_give_absolute_paths(data_dir, tmp_path):
    folder = tmp_path / "pets"
    store = make_run(
        data_dir, "f", [0, 1], [0, 1], spec=f"folder:{folder}", sources=["cat/a.png", "dog/b.jpg"]
    )
    frame = sample_frame(store, data_dir)
    assert frame["path_or_index"].tolist() == [
        str(folder.resolve() / "cat/a.png"),
        str(folder.resolve() / "dog/b.jpg"),
    ]
    store = make_run(data_dir, "i", [0], [0], spec="imagenette", sources=["val/n01440764/x.JPEG"])
    (path,) = sample_frame(store, data_dir)["path_or_index"].tolist()
    assert path == str(
        (data_dir / "datasets/imagenette/imagenette2-160/val/n01440764/x.JPEG").resolve()
    )


def test_with_corrections_leaves_the_given_frame_alone(data_dir):
    store = make_run(data_dir, "r", LABELS, PREDICTED)
    frame = sample_frame(store, data_dir, corrections={})
    corrected = with_corrections(frame, {"s-0002": 0, "not-in-run": 1}, ["cat", "dog", "fox"])
    assert frame["corrected_index"].isna().all()
    assert corrected["corrected_index"].tolist() == [pd.NA, pd.NA, 0, pd.NA]
    assert corrected["corrected_label"].iloc[2] == "cat"


def test_quality_of_another_size_is_refused(data_dir):
    store = make_run(data_dir, "r", LABELS, PREDICTED)
    quality_of(store)
    bigger = make_run(data_dir, "big", LABELS + [1], PREDICTED + [1])
    with pytest.raises(UserError, match="precompute command again"):
        sample_frame(bigger, data_dir, quality=quality_of(store))


def test_strongest_link_matches_group_membership_at_every_threshold():
    # An asymmetric (approximate-index-like) neighbour list: row 5 is listed by row 0 only.
    rng = np.random.default_rng(0)
    n, k = 60, 3
    neighbours = rng.integers(0, n, size=(n, k))
    neighbours[neighbours == np.arange(n)[:, None]] = -1
    similarities = rng.uniform(0.5, 1.0, size=(n, k)).astype(np.float32)
    from pipelines.quality import QualityInfo, SampleQuality

    quality = SampleQuality(
        label_issue_score=np.zeros(n, np.float32),
        is_label_issue=np.zeros(n, bool),
        suggested_label=np.zeros(n, np.int64),
        neighbours=neighbours,
        similarities=similarities,
        outlier_score=np.zeros(n, np.float32),
        info=QualityInfo("x", "model", None, "fc", "exact", k, 0),
    )
    score = strongest_link(quality)
    for threshold in (0.6, 0.8, 0.9, 0.95, 0.99):
        groups = duplicate_groups(neighbours, similarities, threshold)
        assert ((score >= np.float32(threshold)) == (groups >= 0)).all(), threshold


def test_a_run_without_its_sample_table_says_what_to_do(data_dir):
    store = make_run(data_dir, "r", LABELS, PREDICTED)
    store.delete("samples")
    with pytest.raises(UserError, match="precompute command again"):
        sample_frame(store, data_dir)


def test_the_real_runs_frame_agrees_with_its_precompute(small_run):
    data_dir, run_id = small_run
    store = RunStore(runs_dir(data_dir) / run_id)
    frame = sample_frame(store, data_dir)
    manifest = store.read_manifest()
    assert len(frame) == manifest["dataset"]["num_samples"] == 300
    assert frame["uid"].is_unique and frame["row"].tolist() == list(range(300))
    assert frame["path_or_index"].between(0, 1796).all()
    assert (frame["true_label"] == frame["true_index"].astype(str)).all()  # digits: "0".."9"
    held_out = frame[frame["split"] == "held-out"]
    assert held_out["correct"].mean() == pytest.approx(
        manifest["accuracy_by_split"]["held-out"]["accuracy"]
    )
    assert (frame["correct"] == (frame["true_index"] == frame["predicted_index"])).all()
