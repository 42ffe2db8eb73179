"""Experiments from ``edgerec admin experiment`` to the edge server, through signed assignments, with real processes:
``edgerec sync serve``, ``edgerec serve`` (two workers) and ``edgerec node run``."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fleet import EDGEREC, Node, SyncService, ctr_package, enroll, wait_serving
from support.net import wait_for

from edgerec.sdk.event_spool import SpooledEvent, parse_line
from edgerec.sdk.modeldir import ModelDir

pytestmark = pytest.mark.slow


@pytest.fixture
def sync(tmp_path: Path, publisher) -> Iterator[SyncService]:
    svc = SyncService(tmp_path / "sync", publisher.key.public_key()).start()
    for v in (1, 2):
        svc.publish(ctr_package(v, publisher.key, seed=v), v)
    svc.admin.rollout("ctr", 1, "stable", 100, [])
    yield svc
    svc.close()


@pytest.fixture
def node(sync: SyncService, tmp_path: Path) -> Iterator[Node]:
    n = enroll(sync, tmp_path / "n1", "edge-1", tags=["shop"])
    yield n
    n.stop()


def _admin(sync: SyncService, *args: str) -> str:
    env = {**os.environ, "EDGEREC_SERVER": sync.url, "EDGEREC_ADMIN_TOKEN": sync.init.admin_token,
           "EDGEREC_ADMIN_CONFIG": str(sync.root / "admin.json"), "COLUMNS": "250"}
    out = subprocess.run([*EDGEREC, "admin", *args], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _experiments(node: Node) -> list[dict]:
    with node.control() as c:
        return list(c.get("/control/v1/experiments").json()["experiments"])


def _rank(node: Node, user: str) -> httpx.Response:
    return httpx.post(f"{node.edge_url}/v1/rank", json={
        "experiment": "ab", "user": {"id": user}, "candidates": list(range(10)),
        "context": {"ctx": [0.1, 0.2, 0.3, 0.4]}, "top_k": 3}, timeout=10)


def test_an_experiment_reaches_the_edge_server_splits_users_and_stops(sync, node):
    node.start_edge("--workers", "2")
    node.run(interval=1)
    assert wait_serving(node, 1), node.daemon.text()[-3000:]
    _admin(sync, "experiment", "create", "ab", "--model", "ctr", "--variants", "control=1:3,treatment=2:1",
           "--tags", "shop", "--salt", "s1")
    assert wait_for(lambda: [e["name"] for e in _experiments(node)] == ["ab"], 60, 0.3), node.daemon.text()[-3000:]
    (exp,) = _experiments(node)
    assert (exp["model"], exp["salt"], [(v["name"], v["version"], v["weight"]) for v in exp["variants"]]) == (
        "ctr", "s1", [("control", 1, 3.0), ("treatment", 2, 1.0)])
    # Both versions are installed; v1 stays current and serving, v2 serves only its variant.
    assert (node.model_dir / "ctr" / "2.edgepkg").is_file() and ModelDir(node.model_dir).current("ctr") == 1
    assert node.serving() == {"ctr": 1}

    split: Counter[str] = Counter()
    for i in range(400):
        r = _rank(node, f"user-{i}")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["variant"], doc["version"]) in (("control", "1"), ("treatment", "2"))
        split[doc["variant"]] += 1
        events = [{"type": "impression", "response_id": doc["response_id"]},
                  {"type": "click", "response_id": doc["response_id"], "item": doc["items"][0]["item"]}]
        assert httpx.post(f"{node.edge_url}/v1/events", json={"events": events}, timeout=10).status_code == 200
    assert 250 <= split["control"] <= 350 and split["control"] + split["treatment"] == 400, split  # 3:1
    spooled = [rec for p in node.state.spool_dir.glob("*.jsonl") for raw in p.read_bytes().splitlines()
               for rec in [parse_line(raw)] if isinstance(rec, SpooledEvent)]
    by_variant = Counter((e.experiment, e.variant, e.version, e.kind) for e in spooled)
    assert by_variant == {("ab", "control", 1, "impression"): split["control"],
                          ("ab", "control", 1, "click"): split["control"],
                          ("ab", "treatment", 2, "impression"): split["treatment"],
                          ("ab", "treatment", 2, "click"): split["treatment"]}, by_variant

    _admin(sync, "experiment", "stop", "ab")
    assert wait_for(lambda: _experiments(node) == [], 60, 0.3), node.daemon.text()[-3000:]
    for i in range(10):  # every worker stopped it
        r = _rank(node, f"user-{i}")
        assert r.status_code == 404 and r.json()["field"] == "experiment"
    with node.control() as c:
        assert [(m["version"], m["state"]) for m in c.get("/control/v1/models").json()["models"]] == [(1, "serving")]


def test_an_experiment_for_other_tags_does_not_reach_the_node(sync, node):
    node.start_edge()
    _admin(sync, "experiment", "create", "ab", "--model", "ctr", "--variants", "control=1:1,treatment=2:1",
           "--tags", "elsewhere")
    code, out = node.run_once()
    assert code == 0 and "installed ctr v1" in out, out
    assert _experiments(node) == [] and not (node.model_dir / "ctr" / "2.edgepkg").exists()
