"""Export: the table renderers' exact bytes, CSV and Parquet round trips, and ``main.py export``
end to end (selections, saved names, corrections) with its user errors."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cli import main
from pipelines.annotations import corrections_log, saved_selections
from pipelines.export import (
    confusion_csv,
    confusion_table,
    corrections_csv,
    export_bytes,
    frame_confusion,
    metrics_csv,
    metrics_table,
)
from pipelines.metrics import per_class_metrics
from pipelines.sample_table import COLUMNS, sample_frame
from pipelines.selection import parse_selection, resolve
from pipelines.store import RunStore, runs_dir
from tests.conftest import ROOT
from tests.test_cli_errors import assert_user_error, run_cli
from tests.workbench_runs import add_quality, make_run

CLASSES = ["cat", "dog", "fox"]
LABELS = [0, 0, 1, 1, 2, 2]
PREDICTED = [0, 1, 1, 3, 2, 0]  # output 3 ("wolf") is no dataset class


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def store(data_dir):
    store = make_run(
        data_dir,
        "r",
        LABELS,
        PREDICTED,
        model_names=[*CLASSES, "wolf"],
        model_split=["train", "held-out"] * 3,
        spec=f"folder:{data_dir.parent / 'pets'}",
        sources=[f"{CLASSES[label]}/{i}.png" for i, label in enumerate(LABELS)],
    )
    add_quality(
        store,
        label_issue_score=[0.1, 0.8, 0.1, 0.7, 0.0, 0.9],
        is_label_issue=[False, True, False, True, False, True],
        suggested_label=[0, 1, 1, -1, 2, 0],
        neighbours=[[1], [0], [3], [2], [5], [4]],
        similarities=[[0.99], [0.99], [0.5], [0.5], [0.7], [0.7]],
        outlier_score=[0.1, 0.5, 0.2, 0.9, 0.3, 0.8],
    )
    corrections_log(data_dir, "r").set_label(["s-0001", "s-0005"], 2, "test")
    return store


@pytest.fixture
def frame(store, data_dir):
    return sample_frame(store, data_dir)


def test_parquet_round_trip_keeps_rows_columns_and_types(frame):
    back = pd.read_parquet(io.BytesIO(export_bytes(frame, "parquet")))
    pd.testing.assert_frame_equal(back, frame)


def test_csv_round_trip_keeps_rows_columns_and_values(frame):
    text = export_bytes(frame, "csv").decode()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == list(COLUMNS) and len(back) == len(frame)
    for column in COLUMNS:
        if frame[column].dtype.kind == "f":
            np.testing.assert_allclose(back[column], frame[column], rtol=1e-6)
        else:
            expected = frame[column].astype(object).where(frame[column].notna(), None).tolist()
            got = back[column].astype(object).where(back[column].notna(), None).tolist()
            assert got == expected, column
    assert back["path_or_index"].iloc[0].endswith("/pets/cat/0.png")


def test_corrections_file_for_a_training_script(frame):
    lines = corrections_csv(frame).decode().splitlines()
    assert lines[0] == "uid,label,label_index,path_or_index"
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["s-0001", "fox", "2"],
        ["s-0005", "fox", "2"],
    ]
    assert lines[2].endswith("/pets/fox/5.png")


def test_confusion_matrix_by_class_name(frame):
    matrix = frame_confusion(frame, len(CLASSES))
    assert confusion_csv(matrix, CLASSES).decode().splitlines() == [
        "true \\ predicted,cat,dog,fox,(no dataset class)",
        "cat,1,1,0,0",
        "dog,0,1,0,1",
        "fox,1,0,1,0",
    ]
    back = pd.read_csv(io.BytesIO(confusion_csv(matrix, CLASSES)), index_col=0)
    assert back.index.tolist() == CLASSES and back.to_numpy().sum() == len(frame)
    # no prediction outside the classes among these rows: no such column
    correct_rows = frame[frame["correct"].fillna(False).astype(bool)]
    assert list(confusion_table(frame_confusion(correct_rows, 3), CLASSES).columns) == CLASSES


def test_per_class_metrics(frame):
    matrix = frame_confusion(frame, len(CLASSES))
    table = metrics_table(matrix, CLASSES)
    # cat: 1 of 2 predicted cats right, 1 of 2 cats found; dog: 1/2, 1/2; fox: 1/1, 1/2
    np.testing.assert_allclose(table["precision"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(table["recall"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(table["f1"], [0.5, 0.5, 2 / 3])
    assert table["support"].tolist() == [2, 2, 2]
    by_hand = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    assert matrix.tolist() == by_hand.tolist()
    np.testing.assert_allclose(table["f1"], per_class_metrics(by_hand)["f1"])
    assert metrics_csv(matrix, CLASSES).decode().splitlines()[0] == (
        "class_index,class,precision,recall,f1,support"
    )
    # a class nothing was predicted as has no precision (empty in the CSV), not 0
    only_dogs = frame[frame["true_index"] == 1]
    lines = metrics_csv(frame_confusion(only_dogs, 3), CLASSES).decode().splitlines()
    assert lines[1] == "0,cat,,,,0" and lines[3] == "2,fox,,,,0"


def export(data_dir, out, *args):
    return ["export", "--run", "r", "--data-dir", str(data_dir), "--out", str(out), *args]


def test_export_command_with_a_saved_selection(store, data_dir, frame, tmp_path, capsys):
    saved_selections(data_dir, "r").save("dog or fox mistakes", "wrong;rows=2-5")
    out = tmp_path / "out"
    run_dir_before = sorted(
        (p.name, p.stat().st_mtime_ns) for p in store.run_dir.rglob("*") if p.is_file()
    )
    status = main(
        export(
            data_dir,
            out / "table.parquet",
            "--selection",
            "dog or fox mistakes",
            "--corrections",
            str(out / "labels.csv"),
            "--metrics",
            str(out / "metrics.csv"),
            "--confusion",
            str(out / "confusion.csv"),
        )
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "2 of 6 samples (wrong · 4 chosen samples)" in printed
    table = pd.read_parquet(out / "table.parquet")
    expected = frame.iloc[[3, 5]].reset_index(drop=True)
    pd.testing.assert_frame_equal(table, expected)
    assert pd.read_csv(out / "labels.csv")["uid"].tolist() == ["s-0005"]
    assert pd.read_csv(out / "metrics.csv")["support"].tolist() == [0, 1, 1]
    assert pd.read_csv(out / "confusion.csv", index_col=0).to_numpy().sum() == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.csv",
        "labels.csv",
        "metrics.csv",
        "table.parquet",
    ]  # no temp files left
    after = sorted((p.name, p.stat().st_mtime_ns) for p in store.run_dir.rglob("*") if p.is_file())
    assert after == run_dir_before  # the run is only read


def test_export_every_sample_as_csv_with_a_spec(store, data_dir, frame, tmp_path, capsys):
    assert main(export(data_dir, tmp_path / "all.csv")) == 0
    assert len(pd.read_csv(tmp_path / "all.csv")) == 6
    assert main(export(data_dir, tmp_path / "dups.csv", "--duplicate-threshold", "0.6")) == 0
    assert pd.read_csv(tmp_path / "dups.csv")["duplicate_group"].tolist() == [0, 0, -1, -1, 1, 1]
    assert main(export(data_dir, tmp_path / "issues.csv", "--selection", "issues;pred=other")) == 0
    assert pd.read_csv(tmp_path / "issues.csv")["uid"].tolist() == ["s-0003"]
    capsys.readouterr()


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["--run", "nope"], ["unknown run 'nope'", "main.py runs"]),
        (["--out", "{tmp}/table.xlsx"], [".csv or .parquet"]),
        (["--out", "{tmp}/folder.csv"], ["is a folder"]),
        (["--out", "/etc/hostname/table.csv"], ["cannot write --out", "path you can write"]),
        (["--metrics", "{tmp}/metrics.parquet"], ["--metrics", ".csv"]),
        (["--confusion", "{tmp}/table.csv"], ["same file"]),
        (["--selection", "my saved one"], ["neither a saved selection", "true=N"]),
        (["--selection", "true=３"], ["ASCII"]),
        (["--selection", "rows=0-99"], ["rows 0..5"]),
        (["--duplicate-threshold", "1.5"], ["--duplicate-threshold", "at most 1"]),
        (["--data-dir", "{tmp}/notes.txt"], ["notes.txt is a file"]),
    ],
)
def test_mistakes_are_one_error_line(store, data_dir, tmp_path, capsys, args, phrases):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder")
    command = export(data_dir, tmp_path / "table.csv")
    for option, value in zip(args[::2], args[1::2], strict=True):
        value = value.replace("{tmp}", str(tmp_path))
        if option in command:
            command[command.index(option) + 1] = value
        else:
            command += [option, value]
    status, err = run_cli(command, capsys)
    assert_user_error(status, err, *phrases)
    assert not (tmp_path / "table.csv").exists()


def test_run_and_out_are_required(data_dir, capsys):
    for args in (["--run", "r"], ["--out", "t.csv"]):
        status, err = run_cli(["export", *args, "--data-dir", str(data_dir)], capsys)
        assert_user_error(status, err, "required", "main.py export --help")


def test_a_run_without_predictions_or_quality(data_dir, tmp_path, capsys):
    make_run(data_dir, "r", LABELS, None)
    status, err = run_cli(export(data_dir, tmp_path / "t.csv"), capsys)
    assert_user_error(status, err, "no predictions yet", "precompute command again")
    make_run(data_dir, "q", LABELS, PREDICTED, model_names=[*CLASSES, "wolf"])
    command = export(data_dir, tmp_path / "t.csv")
    command[command.index("r")] = "q"
    status, err = run_cli(command, capsys)
    assert status == 0 and "no quality results yet" in err
    status, err = run_cli([*command, "--selection", "issues"], capsys)
    assert_user_error(status, err, "quality results", "precompute command again")


def test_real_process_exit_status_and_single_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "main.py", "export", "--run", "x", "--out", str(tmp_path / "t.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown run 'x'") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_of_the_real_run(small_run, tmp_path, capsys):
    data_dir, run_id = small_run
    store = RunStore(runs_dir(data_dir) / run_id)
    frame = sample_frame(store, data_dir, corrections={})
    wrong = resolve(parse_selection("wrong"), frame)
    argv = ["export", "--run", run_id, "--data-dir", str(data_dir)]
    out = tmp_path / "all.parquet"
    confusion, metrics = tmp_path / "confusion.csv", tmp_path / "metrics.csv"
    status = main(
        [*argv, "--out", str(out), "--confusion", str(confusion), "--metrics", str(metrics)]
    )
    assert status == 0, capsys.readouterr().err
    table = pd.read_parquet(out)
    assert len(table) == 300 and list(table.columns) == list(COLUMNS)
    assert table["uid"].tolist() == frame["uid"].tolist()
    matrix = pd.read_csv(confusion, index_col=0)
    assert matrix.index.tolist() == list(range(10))  # digits: class names "0".."9"
    assert matrix.to_numpy().sum() == 300
    assert matrix.to_numpy().trace() == 300 - len(wrong)
    # the precompute's own confusion matrix says the same
    stored = np.load(store.artifact_path("predictions"))["confusion"]
    assert (matrix.to_numpy() == stored[:, : matrix.shape[1]]).all()
    assert pd.read_csv(metrics)["support"].sum() == 300

    held_out = tmp_path / "held_out.csv"
    assert main([*argv, "--out", str(held_out), "--selection", "split=held-out;wrong"]) == 0
    expected = resolve(parse_selection("split=held-out;wrong"), frame)
    assert pd.read_csv(held_out)["row"].tolist() == expected.tolist()
    capsys.readouterr()


def test_confusion_matrix_of_model_outputs_maps_each_output_once():
    from pipelines.metrics import confusion_matrix

    # dataset classes 0, 1, 2 -> model outputs 4, 0, unmapped; outputs 1..3 are no dataset class
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([4, 0, 0, 3, 4, 1])
    assert confusion_matrix(labels, predicted, [4, 0, -1]).tolist() == [
        [1, 1, 0, 0],
        [0, 1, 0, 1],
        [1, 0, 0, 1],
    ]
