"""The ``export`` command: a run's sample table (all rows, or a selection's) as CSV or Parquet,
and on request its corrected labels, per-class metrics and confusion matrix as CSV files.

Everything the user can get wrong (run, output paths, selection) is checked before any file is
written; each file is written atomically (``pipelines.io``), so an interrupted export leaves the
old file or the whole new one. Reading a run and its annotations never writes anything.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipelines import report
from pipelines.annotations import saved_selections
from pipelines.errors import UserError
from pipelines.export import (
    confusion_csv,
    corrections_csv,
    export_bytes,
    frame_confusion,
    metrics_csv,
    table_format,
)
from pipelines.io import atomic_write_bytes
from pipelines.quality import DEFAULT_DUPLICATE_THRESHOLD
from pipelines.sample_table import sample_frame
from pipelines.selection import Selection, resolve, selection_argument
from pipelines.store import find_run


def export_command(args: argparse.Namespace) -> None:
    store = find_run(args.data_dir, args.run)
    record = store.read_record()
    class_names = list(record.require_dataset().class_names)
    # (option, path, render): every output checked before anything is read or written
    fmt = table_format(Path(args.out))
    outputs: list[tuple[str, Path, Callable[[pd.DataFrame], bytes]]] = [
        ("--out", Path(args.out).expanduser(), lambda frame: export_bytes(frame, fmt))
    ]
    extras: list[tuple[str, str | None, Callable[[pd.DataFrame], bytes]]] = [
        ("--corrections", args.corrections, corrections_csv),
        (
            "--metrics",
            args.metrics,
            lambda frame: metrics_csv(frame_confusion(frame, len(class_names)), class_names),
        ),
        (
            "--confusion",
            args.confusion,
            lambda frame: confusion_csv(frame_confusion(frame, len(class_names)), class_names),
        ),
    ]
    for option, text, render_table in extras:
        if text is not None:
            table_format(Path(text), ("csv",), option)
            outputs.append((option, Path(text).expanduser(), render_table))
    check_outputs(outputs)

    selection = Selection()
    if args.selection is not None:
        selection = selection_argument(
            args.selection, saved_selections(args.data_dir, store.run_id).all()
        )
    if not store.has("predictions"):
        raise UserError(
            f"run '{store.run_id}' has no predictions yet (its precompute has not finished the "
            "forward stage); run its precompute command again, then export"
        )
    threshold = args.duplicate_threshold
    frame = sample_frame(
        store, args.data_dir, DEFAULT_DUPLICATE_THRESHOLD if threshold is None else threshold
    )
    if frame["is_label_issue"].isna().all():
        report.note(
            f"run '{store.run_id}' has no quality results yet: label_issue_score, "
            "suggested_label, duplicate_group and outlier_score are empty"
        )
    rows = resolve(selection, frame)
    chosen = frame.iloc[rows].reset_index(drop=True)
    for _, path, render in outputs:
        atomic_write_bytes(path, render(chosen), durable=True)
    what = "every sample" if selection.is_all else selection.describe(class_names)
    print(f"{len(chosen):,} of {len(frame):,} samples ({what}) of run '{store.run_id}':")
    for option, path, _ in outputs:
        print(f"  {option.lstrip('-')}: {path}")


def check_outputs(outputs: list[tuple[str, Path, Callable[[pd.DataFrame], bytes]]]) -> None:
    """Each output path can be written (its folder is made if missing, then a test file is
    written there: ``os.access`` says yes to root on a read-only mount), and no two coincide."""
    seen: dict[Path, str] = {}
    for option, path, _ in outputs:
        resolved = path.resolve()
        if resolved in seen:
            raise UserError(f"{seen[resolved]} and {option} name the same file {path}; pass two")
        seen[resolved] = option
        if path.is_dir():
            raise UserError(f"{option} {path} is a folder; pass a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".layerscope-write-test-"):
                pass
        except OSError as exc:
            raise UserError(
                f"cannot write {option} {path} ({exc.strerror or exc}); pass a path you can "
                "write to"
            ) from None
