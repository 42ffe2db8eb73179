"""The edge server under hostile input: events only for returned items and at most once, every malformed
body a 4xx naming the field, bounded log lines. Real servers on loopback."""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os

import httpx
import numpy as np
import pytest

from edgerec.edge_server.event_dedup import MIN_BYTES, EventDedup
from edgerec.edge_server.response_ids import ResponseIds
from edgerec.sdk import testing as demo
from edgerec.sdk.json_logs import configure_logging
from edgerec.sdk.log_bounds import MAX_LOG_MESSAGE, MAX_LOG_TRACEBACK

USER = "u3"
CTX = [0.1, 0.2, 0.3, 0.4][: demo.N_CTX]


def _rank(live, candidates, top_k=None) -> dict:
    body = {"user": {"id": USER}, "candidates": candidates, "context": {"ctx": CTX}}
    if top_k:
        body["top_k"] = top_k
    r = live.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _events(live, *events) -> httpx.Response:
    return live.post("/v1/events", json={"events": list(events)})


def _clicks(live) -> float:
    return live.metric_sum("edgerec_events_total", type="click")


# -- /v1/events ---------------------------------------------------------------------------------


def test_events_must_name_items_the_response_returned(live):
    answer = _rank(live, [1, 2, 3, 4, 5], top_k=2)
    rid = answer["response_id"]
    shown = [it["item"] for it in answer["items"]]
    hidden = next(c for c in (1, 2, 3, 4, 5) if c not in shown)  # a candidate, but not returned
    before = _clicks(live)
    for item, field in ((hidden, "events[1].item"), (999, "events[1].item"), ("x" * 256, "events[1].item")):
        r = _events(live, {"type": "impression", "response_id": rid, "item": shown[0]},
                    {"type": "click", "response_id": rid, "item": item})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    r = _events(live, {"type": "click", "response_id": rid})
    assert (r.status_code, r.json()["field"]) == (400, "events[0].item")  # a click is for an item
    assert _clicks(live) == before  # the refused batches counted nothing, not even their impression
    assert _events(live, {"type": "click", "response_id": rid, "item": str(shown[1])}).json()["accepted"] == 1
    assert _clicks(live) == before + 1


def test_item_ids_are_bounded(live):
    rid = _rank(live, [1])["response_id"]
    r = _events(live, {"type": "click", "response_id": rid, "item": "x" * 257})
    assert (r.status_code, r.json()["field"]) == (400, "events[0].item")
    assert "at most 256" in r.json()["detail"] and len(r.content) < 1000
    r = _events(live, {"type": "click", "response_id": rid, "item": 10**300})
    assert (r.status_code, r.json()["field"]) == (400, "events[0].item")


def test_one_click_and_one_conversion_per_item_and_response(live):
    a, b = _rank(live, [1, 2, 3]), _rank(live, [1, 2, 3])
    events = [{"type": t, "response_id": a["response_id"], "item": 2} for t in ("click", "conversion")] * 3
    assert _events(live, *events).json() == {"accepted": 2, "duplicates": 4, "expired": 0}
    # The same item of another response is another event; 2 and "2" are the same item.
    again = [{"type": "click", "response_id": a["response_id"], "item": "2"},
             {"type": "click", "response_id": b["response_id"], "item": 2}]
    assert _events(live, *again).json() == {"accepted": 1, "duplicates": 1, "expired": 0}


def test_an_item_cannot_be_added_to_a_response_id(live):
    rid = _rank(live, [1, 2], top_k=1)["response_id"]
    head, payload, items, tag = rid.split(".")
    other = _rank(live, [3])["response_id"].split(".")[2]
    for forged in (f"{head}.{payload}.{items}{other}.{tag}", f"{head}.{payload}.{other}.{tag}"):
        r = _events(live, {"type": "click", "response_id": forged, "item": 3})
        assert (r.status_code, r.json()["field"]) == (400, "events[0].response_id")


def test_response_ids_hold_a_fingerprint_per_returned_item():
    ids = ResponseIds(os.urandom(32), 60, max_items=2048)
    items = [f"item-{i}" for i in range(2048)]
    rid = ids.issue("ctr", 1, "", "default", items)
    assert len(rid) <= ids.max_length
    served = ids.parse(rid)
    assert all(ids.returned(served, i) for i in items)
    # A made-up item passes with probability 2048 / 2**32 each: 0.0095 of 20,000 expected, so one or more in
    # about 1 run of 100 (the nonce is random); four or more in 1 of 3 billion.
    assert sum(ids.returned(served, f"other-{i}") for i in range(20_000)) <= 3


