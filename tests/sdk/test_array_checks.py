"""sdk/array_checks.py: the list path (small arrays) and NumPy's reductions give the same answers."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk.array_checks import SMALL, all_finite, bounds, finite_bounds

SIZES = (1, 4, SMALL, SMALL + 1, 400)  # both sides of the cut


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint64, np.float32, np.float64, np.float16])
def test_bounds_match_numpy(size, dtype):
    rng = np.random.default_rng(size)
    arr = rng.integers(0, 1000, size).astype(dtype).reshape(-1, 1) if size % 2 == 0 else (
        rng.integers(0, 1000, size).astype(dtype))
    lo, hi = bounds(arr)
    assert (lo, hi) == (arr.min(), arr.max())
    assert finite_bounds(arr) == ((float(arr.min()), float(arr.max())) if arr.dtype.kind == "f" else (lo, hi))
    assert all_finite(arr)


def test_bounds_of_large_integers_are_exact():
    arr = np.asarray([2**63 + 5, 7], dtype=np.uint64)
    assert bounds(arr) == (7, 2**63 + 5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, -1])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_and_inf_are_found_wherever_they_are(size, bad, where, dtype):
    arr = np.full(size, 0.5, dtype=dtype)
    arr[where] = bad
    assert not all_finite(arr)
    assert finite_bounds(arr) is None
    assert not all_finite(arr.reshape(1, -1))


def test_nan_next_to_inf():
    for values in ([np.nan, np.inf], [np.inf, np.nan], [-np.inf, np.inf]):
        arr = np.asarray(values * 20, dtype=np.float32)
        assert finite_bounds(arr) is None and finite_bounds(arr[:2]) is None
