"""/v1/rank against the SDK's own ranking, and /v1/events feeding per-variant counters."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk import testing as demo
from edgerec.sdk.model import EdgeModel


def test_rank_matches_sdk_rank(live, packages, trusted_key):
    cands = list(range(0, 80, 3))
    ctx = [0.3, 0.1, 0.9, 0.5]
    r = live.post("/v1/rank", json={"user": {"id": "u7"}, "candidates": cands, "context": {"ctx": ctx},
                                    "top_k": 5})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "ctr" and doc["version"] == "1" and doc["variant"] == "default"
    assert doc["experiment"] is None and doc["response_id"].startswith("r2.")
    with EdgeModel.load(packages["v1"], [trusted_key], threads=1) as model:
        want = model.rank({"user": "u7"}, cands, {"ctx": ctx}, top_k=5)
    assert [i["item"] for i in doc["items"]] == [w.item for w in want]
    assert [i["rank"] for i in doc["items"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([i["score"] for i in doc["items"]], [w.score for w in want], rtol=1e-6)


def test_rank_with_feature_rows_and_user_features(live):
    body = {"model": "ctr", "user": {"features": {"user": "u2"}},
            "candidates": [{"item_id": 9}, {"item_id": 4}]}
    doc = live.post("/v1/rank", json=body).json()
    ref = demo.ctr_reference(demo.ctr_weights(0), np.array([2, 2]), np.array([9, 4]), np.zeros((2, 4), np.float32))
    assert {i["item"]: round(i["score"], 5) for i in doc["items"]} == {
        9: round(float(ref[0, 0]), 5), 4: round(float(ref[1, 0]), 5)}


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"candidates": []}, 400, "candidates"),
    ({"candidates": [1, 999]}, 400, "candidates"),
    ({"candidates": [1], "top_k": 0}, 400, "top_k"),
    ({"candidates": [1], "topk": 3}, 400, "topk"),
    ({"candidates": [1], "user": {"id": True}}, 400, "user.id"),
    ({"candidates": [1], "user": {"age": 3}}, 400, "user.age"),
    ({"candidates": [[1]]}, 400, "candidates[0]"),
    ({"candidates": [1], "model": "nope"}, 404, "model"),
    ({"candidates": [1], "version": 5}, 404, "version"),
    ({"candidates": [1], "experiment": "nope"}, 404, "experiment"),
    ({"candidates": [1], "user": {"id": "u1"}, "context": {"ctx": [1, 2]}}, 400, "context.ctx"),
    ({"candidates": [1]}, 400, "user.user"),
])
def test_bad_rank_bodies(live, body, status, field):
    r = live.post("/v1/rank", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_events_feed_variant_counters_exactly(live):
    rid = live.post("/v1/rank", json={"user": {"id": "u3"}, "candidates": [1, 2, 3]}).json()["response_id"]
    labels = {"model": "ctr", "version": "1", "experiment": "", "variant": "default"}
    before = {t: live.metric("edgerec_events_total", type=t, **labels) for t in ("impression", "click", "conversion")}
    events = [{"type": "impression", "response_id": rid, "item": i} for i in (1, 2, 3)]
    events += [{"type": "click", "response_id": rid, "item": 2}, {"type": "conversion", "response_id": rid, "item": 2}]
    r = live.post("/v1/events", json={"events": events})
    assert r.json() == {"accepted": 5, "duplicates": 0, "expired": 0}
    again = live.post("/v1/events", json={"type": "click", "response_id": rid, "item": 2})
    assert again.json() == {"accepted": 0, "duplicates": 1, "expired": 0}
    after = {t: live.metric("edgerec_events_total", type=t, **labels) for t in before}
    assert {t: after[t] - before[t] for t in before} == {"impression": 3, "click": 1, "conversion": 1}


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "click", "response_id": "r1.abc.def"}, "events[0].response_id"),
    ({"type": "click", "response_id": "made-up"}, "events[0].response_id"),
    ({"type": "like", "response_id": "x"}, "events[0].type"),
    ({"events": []}, "events"),
    ({"events": [{"type": "click"}]}, "events[0].response_id"),
    ({"events": [1]}, "events[0]"),
])
def test_bad_events(live, body, field):
    r = live.post("/v1/events", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_forged_response_id_is_refused(live):
    rid = live.post("/v1/rank", json={"user": {"id": "u1"}, "candidates": [1]}).json()["response_id"]
    head, payload, items, tag = rid.split(".")
    forged = f"{head}.{payload[:-2]}AA.{items}.{tag}"
    r = live.post("/v1/events", json={"type": "click", "response_id": forged})
    assert r.status_code == 400 and "not a response id" in r.json()["detail"]
