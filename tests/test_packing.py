"""The compact arrays the server sends the browser (components/packing.py): exact round trips,
the narrowest integer type, and quantised floats within half a level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.packing import (
    LEVELS,
    pack,
    pack_ints,
    pack_quantized,
    smallest_int_dtype,
    unpack,
    value_range,
)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 255], "u1"),
        ([-1, 127], "i1"),
        ([0, 256], "u2"),
        ([-129, 5], "i2"),
        ([0, 70_000], "u4"),
        ([-40_000, 1], "i4"),
        ([], "u1"),
    ],
)
def test_integers_take_the_narrowest_type_and_round_trip(values, dtype):
    array = np.array(values, dtype=np.int64)
    assert smallest_int_dtype(array) == dtype
    packed = json.loads(json.dumps(pack_ints(array)))
    assert packed["dtype"] == dtype and unpack(packed).tolist() == values


def test_shape_travels_with_the_bytes():
    grid = np.arange(12).reshape(3, 4)
    assert unpack(pack_ints(grid)).tolist() == grid.tolist()
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(unpack(pack(floats, "f4")), floats)


def test_values_that_do_not_fit_are_refused_not_wrapped():
    with pytest.raises(ValueError, match="do not fit u1"):
        pack([256], "u1")
    with pytest.raises(ValueError, match="32 bits"):
        pack_ints([2**40])
    with pytest.raises(ValueError, match="integers"):
        pack_ints([0.5])
    with pytest.raises(ValueError, match="one of"):
        pack([1], "f8")


def test_quantised_floats_come_back_within_half_a_level():
    values = np.random.default_rng(0).normal(0, 30, 10_000)
    lo, step = value_range(values)
    back = unpack(pack_quantized(values, lo, step))
    assert step == pytest.approx(np.ptp(values) / LEVELS)
    assert np.abs(back - values).max() <= step / 2 * 1.0001
    assert back.min() == pytest.approx(values.min()) and back.max() == pytest.approx(values.max())
    # A constant array keeps its value; several arrays can share one scale.
    assert (
        unpack(pack_quantized(np.full(3, 7.5), *value_range(np.full(3, 7.5)))).tolist() == [7.5] * 3
    )
    with pytest.raises(ValueError, match="outside"):
        pack_quantized(values, lo + 1.0, step)
    with pytest.raises(ValueError, match="finite"):
        pack_quantized([np.nan], 0.0, 1.0)
