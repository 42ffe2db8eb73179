"""Every InvalidInputError case names the field and the problem."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk import EdgeModel, InvalidInputError
from edgerec.sdk.testing import sample_inputs as ctr_inputs


@pytest.fixture(scope="module")
def model(onnx_pkg, signing_key):
    return EdgeModel.load(onnx_pkg, [signing_key.public_key()])


@pytest.fixture(scope="module")
def strict(onnx_pkg, signing_key):
    return EdgeModel.load(onnx_pkg, [signing_key.public_key()], strict_vocab=True)


def good(n=3):
    return ctr_inputs(n)[0]


def with_(**changes):
    d = good()
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


CASES = [
    ("missing", with_(ctx=None), "ctx", "missing"),
    ("unknown", {**good(), "age": [1, 2, 3]}, "age", "unknown input"),
    ("rank", with_(ctx=np.zeros((3,), np.float32)), "ctx", "expected rank 2"),
    ("shape", with_(ctx=np.zeros((3, 5), np.float32)), "ctx", "expected shape"),
    ("batch", with_(item_id=np.array([1, 2])), "item_id", "batch size 2 differs"),
    ("lossy float->int", with_(item_id=np.array([1.5, 2.0, 3.0])), "item_id", "non-integer"),
    ("int64 overflow", with_(item_id=np.array([2**63 - 1, 1, 1], dtype=np.uint64)), "item_id", "range"),
    ("int->float32 precision", with_(ctx=np.full((3, 4), 2**25, np.int64)), "ctx", "lose precision"),
    ("strings for floats", with_(ctx=np.full((3, 4), "a")), "ctx", "expected float32 values, got strings"),
    ("nan", with_(ctx=np.full((3, 4), np.nan, np.float32)), "ctx", "NaN or Inf"),
    ("inf", with_(ctx=np.full((3, 4), np.inf)), "ctx", "NaN or Inf"),
    ("id above range", with_(item_id=np.array([1, 80, 2])), "item_id", "outside the valid range [0, 79]"),
    ("id below range", with_(item_id=np.array([-1, 0, 2])), "item_id", "outside the valid range"),
    ("ragged", with_(ctx=[[0.1, 0.2, 0.3, 0.4], [0.1]]), "ctx", "rectangular"),
    ("float ids for string vocab", with_(user_id=np.array([1.5, 2.0, 3.0])), "user_id", "expected string ids"),
    ("empty", {k: v[:0] for k, v in good().items()}, "user_id", "empty batch"),
]


@pytest.mark.parametrize("inputs,field,problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_names_field(model, inputs, field, problem):
    with pytest.raises(InvalidInputError) as err:
        model.predict(inputs)
    assert err.value.field == field
    assert problem in str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_out_of_vocabulary_maps_to_oov_row_or_fails_when_strict(model, strict):
    inputs = with_(user_id=np.array(["u1", "stranger", "u2"]))
    assert model.predict(inputs)["score"].shape == (3, 1)
    with pytest.raises(InvalidInputError, match="user_id: id 'stranger' is not in the vocabulary"):
        strict.predict(inputs)


def test_exact_casts_are_accepted(model):
    inputs, ref = ctr_inputs(3)
    inputs["item_id"] = inputs["item_id"].astype(np.float64)  # integral floats are fine
    inputs["ctx"] = inputs["ctx"].astype(np.float64)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, atol=1e-5)
    inputs["item_id"] = inputs["item_id"].astype(np.int32).tolist()
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, atol=1e-5)


def test_not_a_mapping(model):
    with pytest.raises(InvalidInputError, match="inputs: expected a mapping"):
        model.predict([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("user,cands,ctx,field", [
    ({}, [1, 2], None, "user.user"),
    ({"user": "u1"}, [], None, "candidates"),
    ({"user": "u1"}, "12", None, "candidates"),
    ({"user": "u1"}, [1, 2], {"ctx": [1, 2]}, "context.ctx"),
])
def test_rank_errors_name_field(model, user, cands, ctx, field):
    with pytest.raises(InvalidInputError) as err:
        model.rank(user, cands, ctx)
    assert err.value.field == field


def test_top_k_must_be_positive(model):
    with pytest.raises(InvalidInputError, match="top_k"):
        model.rank({"user": "u1"}, [1, 2], top_k=0)
