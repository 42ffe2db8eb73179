"""Events to private aggregates through real processes: ``edgerec serve`` (two workers) spools accepted
events, ``edgerec node run`` releases closed windows, ``edgerec sync serve`` receives them.

Windows are one minute long (the shortest a node allows), so each test waits for a window to close.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.fleet import EDGEREC, Node, SyncService, ctr_package, enroll, wait_serving
from support.net import wait_for

from edgerec.sdk.user_keys import read_user_key, user_fingerprint

pytestmark = pytest.mark.slow
WINDOW = 60
METRICS = ["--metrics-window", str(WINDOW), "--ops-window", str(WINDOW), "--metrics-grace", "2"]


@pytest.fixture
def sync(tmp_path: Path, publisher) -> Iterator[SyncService]:
    svc = SyncService(tmp_path / "sync", publisher.key.public_key(),
                      env={"EDGEREC_SYNC_METRICS_ACCEPT_NOISE_FREE": "true", "EDGEREC_SYNC_METRICS_MIN_NODES": "1"})
    svc.start()
    svc.publish(ctr_package(1, publisher.key), 1)
    yield svc
    svc.close()


@pytest.fixture
def node(sync: SyncService, tmp_path: Path) -> Iterator[Node]:
    n = enroll(sync, tmp_path / "n1", "edge-1")
    yield n
    n.stop()


def _serve(sync: SyncService, node: Node, rollout: bool = True) -> None:
    if rollout:
        sync.admin.rollout("ctr", 1, "stable", 100, [])
    node.start_edge("--workers", "2")
    code, out = node.run_once()
    assert code == 0 and "installed ctr v1" in out, out
    assert wait_serving(node, 1)


def _user_events(node: Node, user: str, clicks: int) -> None:
    """One ranking for ``user``, an impression of it and ``clicks`` clicks on distinct items."""
    body = {"user": {"id": user}, "candidates": list(range(20)), "context": {"ctx": [0.1, 0.2, 0.3, 0.4]},
            "top_k": 10}
    r = httpx.post(f"{node.edge_url}/v1/rank", json=body, timeout=10)
    assert r.status_code == 200, r.text
    rid, items = r.json()["response_id"], [it["item"] for it in r.json()["items"]]
    events = [{"type": "impression", "response_id": rid}] + [
        {"type": "click", "response_id": rid, "item": items[i]} for i in range(clicks)]
    r = httpx.post(f"{node.edge_url}/v1/events", json={"events": events}, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def _at_window_start(margin: float = 15) -> int:
    """Sleep until a window has at least ``WINDOW - margin`` seconds left; its start."""
    if time.time() % WINDOW > WINDOW - margin:
        time.sleep(WINDOW - time.time() % WINDOW + 0.5)
    return int(time.time() // WINDOW * WINDOW)


def _cells(sync: SyncService, start: int) -> dict[str, dict[str, int]]:
    cells = [c for c in sync.admin.fleet_metrics("ctr")["cells"] if c["window_start"] == start]
    return {f'{c["model"]}/{c["version"]}/{c["variant"]}': c["counts"] for c in cells}


def _releases_of(sync: SyncService, start: int) -> int:
    return sum(1 for r in sync.admin.reports("metrics") for rel in r["body"].get("releases", [])
               if rel["window"]["start"] == start)


def test_events_reach_the_service_once_across_kill_9_and_forget_user(sync, node, tmp_path):
    _serve(sync, node)
    daemon_args = ["--noise-free-for-tests", *METRICS]
    node.run(*daemon_args)
    start = _at_window_start()
    for i in range(6):
        _user_events(node, f"u{i + 1}", 1)
    _user_events(node, "u20", 4)
    _user_events(node, "u20", 4)  # 8 clicks: the bound (5 per user and window) keeps 5
    time.sleep(2.5)  # drained into the daemon's memory, not released: the kill loses it from there
    node.daemon.kill()
    node.run(*daemon_args)
    for i in range(6, 10):
        _user_events(node, f"u{i + 1}", 2)
    _user_events(node, "u33", 3)
    # Forget u33 while the daemon runs (it holds the state lock once it says it started; before that the CLI
    # would erase from the spool itself): their events leave the spool and the open window.
    assert wait_for(lambda: " started: a cycle every" in node.daemon.text(), 60), node.daemon.text()[-3000:]
    fp = user_fingerprint(read_user_key(node.state.user_key_file), "u33")
    out = subprocess.run([*EDGEREC, "node", "forget-user", "u33", "--state-dir", str(node.state.dir),
                          "--edge-server", node.edge_url, "--control-token-file", str(node.token_file), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "erased by the running daemon" in out.stdout
    for folder in (node.state.dir, node.model_dir):
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                assert b"u33" not in data and fp.encode() not in data, p
    assert wait_for(lambda: _cells(sync, start), WINDOW + 40, 0.5), node.daemon.text()[-3000:]
    cells = _cells(sync, start)
    # 6 users x 1 click, u20 bounded to 5, 4 users x 2; u33 erased. Impressions: 6 + 2 + 4.
    assert cells == {"ctr/1/": {"impression": 12, "click": 6 + 5 + 8, "conversion": 0}}, cells

    # A kill -9 after the release was queued: the restarted daemon reads the spool again and skips it.
    node.daemon.kill()
    node.run(*daemon_args)
    nxt = start + WINDOW
    while time.time() < nxt:
        time.sleep(0.2)
    _user_events(node, "u2", 1)
    assert wait_for(lambda: _cells(sync, nxt), WINDOW + 40, 0.5), node.daemon.text()[-3000:]
    assert _cells(sync, nxt) == {"ctr/1/": {"impression": 1, "click": 1, "conversion": 0}}
    assert _cells(sync, start) == cells and _releases_of(sync, start) == 1
    ops = [w for r in sync.admin.reports("metrics") for w in r["body"].get("ops", [])
           if w["window"]["start"] == start]
    assert sum(m["requests"] for w in ops for m in w["models"] if m["model"] == "ctr") >= 12
    assert sum(sum(m["scores"]["counts"]) for w in ops for m in w["models"]) >= 12 * 10
    spooled = sorted(p.name for p in node.state.spool_dir.iterdir())
    assert all(int(n.split("-")[0]) >= start for n in spooled), spooled  # drained files go


def test_noise_free_releases_are_refused_by_a_service_not_started_for_tests(publisher, tmp_path):
    """Two nodes in one window (one wait, not two): a node releasing without noise is refused and drops its
    release; a node with noise, beside it, is accepted (below k = 5 nodes the service withholds the figures)."""
    svc = SyncService(tmp_path / "sync", publisher.key.public_key()).start()
    svc.publish(ctr_package(1, publisher.key), 1)
    rogue, honest = enroll(svc, tmp_path / "n1", "edge-1"), enroll(svc, tmp_path / "n2", "edge-2")
    try:
        _serve(svc, rogue)
        _serve(svc, honest, rollout=False)
        rogue.run("--noise-free-for-tests", *METRICS)
        honest.run(*METRICS)
        start = _at_window_start()
        _user_events(rogue, "u1", 1)
        _user_events(honest, "u2", 1)
        assert wait_for(lambda: "refused, dropped" in rogue.daemon.text(), WINDOW + 40, 0.5), \
            rogue.daemon.text()[-3000:]

        def released() -> list[tuple[str, dict[str, Any]]]:
            return [(r["node_id"], rel) for r in svc.admin.reports("metrics") for rel in r["body"]["releases"]
                    if rel["window"]["start"] >= start]

        assert wait_for(released, WINDOW + 40, 0.5), honest.daemon.text()[-3000:]
        assert {node for node, _ in released()} == {honest.node_id}
        assert not [r for r in svc.admin.reports("metrics") if r["node_id"] == rogue.node_id]
        rel = released()[0][1]
        assert rel["noise"]["mechanism"] == "discrete_laplace" and rel["noise"]["scale"] == 54
    finally:
        rogue.stop()
        honest.stop()
        svc.close()

