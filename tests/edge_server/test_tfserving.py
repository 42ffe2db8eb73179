"""TF-Serving REST predict (row and columnar forms) and model status."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk import testing as demo


def test_row_form_matches_reference(live):
    inputs, ref = demo.sample_inputs(6, seed=4)
    instances = [{"user_id": u, "item_id": int(i), "ctx": c.tolist()}
                 for u, i, c in zip(inputs["user_id"].tolist(), inputs["item_id"], inputs["ctx"], strict=True)]
    r = live.post("/v1/models/ctr:predict", json={"signature_name": "serving_default", "instances": instances})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 6 and all(len(p) == 1 for p in preds)
    np.testing.assert_allclose(np.ravel(preds), ref, atol=1e-5)


def test_columnar_form_and_version_path(live):
    inputs, ref = demo.sample_inputs(4, seed=5)
    body = {"inputs": {k: v.tolist() for k, v in inputs.items()}}
    for path in ("/v1/models/ctr:predict", "/v1/models/ctr/versions/1:predict"):
        r = live.post(path, json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.ravel(r.json()["outputs"]), ref, atol=1e-5)


def test_model_status(live):
    assert live.get("/v1/models/ctr").json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert live.get("/v1/models/ctr/versions/1").status_code == 200
    assert live.get("/v1/models/ctr/versions/9").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({}, "instances"),
    ({"instances": [], }, "instances"),
    ({"instances": [{"user_id": "u1"}], "inputs": {}}, "instances"),
    ({"instances": [1, 2]}, "instances"),  # three inputs: instances must name them
    ({"instances": [{"user_id": "u1", "item_id": 1, "ctx": [0, 0, 0, 0]}, {"user_id": "u2"}]}, "instances[1]"),
    ({"inputs": {"user_id": ["u1"], "item_id": [1], "ctx": [[0, 0, 0]]}}, "ctx"),
    ({"inputs": {"user_id": ["u1"], "item_id": ["a"], "ctx": [[0, 0, 0, 0]]}}, "item_id"),
    ({"instances": [{"user_id": "u1"}], "extra": 1}, "extra"),
    ({"signature_name": 5, "instances": [1]}, "signature_name"),
])
def test_bad_predict_bodies(live, body, field):
    r = live.post("/v1/models/ctr:predict", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_unknown_model(live):
    r = live.post("/v1/models/nope:predict", json={"instances": [1]})
    assert r.status_code == 404 and r.json()["error"] == "model_not_found"
