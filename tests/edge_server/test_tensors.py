"""JSON tensors to arrays (edge_server/tensors.py): the casts each datatype takes, without warnings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from edgerec.edge_server.errors import BadRequestError
from edgerec.edge_server.tensors import parse_request


def _one(datatype: str, data: list[object]) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow must not warn (or raise where warnings are errors)
        return parse_request(body.encode(), None, 1 << 20).inputs["x"]


@pytest.mark.parametrize(("datatype", "data", "dtype", "expected"), [
    ("INT64", [17, -3], np.int64, [17, -3]),
    ("INT32", [5, 2**31 - 1], np.int32, [5, 2**31 - 1]),
    ("FP32", [0.5, 2], np.float32, [0.5, 2.0]),
    ("FP32", [2**62], np.float32, [float(2**62)]),  # an integer cast to a float cannot overflow FP32
    ("FP64", [1e300], np.float64, [1e300]),
    ("FP16", [1.5], np.float16, [1.5]),
])
def test_values_take_the_datatype(datatype, data, dtype, expected):
    arr = _one(datatype, data)
    assert arr.dtype == dtype
    assert arr.tolist() == expected


@pytest.mark.parametrize(("datatype", "data"), [("FP32", [1e39, 0.0]), ("FP16", [70000, 1]), ("FP16", [1e5, 0.5])])
def test_values_beyond_a_float_datatype_become_inf_without_a_warning(datatype, data):
    """The SDK's encoder then refuses the Inf by name (tests/edge_server/test_hostile_input.py)."""
    arr = _one(datatype, data)
    assert np.isinf(arr[0]) and np.isfinite(arr[1])


def test_integers_outside_an_integer_datatype_are_refused():
    with pytest.raises(BadRequestError, match="outside the INT32 range") as err:
        _one("INT32", [2**40])
    assert err.value.field == "inputs[0].data"


def test_an_unknown_datatype_is_refused_by_name():
    with pytest.raises(BadRequestError) as err:
        _one("FP128", [1.0])
    assert err.value.field == "inputs[0].datatype"


@pytest.mark.parametrize("shape", [[True], [-1], [1 << 21], [1] * 9, "1", [1.0]])
def test_a_bad_shape_is_refused_by_name(shape):
    body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "INT64", "data": [1]}]})
    with pytest.raises(BadRequestError, match="dimensions from 0 to 1048576") as err:
        parse_request(body.encode(), None, 1 << 20)
    assert err.value.field == "inputs[0].shape"
