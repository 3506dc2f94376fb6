"""Compact arrays for the browser: numbers as base64 bytes instead of JSON text.

A 60,000-point map sent as JSON numbers was 1 MB and 57 ms of the server's time per layer switch,
and the inspector's per-run table 7.3 MB and 0.66 s per page load. Packed, an array travels as
``{"dtype": "u2", "bdata": <base64>, "shape": [n, k]}`` (plotly.js's own spelling of a typed
array), optionally with ``"lo"`` and ``"step"``: the values are then ``lo + step * raw``, which
is how coordinates travel as 16-bit integers. ``ls.unpack`` in ``assets/00-core.js`` is the
browser's reader, ``unpack`` here the Python one (tests, tools); both give back the numbers.

Little-endian bytes, as numpy writes them on every machine the server runs on, and as typed
arrays read them in every browser (plotly.js relies on the same).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt

# The integer types the browser reads (typed arrays): name -> numpy dtype, little-endian.
DTYPES: dict[str, str] = {
    "u1": "<u1",
    "i1": "<i1",
    "u2": "<u2",
    "i2": "<i2",
    "u4": "<u4",
    "i4": "<i4",
    "f4": "<f4",
}
LEVELS = 65535  # a quantised value's steps: 1/65535 of the range, finer than any screen


def pack(values: npt.ArrayLike, dtype: str) -> dict[str, Any]:
    """values: any shape, representable in ``dtype`` (a key of ``DTYPES``; checked, never
    wrapped) -> {"dtype", "bdata", "shape"}."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    array = np.asarray(values)
    converted = array.astype(DTYPES[dtype])
    if dtype != "f4" and array.size and not np.array_equal(converted, array):
        raise ValueError(f"values do not fit {dtype} exactly (range {array.min()}..{array.max()})")
    return {
        "dtype": dtype,
        "bdata": base64.b64encode(np.ascontiguousarray(converted).tobytes()).decode("ascii"),
        "shape": list(array.shape),
    }


def smallest_int_dtype(values: npt.NDArray[np.integer]) -> str:
    """The narrowest of u1, i1, u2, i2, u4, i4 that holds every value (u1 when empty)."""
    array = np.asarray(values)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for name in ("u1", "i1", "u2", "i2", "u4", "i4"):
        info = np.iinfo(DTYPES[name])
        if info.min <= low and high <= info.max:
            return name
    raise ValueError(f"values {low}..{high} do not fit 32 bits")


def pack_ints(values: npt.ArrayLike) -> dict[str, Any]:
    """Integers in the narrowest type that holds them all."""
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"pack_ints takes integers, got {array.dtype}")
    return pack(array.astype(np.int64), smallest_int_dtype(array))


def value_range(values: npt.NDArray[np.floating]) -> tuple[float, float]:
    """(lo, step) that put the finite ``values`` on ``LEVELS`` + 1 evenly spaced levels; a
    constant (or empty) array gets step 1."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return lo, ((hi - lo) / LEVELS) or 1.0


def pack_quantized(values: npt.ArrayLike, lo: float, step: float) -> dict[str, Any]:
    """Floats in [lo, lo + LEVELS * step] as 16-bit levels: the browser reads lo + step * raw,
    within step / 2 of each value. Several arrays packed with one (lo, step) (the axes of one
    map's traces) share one scale. Values must be finite."""
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError("pack_quantized takes finite values only")
    levels = np.rint((array - lo) / step)
    if levels.size and (levels.min() < 0 or levels.max() > LEVELS):
        raise ValueError(f"values outside [{lo}, {lo + LEVELS * step}]")
    return {**pack(levels.astype(np.uint16), "u2"), "lo": lo, "step": step}


def is_packed(value: Any) -> bool:
    return isinstance(value, dict) and "bdata" in value and "dtype" in value


def unpack(spec: dict[str, Any]) -> np.ndarray:
    """A packed array back as numpy: the raw type, or float64 ``lo + step * raw`` when scaled."""
    raw = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=DTYPES[spec["dtype"]])
    raw = raw.reshape(spec.get("shape") or raw.shape)
    if "step" in spec:
        return spec["lo"] + spec["step"] * raw.astype(np.float64)
    return raw
