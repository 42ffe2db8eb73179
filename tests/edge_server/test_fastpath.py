"""The fast scoring routes answer exactly as the Flask views do: statuses, headers, bodies, metrics.

The fast routes run in a real server (granian, a child process); the reference
is the same app built here with the fast routes off, driven through httpx's
WSGI transport.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edgerec.edge_server.fastpath import FastRoutes
from edgerec.sdk import testing as demo

ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [3]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
]}


def _binary_body() -> tuple[bytes, str]:
    inputs, _ = demo.sample_inputs(3, seed=4)
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
    return header + b"".join(blobs), str(len(header))


BINARY, BINARY_HEADER = _binary_body()
RANK = {"user": {"id": "u7"}, "candidates": list(range(0, 80, 3)), "context": {"ctx": [0.3, 0.1, 0.9, 0.5]},
        "top_k": 5}

# (name, method, path, body, extra headers)
CASES: list[tuple[str, str, str, Any, dict[str, str]]] = [
    ("infer", "POST", "/v2/models/ctr/infer", {"id": "a", **ROW}, {}),
    ("infer versioned", "POST", "/v2/models/ctr/versions/1/infer", ROW, {}),
    ("infer binary", "POST", "/v2/models/ctr/infer", BINARY, {"Inference-Header-Content-Length": BINARY_HEADER}),
    ("infer binary bad header", "POST", "/v2/models/ctr/infer", BINARY, {"Inference-Header-Content-Length": "x"}),
    ("infer json output requested", "POST", "/v2/models/ctr/infer",
     {**ROW, "outputs": [{"name": "score", "parameters": {"binary_data": True}}]}, {}),
    ("unknown model", "POST", "/v2/models/nope/infer", ROW, {}),
    ("unknown version", "POST", "/v2/models/ctr/versions/7/infer", ROW, {}),
    ("bad version", "POST", "/v2/models/ctr/versions/x1/infer", ROW, {}),
    ("malformed", "POST", "/v2/models/ctr/infer", b'{"inputs": [', {}),
    ("empty body", "POST", "/v2/models/ctr/infer", b"", {}),
    ("big int", "POST", "/v2/models/ctr/infer", b'{"inputs": [{"name": "item_id", "shape": [1], '
     b'"datatype": "INT64", "data": [123456789012345678901234567890]}]}', {}),
    ("lone surrogate", "POST", "/v2/models/ctr/infer", b'{"id": "\\ud800", "inputs": []}', {}),
    ("deep nesting", "POST", "/v2/models/ctr/infer", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
    ("invalid input", "POST", "/v2/models/ctr/infer", {"inputs": ROW["inputs"][:2]}, {}),
    ("too large", "POST", "/v2/models/ctr/infer", b"{" + b" " * 5000 + b"}", {}),
    ("trailing slash", "POST", "/v2/models/ctr/infer/", ROW, {}),
    ("double slash", "POST", "/v2/models//ctr/infer", ROW, {}),
    ("empty name", "POST", "/v2/models//infer", ROW, {}),
    ("get infer", "GET", "/v2/models/ctr/infer", None, {}),
    ("rank", "POST", "/v1/rank", RANK, {}),
    ("rank unknown field", "POST", "/v1/rank", {"candidates": [1], "topk": 3}, {}),
    ("rank unknown item", "POST", "/v1/rank", {"candidates": [1, 999], "user": {"id": "u1"}}, {}),
    ("rank not an object", "POST", "/v1/rank", [1, 2], {}),
    ("rank malformed", "POST", "/v1/rank", b"{", {}),
    ("rank with request id", "POST", "/v1/rank", RANK, {"X-Request-ID": "rid-1"}),
    ("get rank", "GET", "/v1/rank", None, {}),
]


class InProcess:
    """The app built in this process, with Flask answering every route, behind an httpx client."""

    def __init__(self, config: Any) -> None:
        import httpx

        from edgerec.edge_server import create_app

        self.app = create_app(config)
        assert isinstance(self.app.wsgi_app.fast, FastRoutes)
        self.app.wsgi_app.fast = None
        self.url = "http://edge.test"
        self.http = httpx.Client(transport=httpx.WSGITransport(app=self.app), base_url=self.url)

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.http.post(path, **kw)

    def close(self) -> None:
        self.http.close()
        self.app.extensions["edgerec"].close()


@pytest.fixture(scope="module")
def pair(base_config) -> Iterator[tuple[Any, Any]]:
    """The same app twice: served with the fast routes, and in process with Flask answering everything."""
    from edgerec.edge_server import RunningServer

    from .conftest import Live

    config = base_config.replace(max_body_bytes=4096)
    fast, slow = Live(RunningServer(config)), InProcess(config)
    yield fast, slow
    fast.http.close()
    fast.running.close()
    slow.close()


def _send(live: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    kw: dict[str, Any] = {"headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                      **headers}}
    if isinstance(body, bytes):
        kw["content"] = body
    elif body is not None:
        kw["json"] = body
    return live.http.request(method, path, **kw)


def _comparable(r: Any, live: Any) -> dict[str, Any]:
    """The answer with what must differ between the servers (port, generated ids, date) masked."""
    headers = {k.lower(): v.replace(live.url, "URL") for k, v in r.headers.items()
               if k.lower() not in ("date", "traceparent", "server", "connection")}  # the server's own
    if "allow" in headers:  # werkzeug lists a set: its order differs between processes
        headers["allow"] = ", ".join(sorted(headers["allow"].split(", ")))
    if "x-request-id" in headers and headers["x-request-id"] != "rid-1":
        headers["x-request-id"] = "generated"
    if r.headers.get("content-type") == "application/json":
        body = r.json()
        if isinstance(body, dict) and "response_id" in body:
            body["response_id"] = body["response_id"][:3]
        # the same JSON, written by the same code; lengths may differ only with the response id's digits
        headers.pop("content-length", None)
    else:
        body = r.content.replace(live.url.encode(), b"URL")
        headers.pop("content-length", None)
    # No reason phrase: granian writes the standard one for the code, whatever the app's status line says.
    return {"status": r.status_code, "headers": headers, "body": body}


@pytest.mark.parametrize(("name", "method", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_fast_routes_answer_as_flask_does(pair, name, method, path, body, headers):
    fast, slow = pair
    a, b = _send(fast, method, path, body, headers), _send(slow, method, path, body, headers)
    assert _comparable(a, fast) == _comparable(b, slow)
    assert a.headers["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_fast_routes_count_the_same_metrics(pair):
    def families(live: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(live.get("/metrics").text):
            for s in fam.samples:
                if fam.name in ("edgerec_requests", "edgerec_errors") and not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    fast, slow = pair
    for _, method, path, body, headers in CASES:
        _send(fast, method, path, body, headers)
        _send(slow, method, path, body, headers)
    got, want = families(fast), families(slow)
    # /metrics itself, and the readiness probe that started the served one
    metrics_calls = {k for k in got if dict(k[1]).get("endpoint") in ("metrics.metrics", "v2.ready")}
    assert {k: v for k, v in got.items() if k not in metrics_calls} == {
        k: v for k, v in want.items() if k not in metrics_calls}
    assert any(dict(k[1]).get("endpoint") == "rank.rank" for k in got)


def test_chunked_bodies_go_to_flask_and_still_score(pair):
    fast, _ = pair

    def chunks() -> Iterator[bytes]:
        data = json.dumps(RANK).encode()
        yield data[:10]
        yield data[10:]

    r = fast.http.post("/v1/rank", content=chunks())
    assert r.status_code == 200, r.text
    assert [i["rank"] for i in r.json()["items"]] == [1, 2, 3, 4, 5]


def test_rank_scores_match_the_flask_view(pair):
    fast, slow = pair
    a, b = fast.post("/v1/rank", json=RANK).json(), slow.post("/v1/rank", json=RANK).json()
    assert a["items"] == b["items"]
    assert np.isclose(a["items"][0]["score"], b["items"][0]["score"])
