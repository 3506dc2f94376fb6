"""Selections: a short text spec of which samples to show or export, shared by the page's URL
(``?sel=``), the shell (``--selection``) and saved selections (``pipelines.annotations``).

A spec is terms joined by ``;``, all of which must hold (AND); the empty spec is every row.

=====================  ==========================================================================
``true=3``             true dataset class 3
``pred=5``             predicted dataset class 5; ``pred=other``: a prediction that is no dataset
                       class
``correct``/``wrong``  the prediction is right / wrong (samples whose class the model lacks are
                       neither)
``split=held-out``     the model was not fitted on it (``split=train``: it was)
``loss>=1.5``          loss at least 1.5
``issues``             flagged as a likely label issue (quality stage)
``dup>=0.98``          in a near-duplicate group at cosine similarity 0.98 (quality stage)
``outliers=50``        the 50 least typical of the rows the other terms select (quality stage)
``corrected``          the user set a label
``rows=1-5,9,12``      these rows (lasso and box selections); ``rows=z:...`` is the same set as a
                       compressed bitmap, which ``to_text`` writes when it is shorter
=====================  ==========================================================================

Parsing is ASCII-only (``'３'`` is not a digit here) and refuses anything malformed with a
``UserError`` that shows the form expected. ``Selection.to_text`` is canonical: terms in the
order above, rows merged into ranges, so equal selections have equal texts and links.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipelines.errors import UserError
from pipelines.metrics import HELD_OUT, OTHER, TRAIN

SPLITS = (TRAIN, HELD_OUT)
# A bitmap of rows may describe at most this many rows once decompressed (a link is data from
# anyone: a tiny compressed text must not unpack into gigabytes).
MAX_BITMAP_ROWS = 1 << 24
_INT = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_BITMAP_PREFIX = "z:"
_FORMS = (
    "true=N, pred=N, pred=other, correct, wrong, split=train, split=held-out, loss>=X, issues, "
    "dup>=X, outliers=N, corrected, rows=1-5,9"
)

Ranges = tuple[tuple[int, int], ...]  # inclusive (first, last) row pairs, sorted, disjoint


class NeedsQuality(UserError):
    """A selection names quality results (issues, dup, outliers) that the run does not have."""


@dataclass(frozen=True)
class Selection:
    """Which samples: each field None (or False) when its term is absent. ``pred``: a dataset
    class, or ``OTHER`` (-1) for a prediction that is no dataset class; ``correct``: True for
    ``correct``, False for ``wrong``; ``rows``: merged inclusive ranges."""

    true: int | None = None
    pred: int | None = None
    correct: bool | None = None
    split: str | None = None
    loss_min: float | None = None
    issues: bool = False
    dup_min: float | None = None
    outliers: int | None = None
    corrected: bool = False
    rows: Ranges | None = None

    @property
    def is_all(self) -> bool:
        return self == Selection()

    def to_text(self) -> str:
        """The canonical spec: ``parse_selection(s.to_text()) == s``."""
        terms = []
        if self.true is not None:
            terms.append(f"true={self.true}")
        if self.pred is not None:
            terms.append(f"pred={'other' if self.pred == OTHER else self.pred}")
        if self.correct is not None:
            terms.append("correct" if self.correct else "wrong")
        if self.split is not None:
            terms.append(f"split={self.split}")
        if self.loss_min is not None:
            terms.append(f"loss>={_number_text(self.loss_min)}")
        if self.issues:
            terms.append("issues")
        if self.dup_min is not None:
            terms.append(f"dup>={_number_text(self.dup_min)}")
        if self.outliers is not None:
            terms.append(f"outliers={self.outliers}")
        if self.corrected:
            terms.append("corrected")
        if self.rows is not None:
            terms.append(_rows_term(self.rows))
        return ";".join(terms)

    def describe(self, class_names: Sequence[str]) -> str:
        """In words for the page, e.g. "true 3 · predicted 5 · held-out"."""

        def name(index: int) -> str:
            return class_names[index] if 0 <= index < len(class_names) else f"class {index}"

        words = []
        if self.true is not None:
            words.append(f"true {name(self.true)}")
        if self.pred is not None:
            words.append(
                "predicted no dataset class"
                if self.pred == OTHER
                else f"predicted {name(self.pred)}"
            )
        if self.correct is not None:
            words.append("correct" if self.correct else "wrong")
        if self.split is not None:
            words.append(self.split)
        if self.loss_min is not None:
            words.append(f"loss ≥ {_number_text(self.loss_min)}")
        if self.issues:
            words.append("label issues")
        if self.dup_min is not None:
            words.append(f"near-duplicates (similarity ≥ {_number_text(self.dup_min)})")
        if self.outliers is not None:
            words.append(f"{self.outliers:,} least typical")
        if self.corrected:
            words.append("corrected")
        if self.rows is not None:
            count = sum(last - first + 1 for first, last in self.rows)
            words.append(f"{count:,} chosen sample{'' if count == 1 else 's'}")
        return " · ".join(words) or "all samples"

    def with_rows(self, rows: Iterable[int] | None) -> Selection:
        """This selection with its ``rows`` term replaced (None drops it)."""
        return _replace(self, rows=None if rows is None else to_ranges(rows))


def _replace(selection: Selection, **changes: Any) -> Selection:
    values = {f.name: getattr(selection, f.name) for f in fields(selection)}
    values.update(changes)
    return Selection(**values)


def _number_text(value: float) -> str:
    """Shortest text that reads back as the same float ("1.5", "0.98", "2", "1e-05")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# ---- parsing --------------------------------------------------------------------------------