def test_dedup_memory_is_fixed_in_bytes_and_never_counts_twice():
    budget = MIN_BYTES * 4  # a tiny table: 32 slots
    table = EventDedup(budget, window_s=3600)
    assert table.size <= budget
    now = 1_000_000
    keys = [(os.urandom(16), now - 1000 + i // 10) for i in range(5000)]  # ten events a second
    counted: dict[bytes, int] = {}
    outcomes: dict[str, int] = {}
    for i in range(len(keys)):
        # Each event, then a repeat of one sent 1, 10 or 100 events ago (most long evicted).
        for k, t in (keys[i], keys[max(0, i - (1, 10, 100)[i % 3])]):
            outcome = table.admit([(k, t)], now=now)[0]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "new":
                counted[k] = counted.get(k, 0) + 1
    assert max(counted.values()) == 1  # never twice, however full the table
    assert outcomes["new"] > 1000 and outcomes["duplicate"] > 1000 and outcomes["expired"] > 100, outcomes
    assert table.size <= budget and table.horizon > 0
    # An old key whose slot was reused is refused as expired, never counted again.
    assert table.admit([keys[0]], now=now) == ["expired"]
    table.close()


def _admit_in_child(path: str, key: bytes, out: multiprocessing.Queue) -> None:
    table = EventDedup(64 * 1024, window_s=3600, path=__import__("pathlib").Path(path))
    out.put(table.admit([(key, 2_000_000_000)], now=2_000_000_000)[0])
    table.close()


def test_dedup_table_is_shared_by_worker_processes(tmp_path):
    key = os.urandom(16)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_admit_in_child, args=(str(tmp_path), key, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(out.get(timeout=5) for _ in procs) == ["duplicate", "new"]
    (table_file,) = tmp_path.glob("events-dedup-*.bin")
    assert table_file.stat().st_size <= 64 * 1024 and (table_file.stat().st_mode & 0o777) == 0o600


def test_two_servers_sharing_key_and_table_count_an_event_once(serve, tmp_path):
    """What several workers on one port do: any of them attributes and de-duplicates any event."""
    key = os.urandom(32)
    a = serve(response_key=key, events_dedup_path=tmp_path)
    b = serve(response_key=key, events_dedup_path=tmp_path)
    rid = _rank(a, [1, 2, 3])["response_id"]
    click = {"type": "click", "response_id": rid, "item": 1}
    assert _events(a, click).json()["accepted"] == 1
    assert _events(b, click).json() == {"accepted": 0, "duplicates": 1, "expired": 0}


# -- malformed bodies: 4xx naming the field, never a 500 -----------------------------------------


def _infer(name: str = "user_id", shape=None, data=None, datatype: str = "BYTES") -> dict:
    t = {"name": name, "datatype": datatype, "shape": shape if shape is not None else [1],
         "data": data if data is not None else ["u1"]}
    return {"inputs": [t]}


DEEP = "[" * 40 + "]" * 40
HOSTILE = [
    # (path, raw body, field)
    ("/v2/models/ctr/infer", json.dumps(_infer(shape=[0, 10**30], data=[])), "inputs[0].shape"),
    ("/v2/models/ctr/infer", json.dumps(_infer(shape=[2**40, 2**40, 2**40], data=[])), "inputs[0].shape"),
    ("/v2/models/ctr/infer", json.dumps(_infer(shape=[10**400], data=[])), "inputs[0].shape"),
    ("/v2/models/ctr/infer", '{"inputs": [{"name": "ctx", "datatype": "FP32", "shape": [1, 4], '
                             '"data": [1e999, 0, 0, 0]}]}', "body"),
    ("/v2/models/ctr/infer", '{"inputs": [{"name": "ctx", "datatype": "FP32", "shape": [1, 4], '
                             '"data": [NaN, 0, 0, 0]}]}', "body"),
    ("/v2/models/ctr/infer", '{"inputs": [{"name": "ctx", "datatype": "FP64", "shape": [1], '
                             '"data": [Infinity]}]}', "body"),
    ("/v2/models/ctr/infer", '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + DEEP + '}]}',
     "body"),
    ("/v1/models/ctr:predict", '{"instances": ' + DEEP + '}', "body"),
    ("/v1/models/ctr:predict", '{"instances": [{"ctx": [1e400, 0, 0, 0], "user_id": "u1", "item_id": 1}]}',
     "body"),
    ("/v1/rank", '{"candidates": [1], "context": {"ctx": [1e309, 0, 0, 0]}}', "body"),
    ("/v1/rank", '{"candidates": [1], "context": {"ctx": ' + DEEP + '}}', "body"),
    ("/v1/rank", '{"candidates": [1], "user": {"features": {"x": -Infinity}}}', "body"),
    ("/v1/events", '{"events": ' + DEEP + '}', "body"),
    ("/v1/events", '{"type": "click", "response_id": "x", "timestamp": 1e999}', "body"),
    ("/control/v1/models/load", '{"path": ' + DEEP + '}', "body"),
]


