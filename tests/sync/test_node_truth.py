"""An edge node that tells the truth: real ``edgerec sync serve``, ``edgerec serve`` and ``edgerec node run``
processes on loopback.

- restarts: what ``current`` names serves after a SIGKILL of the edge server, rollbacks included;
- ``admin status`` shows a node whose edge server is down as not serving, and a silent node as stale;
- ``node run --serve`` restarts its edge server when it dies and stops it when it stops;
- health-gated activation: a version that fails warm-up and one that fails real requests are
  rolled back, marked bad, reported with the reason, not retried; the rollout pauses itself.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fleet import (
    EDGEREC,
    Node,
    SyncService,
    ctr_package,
    enroll,
    infer_body,
    log_lines,
    pretty,
    status_row,
    wait_serving,
)
from support.net import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def sync(tmp_path: Path, publisher) -> Iterator[SyncService]:
    svc = SyncService(tmp_path / "sync", publisher.key.public_key()).start()
    yield svc
    svc.close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for n in started:
        n.stop()


def _rank(node: Node) -> dict:
    body = {"user": {"id": "u7"}, "candidates": list(range(20)), "context": {"ctx": [0.1, 0.2, 0.3, 0.4]},
            "top_k": 3}
    r = httpx.post(f"{node.edge_url}/v1/rank", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _admin(sync: SyncService, *args: str) -> str:
    env = {**os.environ, "EDGEREC_SERVER": sync.url, "EDGEREC_ADMIN_TOKEN": sync.init.admin_token,
           "EDGEREC_ADMIN_CONFIG": str(sync.root / "admin.json"), "COLUMNS": "250"}
    out = subprocess.run([*EDGEREC, "admin", *args], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_restarts_serve_what_current_names(sync, nodes, tmp_path, publisher):
    """Install v1 then v2, SIGKILL the edge server, restart it: v2; roll back to v1, restart: v1."""
    for v in (1, 2):
        sync.publish(ctr_package(v, publisher.key, seed=v), v)
    node = enroll(sync, tmp_path / "n1", "edge-1")
    nodes.append(node)
    node.start_edge()
    assert node.serving() == {}
    for v in (1, 2):
        sync.admin.rollout("ctr", v, "stable", 100, [])
        code, out = node.run_once()
        assert code == 0 and f"installed ctr v{v}" in out, out
        assert node.serving() == {"ctr": v} and _rank(node)["version"] == str(v)
    assert os.readlink(node.model_dir / "ctr" / "current") == "2.edgepkg"

    node.edge.kill()
    node.start_edge()  # the same flags 'edgerec node edge-config' gives; no daemon has run since
    assert node.serving() == {"ctr": 2} and _rank(node)["version"] == "2"

    sync.admin.rollback("ctr", 1, None)
    code, out = node.run_once()
    assert code == 0 and "installed ctr v1" in out, out
    assert node.serving() == {"ctr": 1} and os.readlink(node.model_dir / "ctr" / "current") == "1.edgepkg"
    node.edge.kill()
    node.start_edge()
    assert node.serving() == {"ctr": 1} and _rank(node)["version"] == "1"
    row = status_row(sync, node)
    assert (row["desired_version"], row["installed_version"], row["serving_version"], row["state"],
            row["rollback"]) == (1, 1, 1, "serving", True)

    # The edge server goes down under a running daemon: the fleet view says so, then recovers.
    daemon = node.run(interval=0.5)
    node.edge.kill()
    assert wait_for(lambda: status_row(sync, node).get("state") == "not_serving", 30), pretty(status_row(sync, node))
    row = status_row(sync, node)
    assert row["serving_version"] is None and row["edge"] == "down" and row["installed_version"] == 1
    table = _admin(sync, "status", "ctr")
    assert "not serving" in table and "0 of 1 node(s) serve their desired version, 1 not serving" in table, table
    node.start_edge()
    assert wait_for(lambda: status_row(sync, node).get("state") == "serving", 30), pretty(status_row(sync, node))
    assert status_row(sync, node)["serving_version"] == 1

    # A node that stops checking in is flagged stale after 3 of its intervals.
    daemon.kill()
    assert wait_for(lambda: sync.admin.node(node.node_id)["stale"], 10)
    assert "(stale)" in _admin(sync, "node", node.node_id)


def test_serve_supervises_the_edge_server(sync, nodes, tmp_path, publisher):
    sync.publish(ctr_package(1, publisher.key, seed=1), 1)
    sync.admin.rollout("ctr", 1, "stable", 100, [])
    node = enroll(sync, tmp_path / "n1", "edge-1")
    nodes.append(node)
    daemon = node.run(serve=True, interval=0.5)
    assert wait_for(lambda: status_row(sync, node).get("installed_version") == 1, 90), daemon.text()
    assert node.serving() == {"ctr": 1}
    first = _edge_pid(node)
    os.kill(first, 9)
    # Restarted by the daemon, serving what current names.
    assert wait_for(lambda: (p := _edge_pid(node)) is not None and p != first and node.serving() == {"ctr": 1},
                    60), daemon.text()
    assert "edge server exited with -9; restarting" in daemon.text()
    second = _edge_pid(node)
    assert daemon.stop() == 0
    assert not _alive(second), "the edge server outlived its daemon"


def _edge_pid(node: Node) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"serve .*--port {node.edge_port}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` still runs 10 s from now."""
    return pid is not None and not wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)