def parse_selection(text: str) -> Selection:
    """The selection ``text`` spells (see the module's table); a UserError for anything else."""
    if not isinstance(text, str):
        raise UserError(f"a selection is text like 'true=3;wrong', not {type(text).__name__}")
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw in text.split(";"):
        term = raw.strip()
        if not term:
            continue
        key, value = _parse_term(term)
        if key in seen:
            raise UserError(
                f"'{seen[key]}' and '{term}' in the selection both set {_KEY_WORDS[key]}; "
                "keep one of them"
            )
        seen[key] = term
        values[key] = value
    return Selection(**values)


_KEY_WORDS = {
    "true": "the true class",
    "pred": "the predicted class",
    "correct": "correct or wrong",
    "split": "the split",
    "loss_min": "the loss",
    "issues": "issues",
    "dup_min": "the duplicate threshold",
    "outliers": "the number of outliers",
    "corrected": "corrected",
    "rows": "the rows",
}


def _parse_term(term: str) -> tuple[str, Any]:
    word = term.lower()
    if word in ("correct", "wrong"):
        return "correct", word == "correct"
    if word == "issues":
        return "issues", True
    if word == "corrected":
        return "corrected", True
    match = re.fullmatch(
        r"([a-z\-]+)\s*(>=|<=|==|=|>|<)\s*(.*)", term, flags=re.IGNORECASE | re.ASCII
    )
    if match is None:
        raise UserError(f"'{term}' is not a selection term; use {_FORMS}, joined by ';'")
    key, op, value = match.group(1).lower(), match.group(2), match.group(3).strip()
    expected = {"loss": ">=", "dup": ">="}.get(key, "=")
    if key in ("true", "pred", "split", "outliers", "rows", "loss", "dup") and op != expected:
        raise UserError(f"'{term}': write {key}{expected}{value or '…'}")
    if key == "true":
        return "true", _class_index(term, value)
    if key == "pred":
        return "pred", OTHER if value.lower() == "other" else _class_index(term, value)
    if key == "split":
        if value.lower() not in SPLITS:
            raise UserError(f"'{term}': the split is train or held-out")
        return "split", value.lower()
    if key == "loss":
        loss = _number(term, value)
        if loss < 0:
            raise UserError(f"'{term}': a loss is never negative; write loss>=0 or more")
        return "loss_min", loss
    if key == "dup":
        threshold = _number(term, value)
        if not 0 < threshold <= 1:
            raise UserError(f"'{term}': the similarity threshold is above 0 and at most 1")
        return "dup_min", threshold
    if key == "outliers":
        count = _count(term, value)
        if count < 1:
            raise UserError(f"'{term}': ask for at least 1 outlier, e.g. outliers=50")
        return "outliers", count
    if key == "rows":
        return "rows", parse_rows(term, value)
    raise UserError(f"'{term}' is not a selection term; use {_FORMS}, joined by ';'")