@pytest.mark.parametrize(("path", "body", "field"), HOSTILE)
@pytest.mark.parametrize("chunked", [False, True], ids=["fast", "flask"])
def test_malformed_bodies_are_a_4xx_naming_the_field(live, path, body, field, chunked):
    from .conftest import TOKEN

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    content = body.encode()
    if chunked:  # no Content-Length: Flask reads it, not the fast routes
        r = live.http.post(path, content=iter([content]), headers=headers)
    else:
        r = live.http.post(path, content=content, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    doc = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer"))
    assert doc["field"] == field, r.text[:300]


def test_floats_that_overflow_their_datatype_are_refused_by_name(live):
    body = _infer("ctx", [1, demo.N_CTX], [1e39] + [0.0] * (demo.N_CTX - 1), "FP32")
    body["inputs"] += [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                       {"name": "item_id", "datatype": "INT64", "shape": [1], "data": [1]}]
    r = live.post("/v2/models/ctr/infer", json=body)
    assert r.status_code == 400 and r.json()["field"] == "ctx", r.text


def test_no_answer_carries_nan(live):
    """Answers are strict JSON: a model output that is not finite is an error, never NaN in the JSON."""
    for path, body in (("/v1/rank", {"candidates": [1, 2], "context": {"ctx": CTX}}),
                       ("/v2/models/ctr/infer", {"inputs": [
                           {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]},
                           {"name": "item_id", "datatype": "INT64", "shape": [1], "data": [1]},
                           {"name": "ctx", "datatype": "FP32", "shape": [1, demo.N_CTX], "data": CTX}]})):
        r = live.post(path, json=body)
        doc = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in the answer"))
        assert doc and all(math.isfinite(x["score"]) for x in doc.get("items", []))


# -- log lines ------------------------------------------------------------------------------------


def test_a_7mb_input_name_makes_no_7mb_log_line(serve):
    live = serve(access_log=True, max_body_bytes=16 * 1024 * 1024)
    name = "n" * (7 * 1024 * 1024)
    body = _infer(name)
    for path in ("/v2/models/ctr/infer", "/v1/models/ctr:predict"):
        r = live.post(path, json=body if "v2" in path else {"inputs": {name: [1]}})
        assert 400 <= r.status_code < 500 and len(r.content) < 2000, (path, r.status_code)
    r = live.post("/v2/models/" + "m" * 60_000 + "/infer", json=_infer())
    assert r.status_code == 404 and len(r.content) < 2000
    lines = live.running.log_text().splitlines()  # the server process's log: every line it wrote
    assert len(lines) >= 3
    for line in lines:
        assert len(line) < MAX_LOG_MESSAGE + MAX_LOG_TRACEBACK + 2000, line[:200]
        json.loads(line)
    access = [json.loads(x) for x in lines
              if '"logger":"edgerec.access"' in x.replace(" ", "") and "/v2/health/" not in x]
    assert len(access) == 3 and all(len(a["msg"]) < 600 for a in access)


def test_a_huge_exception_is_a_bounded_json_line():
    stream = io.StringIO()
    handler = configure_logging("info", stream)
    try:
        try:
            raise ValueError("v" * 7_000_000)
        except ValueError:
            logging.getLogger("edgerec.edge_server").exception("boom %s", "x" * 7_000_000)
        handler.flush()
        (line,) = stream.getvalue().splitlines()
        doc = json.loads(line)
        assert len(line) < MAX_LOG_MESSAGE + MAX_LOG_TRACEBACK + 500
        assert doc["msg"].startswith("boom xxx") and "more characters" in doc["exc"]
    finally:
        logging.getLogger("edgerec").removeHandler(handler)
        handler.close()


def test_rank_ids_as_numpy_are_plain_json(live):
    answer = _rank(live, [int(x) for x in np.arange(3)])
    assert [type(it["item"]) for it in answer["items"]] == [int, int, int]