class Traffic:
    """Requests of 1 to 3 rows to whatever version serves, from a thread; counts answers by status."""

    def __init__(self, node: Node) -> None:
        self.url = f"{node.edge_url}/v2/models/ctr/infer"
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    code = c.post(self.url, json=infer_body(1 + i % 3, seed=i)).status_code
                except httpx.HTTPError:
                    code = 0
                self.codes[code] = self.codes.get(code, 0) + 1
                self._stop.wait(0.02)

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(10)
        return self.codes


def test_bad_versions_roll_back_are_reported_and_pause_the_rollout(sync, nodes, tmp_path, publisher):
    sync.publish(ctr_package(1, publisher.key, seed=1), 1)
    sync.publish(ctr_package(2, publisher.key, seed=2, bad_warmup=True), 2)
    sync.publish(ctr_package(3, publisher.key, seed=3, fixed_batch=8), 3)
    sync.admin.rollout("ctr", 1, "stable", 100, [])
    node = enroll(sync, tmp_path / "n1", "edge-1")
    nodes.append(node)
    node.start_edge()
    traffic = Traffic(node)
    daemon = node.run(interval=0.5, health_window=3)
    try:
        assert wait_serving(node, 1), daemon.text()

        # v2 fails its warm-up: never swapped in, marked bad, reported, not tried again.
        sync.admin.rollout("ctr", 2, "stable", 100, [])
        assert wait_for(lambda: (status_row(sync, node).get("last_failure") or {}).get("version") == 2, 60), \
            daemon.text()
        row = status_row(sync, node)
        assert row["state"] == "failed" and row["serving_version"] == 1 and row["last_failure"]["bad"] is True
        assert "v2 failed its warm-up" in row["last_failure"]["reason"]
        assert "item_id" in row["last_failure"]["reason"]
        time.sleep(2.5)  # several more cycles with v2 still assigned
        assert len(list(log_lines(daemon.text(), "downloaded stable/ctr/2.edgepkg"))) == 1
        assert node.serving() == {"ctr": 1}

        # v3 passes warm-up but fails requests of other sizes: swapped in, watched, swapped back.
        sync.admin.rollout("ctr", 3, "stable", 100, [], max_failures=0)
        assert wait_for(lambda: sync.admin.status("ctr")["rollout"]["state"] == "paused", 60), daemon.text()
        assert node.serving() == {"ctr": 1} and os.readlink(node.model_dir / "ctr" / "current") == "1.edgepkg"
    finally:
        codes = traffic.stop()
    rollout = sync.admin.status("ctr")["rollout"]
    assert rollout["version"] == 3 and rollout["paused_reason"].startswith(
        "paused automatically: 1 of 1 node(s) failed v3"), rollout
    assert "paused automatically" in _admin(sync, "status", "ctr")
    assert codes.get(422, 0) > 0 and codes.get(200, 0) > 0 and codes.get(0, 0) == 0, codes
    history = sync.admin.node(node.node_id)["failures"]
    assert [(f["version"], f["bad"]) for f in history] == [(3, True), (2, True)], pretty(history)
    assert "v3 rolled back: health window:" in history[0]["reason"] and "failed" in history[0]["reason"]
    # The pause sent the node back to v1, which it serves: at its next check-in no failure is current.
    assert wait_for(lambda: status_row(sync, node).get("last_failure") is None, 30), pretty(status_row(sync, node))
    row = status_row(sync, node)
    assert (row["desired_version"], row["serving_version"], row["state"]) == (1, 1, "serving")
    shown = _admin(sync, "node", node.node_id)
    assert "failure history (2)" in shown and "warm-up" in shown
    local = node.state.db.bad_versions()
    assert sorted(local["ctr"]) == [2, 3]
    assert sorted(v for v in range(1, 4) if (node.model_dir / "ctr" / f"{v}.edgepkg").exists()) == [1]
