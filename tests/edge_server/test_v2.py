"""Open Inference Protocol v2 REST: health, metadata, infer (JSON and binary tensors), errors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgerec.sdk import testing as demo
from edgerec.sdk.model import EdgeModel


def test_health_and_server_metadata(live):
    assert live.get("/v2/health/live").json() == {"live": True}
    assert live.get("/v2/health/ready").json() == {"ready": True}
    meta = live.get("/v2").json()
    assert meta["name"] == "edgerec" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_raw_input_types(live):
    meta = live.get("/v2/models/ctr").json()
    assert meta["name"] == "ctr" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "user_id", "datatype": "BYTES", "shape": [-1]},
        {"name": "item_id", "datatype": "INT64", "shape": [-1]},
        {"name": "ctx", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    assert live.get("/v2/models/ctr/versions/1").json() == meta
    assert live.get("/v2/models/ctr/ready").json() == {"name": "ctr", "version": "1", "ready": True}


def test_infer_json_matches_sdk_and_reference(live, packages, trusted_key, infer_body):
    inputs, ref = demo.sample_inputs(12, seed=3)
    r = live.post("/v2/models/ctr/infer", json={"id": "req-1", **infer_body(inputs)})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "ctr" and doc["model_version"] == "1" and doc["id"] == "req-1"
    (out,) = doc["outputs"]
    assert out["name"] == "score" and out["datatype"] == "FP32" and out["shape"] == [12, 1]
    with EdgeModel.load(packages["v1"], [trusted_key], threads=1) as model:
        sdk_scores = model.predict(inputs)["score"].ravel()
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32), sdk_scores)
    np.testing.assert_allclose(out["data"], ref, atol=1e-5)
    versioned = live.post("/v2/models/ctr/versions/1/infer", json=infer_body(inputs)).json()
    assert versioned["outputs"][0]["data"] == out["data"]


def test_infer_accepts_nested_data_and_requested_outputs(live):
    body = {"inputs": [
        {"name": "user_id", "shape": [2], "datatype": "BYTES", "data": ["u1", "u2"]},
        {"name": "item_id", "shape": [2], "datatype": "INT32", "data": [3, 4]},
        {"name": "ctx", "shape": [2, 4], "datatype": "FP64", "data": [[0, 0, 0, 0], [1, 1, 1, 1]]},
    ], "outputs": [{"name": "score"}]}
    doc = live.post("/v2/models/ctr/infer", json=body).json()
    ref = demo.ctr_reference(demo.ctr_weights(0), np.array([1, 2]), np.array([3, 4]),
                             np.array([[0.0] * 4, [1.0] * 4], np.float32))
    np.testing.assert_allclose(doc["outputs"][0]["data"], ref.ravel(), atol=1e-5)


def _binary_request(inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    tensors, blobs = [], []
    for name, arr in inputs.items():
        if arr.dtype.kind == "U":
            raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in arr.tolist())
            dt = "BYTES"
        else:
            raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            dt = {"i": "INT64", "f": "FP32"}[arr.dtype.kind]
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": dt,
                        "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(blobs), len(header)


def test_infer_binary_tensors_both_ways(live):
    inputs, ref = demo.sample_inputs(5, seed=9)
    body, n = _binary_request(inputs)
    r = live.post("/v2/models/ctr/infer", content=body,
                  headers={"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    size = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:size])
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == 5 * 4 and "data" not in out
    scores = np.frombuffer(r.content[size:], dtype="<f4")
    np.testing.assert_allclose(scores, ref, atol=1e-5)


GOOD = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [3]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
]}


def _with(index: int, **changes) -> dict:
    doc = json.loads(json.dumps(GOOD))
    doc["inputs"][index].update(changes)
    return doc


BAD = [
    ("malformed json", b'{"inputs": [', 400, "malformed_body", "body"),
    ("not an object", b"[1, 2]", 400, "invalid_request", "body"),
    ("NaN literal", b'{"inputs": [{"name": "ctx", "shape": [1], "datatype": "FP32", "data": [NaN]}]}',
     400, "malformed_body", "body"),
    ("deep nesting", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "malformed_body", "body"),
    ("no inputs", {"inputs": []}, 400, "invalid_request", "inputs"),
    ("wrong element count", _with(2, shape=[1, 3]), 400, "invalid_request", "inputs[2].data"),
    ("wrong rank", _with(2, shape=[4]), 400, "invalid_input", "ctx"),
    ("fractions for ids", _with(1, datatype="FP32", data=[3.5]), 400, "invalid_input", "item_id"),
    ("floats declared INT64", _with(1, data=[3.5]), 400, "invalid_request", "inputs[1].data"),
    ("strings for ints", _with(1, data=["x"]), 400, "invalid_request", "inputs[1].data"),
    ("unknown datatype", _with(1, datatype="INT128"), 400, "invalid_request", "inputs[1].datatype"),
    ("missing data", _with(1, data=None) | {}, 400, "invalid_request", "inputs[1].data"),
    ("missing tensor", {"inputs": GOOD["inputs"][:2]}, 400, "invalid_input", "ctx"),
    ("unknown tensor", {"inputs": [*GOOD["inputs"], {"name": "x", "shape": [1], "datatype": "INT64",
                                                      "data": [1]}]}, 400, "invalid_input", "x"),
    ("id out of range", _with(1, data=[999]), 400, "invalid_input", "item_id"),
    ("int64 overflow", _with(1, data=[2**70]), 400, "invalid_request", "inputs[1].data"),
    ("ragged data", _with(2, data=[[1, 2], [3]]), 400, "invalid_request", "inputs[2].data"),
    ("unknown output", {**GOOD, "outputs": [{"name": "nope"}]}, 400, "invalid_request", "outputs[0].name"),
    ("negative dim", _with(0, shape=[-1]), 400, "invalid_request", "inputs[0].shape"),
]


@pytest.mark.parametrize(("case", "body", "status", "kind", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_infer_requests_are_4xx_naming_the_field(live, case, body, status, kind, field):
    if isinstance(body, dict) and case == "missing data":
        del body["inputs"][1]["data"]
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = live.post("/v2/models/ctr/infer", **kw)
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["error"] == kind and doc["field"] == field and field in doc["detail"]
    assert live.post("/v2/models/ctr/infer", json=GOOD).status_code == 200  # still serving


def test_binary_errors(live):
    body, n = _binary_request({"item_id": np.array([1, 2], np.int64)})
    for header, field in [("abc", "Inference-Header-Content-Length"),
                          (str(len(body) + 5), "Inference-Header-Content-Length")]:
        r = live.post("/v2/models/ctr/infer", content=body, headers={"Inference-Header-Content-Length": header})
        assert r.status_code == 400 and r.json()["field"] == field
    r = live.post("/v2/models/ctr/infer", content=body + b"xx", headers={"Inference-Header-Content-Length": str(n)})
    assert r.status_code == 400 and r.json()["field"] == "body"


def test_unknown_model_version_and_route(live):
    r = live.post("/v2/models/nope/infer", json=GOOD)
    assert r.status_code == 404 and r.json()["error"] == "model_not_found"
    r = live.post("/v2/models/ctr/versions/7/infer", json=GOOD)
    assert r.status_code == 404 and r.json()["error"] == "version_not_found" and "loaded: 1" in r.json()["detail"]
    r = live.get("/v2/models/ctr/versions/abc")
    assert r.status_code == 404 and r.json()["field"] == "version"
    r = live.get("/v9/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = live.get("/v2/models/ctr/infer")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]


def test_body_over_the_limit_is_413(serve):
    small = serve(max_body_bytes=2048)
    r = small.post("/v2/models/ctr/infer", content=b"{" + b" " * 5000 + b"}")
    assert r.status_code == 413 and r.json() == {
        "error": "payload_too_large", "detail": r.json()["detail"], "field": "body"}
    assert small.post("/v2/models/ctr/infer", json=GOOD).status_code == 200