def _count(term: str, value: str) -> int:
    if not _INT.fullmatch(value):
        raise UserError(f"'{term}': expected a whole number (ASCII digits 0-9) after '='")
    return int(value)


def _class_index(term: str, value: str) -> int:
    if not _INT.fullmatch(value):
        raise UserError(
            f"'{term}': a class is given by its index (ASCII digits 0-9), e.g. true=3"
            + (
                "; pred=other is a prediction outside the dataset's classes"
                if "pred" in term
                else ""
            )
        )
    return int(value)


def _number(term: str, value: str) -> float:
    if not _NUMBER.fullmatch(value):
        raise UserError(f"'{term}': expected a number such as 1.5 (ASCII digits) after '>='")
    number = float(value)
    if not np.isfinite(number):
        raise UserError(f"'{term}': expected a finite number")
    return number


def parse_rows(term: str, value: str) -> Ranges:
    """``1-5,9,12`` or a ``z:`` bitmap → merged inclusive ranges."""
    if value.startswith(_BITMAP_PREFIX):
        return _ranges_from_mask(_decode_bitmap(term, value[len(_BITMAP_PREFIX) :]))
    pairs = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.fullmatch(part)
        if match is None:
            raise UserError(
                f"'{term}': rows are row numbers and ranges like rows=1-5,9,12 (ASCII digits)"
            )
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise UserError(f"'{term}': the range {part} runs backwards; write {last}-{first}")
        pairs.append((first, last))
    return _merge(pairs)


def _merge(pairs: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[list[int]] = []
    for first, last in sorted(pairs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((first, last) for first, last in merged)


def _decode_bitmap(term: str, text: str) -> npt.NDArray[np.bool_]:
    bad = UserError(f"'{term[:40]}…': the row bitmap is damaged; make the selection again")
    try:
        packed = zlib.decompressobj().decompress(
            base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True),
            MAX_BITMAP_ROWS // 8 + 1,
        )
    except (binascii.Error, ValueError, zlib.error):
        raise bad from None
    if len(packed) > MAX_BITMAP_ROWS // 8:
        raise UserError(f"the row bitmap in the selection covers more than {MAX_BITMAP_ROWS} rows")
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8)).astype(bool)


def _ranges_from_mask(mask: npt.NDArray[np.bool_]) -> Ranges:
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[0::2], edges[1::2] - 1
    return tuple(zip(starts.tolist(), stops.tolist(), strict=True))


def to_ranges(rows: Iterable[int]) -> Ranges:
    """Row numbers (any order, repeats allowed) → merged inclusive ranges."""
    array = np.unique(np.fromiter((int(r) for r in rows), dtype=np.int64))
    if len(array) and array[0] < 0:
        raise UserError(f"row {array[0]} is not a row; rows count from 0")
    if not len(array):
        return ()
    breaks = np.flatnonzero(np.diff(array) != 1)
    starts = np.concatenate(([array[0]], array[breaks + 1]))
    stops = np.concatenate((array[breaks], [array[-1]]))
    return tuple(zip(starts.tolist(), stops.tolist(), strict=True))


def _rows_term(ranges: Ranges) -> str:
    """``rows=`` with ranges, or the compressed bitmap when that is shorter (scattered rows: a
    lasso over a t-SNE map picks rows all over the class-balanced order)."""
    listed = "rows=" + ",".join(
        str(first) if first == last else f"{first}-{last}" for first, last in ranges
    )
    if len(listed) < 64 or not ranges or ranges[-1][1] >= MAX_BITMAP_ROWS:
        return listed
    mask = np.zeros(ranges[-1][1] + 1, dtype=bool)
    for first, last in ranges:
        mask[first : last + 1] = True
    packed = np.packbits(mask).tobytes()
    encoded = base64.urlsafe_b64encode(zlib.compress(packed, 9)).decode().rstrip("=")
    bitmap = f"rows={_BITMAP_PREFIX}{encoded}"
    return bitmap if len(bitmap) < len(listed) else listed


def rows_spec(rows: Iterable[int]) -> str:
    """The compact ``rows=`` term of ``rows`` (e.g. ``rows=1-5,9,12``)."""
    return _rows_term(to_ranges(rows))


