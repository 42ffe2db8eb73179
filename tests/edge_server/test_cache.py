"""Feature lookups: the in-process LRU with TTL, Redis (a real server), and /v1/rank reading through them."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from edgerec.edge_server.cache import MISSING, LocalCache, RedisCache
from edgerec.sdk import testing as demo


def test_local_cache_ttl_and_lru():
    c = LocalCache(max_entries=2)
    c.set_many("user", {"a": {"x": 1}, "b": None}, ttl_s=60)
    assert c.get_many("user", ["a", "b", "c"]) == [{"x": 1}, None, MISSING]
    c.get_many("user", ["a"])  # "a" is now the most recently used
    c.set_many("item", {"z": {}}, ttl_s=60)  # evicts the least recently used: "b"
    assert c.get_many("user", ["a", "b"]) == [{"x": 1}, MISSING]
    c.set_many("user", {"short": {"y": 2}}, ttl_s=0.05)
    time.sleep(0.08)
    assert c.get_many("user", ["short"]) == [MISSING]


@pytest.mark.redis
def test_redis_cache_round_trip_ttl_and_bad_values(redis_url):
    c = RedisCache(redis_url, prefix="edgerec:test:")
    c.set_many("item", {"1": {"ctx": [1, 2]}, "2": None}, ttl_s=60)
    assert c.get_many("item", ["1", "2", "3"]) == [{"ctx": [1, 2]}, None, MISSING]
    c.set_many("item", {"gone": {"a": 1}}, ttl_s=0.05)
    time.sleep(0.1)
    assert c.get_many("item", ["gone"]) == [MISSING]
    raw = redis.Redis.from_url(redis_url)
    raw.set("edgerec:test:item:junk", b"\xff not json")
    assert c.get_many("item", ["junk"]) == [MISSING]
    assert raw.pttl("edgerec:test:item:1") > 50_000
    raw.close()
    c.close()


def test_redis_down_is_a_miss_not_an_error(unused_port):
    c = RedisCache(f"redis://127.0.0.1:{unused_port}/0")
    assert c.get_many("user", ["a"]) == [MISSING]
    c.set_many("user", {"a": {}}, ttl_s=1)  # logged, not raised
    assert c.ping() is False


def _reference(user_row: int, items: list[int], ctx: dict[str, list[float]]) -> dict[int, float]:
    c = np.asarray([ctx[str(i)] for i in items], np.float32)
    ref = demo.ctr_reference(demo.ctr_weights(0), np.full(len(items), user_row), np.asarray(items), c)
    return {i: float(s) for i, s in zip(items, ref.ravel(), strict=True)}


def _counts(live) -> dict[str, float]:
    return {f"{kind}_{what}": live.metric_sum(f"edgerec_feature_cache_{what}_total", kind=kind)
            for kind in ("user", "item") for what in ("hits", "misses")}


def _rank_through_features(live, ctx):
    items = [3, 7, 11]
    before = _counts(live)
    doc = live.post("/v1/rank", json={"model": "ctrfs", "user": {"id": "alice"}, "candidates": items}).json()
    got = {i["item"]: i["score"] for i in doc["items"]}
    want = _reference(5, items, ctx)  # alice's profile says she is vocabulary user u5
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[i] for i in items], [want[i] for i in items], atol=1e-5)
    after = _counts(live)
    return {k: after[k] - before[k] for k in after}


def test_rank_reads_features_through_the_local_cache(serve, features_pkg, feature_db):
    db, ctx = feature_db
    live = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}")
    assert _rank_through_features(live, ctx) == {"user_hits": 0, "user_misses": 1, "item_hits": 0,
                                                 "item_misses": 3}
    assert _rank_through_features(live, ctx) == {"user_hits": 1, "user_misses": 0, "item_hits": 3,
                                                 "item_misses": 0}
    r = live.post("/v1/rank", json={"user": {"id": "alice"}, "candidates": [3, 99]})
    assert r.status_code == 400 and r.json()["field"] == "candidates[1]"
    cold = live.post("/v1/rank", json={"user": {"id": "zed"}, "candidates": [3]})
    assert cold.status_code == 200  # an unknown user ranks as out-of-vocabulary


@pytest.mark.redis
def test_redis_cache_is_shared_between_servers(serve, features_pkg, feature_db, redis_url):
    raw = redis.Redis.from_url(redis_url)
    for key in raw.scan_iter("edgerec:features:*"):
        raw.delete(key)
    raw.close()
    db, ctx = feature_db
    first = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}", cache_url=redis_url)
    second = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}", cache_url=redis_url)
    assert _rank_through_features(first, ctx) == {"user_hits": 0, "user_misses": 1, "item_hits": 0,
                                                  "item_misses": 3}
    assert _rank_through_features(second, ctx) == {"user_hits": 1, "user_misses": 0, "item_hits": 3,
                                                   "item_misses": 0}
    assert second.metric("edgerec_feature_cache_hits_total", kind="item", cache="redis") == 3
