"""Value checks on request-sized arrays: bounds and finiteness, cheap for a few values.

A NumPy reduction has a fixed cost of several microseconds (it sets up an
iterator on every call), more than Python's ``min`` and ``max`` over a handful
of values; most request arrays are that small (a single-row request holds one
value per input). Arrays of up to :data:`SMALL` values are checked as Python
lists, larger ones with NumPy's reductions. Both give the same answers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

SMALL = 32  # values; above this NumPy's reductions are cheaper than a list
# The ufuncs' own reductions: no Python wrapper per call.
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce
_ALL = np.logical_and.reduce


def bounds(arr: npt.NDArray[Any]) -> tuple[Any, Any]:
    """(smallest, largest) value of a non-empty array of integers, booleans or finite floats."""
    if arr.size <= SMALL:
        values = arr.ravel().tolist()
        return min(values), max(values)
    return _MIN(arr, axis=None), _MAX(arr, axis=None)


def all_finite(arr: npt.NDArray[Any]) -> bool:
    """Whether no value of a float array is NaN or infinite."""
    if arr.size <= SMALL:
        return all(map(math.isfinite, arr.ravel().tolist()))
    return bool(_ALL(np.isfinite(arr), axis=None))


def finite_bounds(arr: npt.NDArray[Any]) -> tuple[float, float] | None:
    """(smallest, largest) value of a non-empty float array, or None if it holds NaN or Inf."""
    if arr.size <= SMALL:
        values = arr.ravel().tolist()
        if not all(map(math.isfinite, values)):  # Python's min and max do not propagate NaN
            return None
        return min(values), max(values)
    lo, hi = _MIN(arr, axis=None), _MAX(arr, axis=None)  # NumPy's propagate NaN and hold any Inf
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


__all__ = ["SMALL", "all_finite", "bounds", "finite_bounds"]