# ---- resolving ------------------------------------------------------------------------------


def resolve(selection: Selection, frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    """The rows of ``frame`` (``pipelines.sample_table``) that ``selection`` selects: int64,
    ascending. Terms on quality results raise ``NeedsQuality`` when the run has none; rows past
    the run's end raise a UserError."""
    n = len(frame)
    keep = np.ones(n, dtype=bool)
    if selection.true is not None:
        keep &= frame["true_index"].to_numpy() == selection.true
    if selection.pred is not None:
        predicted = frame["predicted_index"].to_numpy(dtype=np.int64, na_value=-2)
        keep &= predicted == selection.pred
    if selection.correct is not None:
        correct = frame["correct"].to_numpy(dtype=np.int8, na_value=-1)
        keep &= correct == int(selection.correct)
    if selection.split is not None:
        keep &= (frame["split"] == selection.split).to_numpy(dtype=bool, na_value=False)
    if selection.loss_min is not None:
        keep &= _at_least(frame["loss"], selection.loss_min)
    if selection.issues:
        _need_quality(frame, "issues")
        keep &= frame["is_label_issue"].to_numpy(dtype=bool, na_value=False)
    if selection.dup_min is not None:
        _need_quality(frame, f"dup>={_number_text(selection.dup_min)}")
        # duplicate_score is a row's strongest neighbour link either way, so this is exactly
        # "in a near-duplicate group at this threshold" (pipelines.quality.duplicate_groups).
        keep &= _at_least(frame["duplicate_score"], selection.dup_min)
    if selection.corrected:
        keep &= frame["corrected_index"].notna().to_numpy()
    if selection.rows is not None:
        keep &= _rows_mask(selection.rows, n)
    if selection.outliers is not None:
        _need_quality(frame, f"outliers={selection.outliers}")
        # The least typical of the rows every other term keeps (ties: the earlier row).
        scores = frame["outlier_score"].to_numpy(dtype=np.float64, na_value=np.nan)
        candidates = np.flatnonzero(keep & ~np.isnan(scores))
        order = np.argsort(-scores[candidates], kind="stable")[: selection.outliers]
        keep = np.zeros(n, dtype=bool)
        keep[candidates[order]] = True
    return np.flatnonzero(keep).astype(np.int64)


def _at_least(column: pd.Series, threshold: float) -> npt.NDArray[np.bool_]:
    """column >= threshold, compared in the column's own precision (as the quality stage's
    ``duplicate_groups`` compares): a float32 0.9 shown as 0.9 is >= 0.9. NaN is never."""
    values = column.to_numpy(dtype=np.float32, na_value=np.nan)
    return values >= np.float32(threshold)


def _need_quality(frame: pd.DataFrame, term: str) -> None:
    if frame["outlier_score"].isna().all() and frame["is_label_issue"].isna().all():
        raise NeedsQuality(
            f"'{term}' needs the run's quality results (label issues, duplicates, outliers), "
            "which it does not have yet; run its precompute command again to add them"
        )


def _rows_mask(ranges: Ranges, n: int) -> npt.NDArray[np.bool_]:
    if ranges and ranges[-1][1] >= n:
        raise UserError(
            f"the selection names row {ranges[-1][1]}, but the run has rows 0..{n - 1}; it was "
            "made for another run — select again"
        )
    mask = np.zeros(n, dtype=bool)
    if ranges:
        bounds = np.asarray(ranges, dtype=np.int64)
        # +1 at each range's start, -1 after its end: the running sum is 1 inside a range.
        steps = np.zeros(n + 1, dtype=np.int64)
        np.add.at(steps, bounds[:, 0], 1)
        np.add.at(steps, bounds[:, 1] + 1, -1)
        mask = np.cumsum(steps[:n]) > 0
    return mask


def selection_argument(text: str, saved: Mapping[str, str]) -> Selection:
    """``--selection``'s value: a saved selection's name, else a spec."""
    if text in saved:
        return parse_selection(saved[text])
    try:
        return parse_selection(text)
    except UserError as exc:
        names = ", ".join(sorted(saved)) or "none saved"
        raise UserError(
            f"--selection '{text}' is neither a saved selection ({names}) nor a valid spec: {exc}"
        ) from None
