"""Crash safety and offline-first, with real processes: ``kill -9`` of the daemon at random points, and the
sync service gone in the middle of a rollout.

The outage lasts ``EDGEREC_TEST_OUTAGE_S`` seconds (8 by default, to keep the suite short; the issue's
scenario is 30: ``EDGEREC_TEST_OUTAGE_S=30``).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fleet import Node, SyncService, ctr_package, enroll, pretty, status_row, wait_serving
from support.net import wait_for

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.modeldir import ModelDir
from edgerec.sdk.package import Package
from edgerec.sync.node.state import NodeState

pytestmark = pytest.mark.slow
OUTAGE_S = float(os.environ.get("EDGEREC_TEST_OUTAGE_S", "8"))
KILLS = 20
BIG = 3 * 1024 * 1024
RATE = "2M"


@pytest.fixture
def sync(tmp_path: Path, publisher) -> Iterator[SyncService]:
    svc = SyncService(tmp_path / "sync", publisher.key.public_key()).start()
    yield svc
    svc.close()


@pytest.fixture
def node(sync: SyncService, tmp_path: Path) -> Iterator[Node]:
    n = enroll(sync, tmp_path / "n1", "edge-1")
    yield n
    n.stop()


def _check_model_dir(node: Node, trusted: list, seen: list[int]) -> int:
    """No partial or unverified file under a name the server loads; ``current`` names a whole version."""
    folder = node.model_dir / "ctr"
    for p in folder.iterdir():
        if p.name == "current":
            continue
        if p.name.startswith("."):
            assert p.name.endswith(".tmp") and not p.name.endswith(".edgepkg"), p.name  # a killed write
            continue
        assert re.fullmatch(r"\d+\.edgepkg", p.name), p.name
        try:
            Package.open(p, trusted)
        except EdgeRecError as exc:
            pytest.fail(f"{p.name} in the model directory does not verify: {exc}")
    current = ModelDir(node.model_dir).current("ctr")
    assert current is not None and (folder / f"{current}.edgepkg").is_file()
    assert not seen or current >= seen[-1], f"current went back from {seen[-1]} to {current}"
    seen.append(current)
    return current


def test_kill_9_at_random_points_never_leaves_a_bad_file(sync, node, publisher, tmp_path):
    trusted = [publisher.key.public_key()]
    versions = list(range(2, 10))
    sync.publish(ctr_package(1, publisher.key, seed=1), 1)
    sizes = {v: sync.publish(ctr_package(v, publisher.key, seed=v, padding=BIG), v)["size"] for v in versions}
    sync.admin.rollout("ctr", 1, "stable", 100, [])
    node.start_edge()
    code, out = node.run_once()
    assert code == 0 and "installed ctr v1" in out, out

    # A kill in the middle of a download; the next run resumes it.
    sync.admin.rollout("ctr", 2, "stable", 100, [])
    partial = node.state.partial_dir
    daemon = node.run("--download-rate", RATE, interval=0.5, health_window=0.5)
    assert wait_for(lambda: any(p.stat().st_size > 256 * 1024 for p in partial.glob("*")), 60), daemon.text()
    daemon.kill()
    had = sum(p.stat().st_size for p in partial.glob("*"))
    assert 0 < had < sizes[2]
    daemon = node.run("--download-rate", RATE, interval=0.5, health_window=0.5)
    line = "downloaded stable/ctr/2.edgepkg: "
    assert wait_for(lambda: line in daemon.text(), 60), daemon.text()
    daemon.kill()
    fetched, resumed = map(int, re.search(line + r"(\d+) bytes fetched, (\d+) resumed", daemon.text()).groups())
    assert resumed >= had - 64 * 1024 and fetched + resumed == sizes[2] and fetched < sizes[2]

    # Kills at random points of download, verify, install and the health window.
    rng = random.Random(int(os.environ.get("EDGEREC_TEST_SEED", "9")))
    seen: list[int] = []
    target, phases = 2, {"download"}  # the kill above
    for _ in range(KILLS):
        daemon = node.run("--download-rate", RATE, interval=0.5, health_window=0.5)
        # Counted from its first line, not from the fork: on a loaded machine the imports alone take seconds.
        assert wait_for(lambda d=daemon: " started: a cycle every" in d.text(), 60), daemon.text()
        time.sleep(rng.uniform(0.0, 3.0))
        phases.add(_phase(daemon.text(), partial))
        daemon.kill()
        current = _check_model_dir(node, trusted, seen)
        serving = (node.serving() or {}).get("ctr")
        # The edge server (not killed here) serves current, or the version the killed daemon was watching.
        assert serving in (current, target), (serving, current, target)
        if current == target and target < versions[-1]:
            target += 1
            sync.admin.rollout("ctr", target, "stable", 100, [])

    # Left alone, the node converges to the desired version and cleans up after the kills.
    daemon = node.run(interval=0.5, health_window=0.5)
    assert wait_for(lambda: ModelDir(node.model_dir).current("ctr") == target, 120), daemon.text()
    assert wait_serving(node, target, 30)
    assert not [p for p in (node.model_dir / "ctr").iterdir() if p.name.startswith(".")]
    row = status_row(sync, node) if wait_for(lambda: status_row(sync, node).get("serving_version") == target, 30) \
        else pretty(status_row(sync, node))
    assert row["state"] == "serving" and row["last_failure"] is None, row
    assert target >= 3 and len(phases) >= 3, (target, phases)


def _phase(log: str, partial: Path) -> str:
    """Roughly where the daemon was when it was killed (for the coverage check)."""
    if any(p.stat().st_size for p in partial.glob("*")):
        return "download"
    lines = [ln for ln in log.splitlines() if "edgerec.sync.node" in ln]
    last = lines[-1] if lines else ""
    if "watching it" in last:
        return "health window"
    if "downloaded" in last:
        return "verify and write"
    return "other"


class Traffic:
    """``/v1/rank`` every 50 ms from a thread; counts answers by status."""

    def __init__(self, node: Node) -> None:
        self.url = f"{node.edge_url}/v1/rank"
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = {"user": {"id": "u7"}, "candidates": list(range(20)), "context": {"ctx": [0.1, 0.2, 0.3, 0.4]}}
        with httpx.Client(timeout=10) as c:
            while not self._stop.is_set():
                try:
                    code = c.post(self.url, json=body).status_code
                except httpx.HTTPError:
                    code = 0
                self.codes[code] = self.codes.get(code, 0) + 1
                self._stop.wait(0.05)

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(10)
        return self.codes


def test_service_outage_during_a_rollout(sync, node, publisher):
    for v in (1, 2):
        sync.publish(ctr_package(v, publisher.key, seed=v), v)
    sync.admin.rollout("ctr", 1, "stable", 100, [])
    daemon = node.run("--max-backoff", "2", serve=True, interval=1, health_window=2)
    assert wait_for(lambda: status_row(sync, node).get("serving_version") == 1, 90), daemon.text()
    traffic = Traffic(node)
    try:
        sync.admin.rollout("ctr", 2, "stable", 100, [])
        assert wait_serving(node, 2, 60), daemon.text()  # swapped in; its health window runs
        sync.stop(kill=True)
        down_at = time.time()
        time.sleep(OUTAGE_S)
        assert ModelDir(node.model_dir).current("ctr") == 2  # committed while the service was away
        reader = NodeState(node.state.dir)
        queued = [q.report_id for q in reader.db.pending()]
        assert queued, "nothing was queued during the outage"
        sync.start()
        up_at = time.time()
        assert wait_for(lambda: not reader.db.pending(), 30), daemon.text()
        assert wait_for(lambda: status_row(sync, node).get("installed_version") == 2, 30)
    finally:
        codes = traffic.stop()
    assert set(codes) == {200} and codes[200] > OUTAGE_S * 5, codes  # served throughout
    row = status_row(sync, node)
    assert (row["desired_version"], row["installed_version"], row["serving_version"], row["state"]) == (
        2, 2, 2, "serving")

    # Every report the node queued arrived, once each (the service keys them by the node's report id).
    sent = [q for q in reader.db.reports() if q.body["kind"] == "status"]
    received = [r["report_id"] for r in sync.admin.reports("status") if r["node_id"] == node.node_id]
    assert len(received) == len(set(received))
    assert {q.report_id for q in sent} == set(received)
    during = [q.report_id for q in sent if down_at <= q.created <= up_at]
    assert set(queued) <= set(during) and set(during) <= set(received)
    reader.close()

    # While away, the daemon backed off with jitter, within --max-backoff.
    delays = [float(d) for d in re.findall(r"unreachable \(\d+ tries\); next try in ([\d.]+) s", daemon.text())]
    assert len(delays) >= 3 and max(delays) <= 2.0 and len(set(delays)) > 1, delays
