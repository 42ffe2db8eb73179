"""Each alert kind is raised by a planted cause and clears when the cause goes."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.node.fleet_metrics import OpsRecorder, metrics_report
from edgerec.sync.protocol.releases import LATENCY_EDGES_MS
from edgerec.sync.service.alerts import AlertPolicy, fleet_alerts, ops_alerts, p99_ms, psi
from edgerec.sync.service.store.models import Assignment, Node, NodeModel

from .helpers import node_client

T0 = 1_767_225_600
POLICY = AlertPolicy(p99_ms=100.0, error_rate=0.01, psi=0.2, min_requests=100, silent_s=900, mismatch_s=3600)
FLAT = [50] * 20  # the package's reference histogram: scores spread evenly


def _window(rec: OpsRecorder, start: int, node_lat: float = 5.0, errors: int = 0, score: float | None = None,
            n: int = 200, version: int = 1) -> None:
    for i in range(n):
        s = score if score is not None else (i % 20) * 0.05 + 0.025
        rec.request(start + i % 300, "ctr", version, node_lat, [s], error="internal" if i < errors else None)


def _ops(plan: list[dict]) -> list:
    rec = OpsRecorder(window_seconds=300, grace_s=0)
    for i, kw in enumerate(plan):
        _window(rec, T0 + 300 * i, **kw)
    return [("node-a", w) for w in rec.closed(T0 + 300 * len(plan))]


@pytest.mark.parametrize(("kind", "cause"), [
    ("p99_latency", {"node_lat": 400.0}),
    ("error_rate", {"errors": 10}),
    ("score_drift", {"score": 0.97}),
])
def test_ops_alert_is_raised_by_its_cause_and_clears(kind, cause):
    refs = {("ctr", 1): FLAT}
    healthy = ops_alerts(_ops([{}, {}]), refs, POLICY)
    assert healthy == []
    raised = ops_alerts(_ops([{}, cause, cause]), refs, POLICY)
    mine = [a for a in raised if a.kind == kind]
    assert {a.scope for a in mine} == {"node-a", "fleet"} and {a.kind for a in raised} == {kind}
    assert all(a.since == T0 + 300 and a.subject == "ctr v1" for a in mine)  # since the first bad window
    assert ops_alerts(_ops([{}, cause, {}]), refs, POLICY) == []  # cause gone: cleared


def test_small_windows_are_not_judged():
    assert ops_alerts(_ops([{"errors": 10, "n": 50}]), {}, POLICY) == []


def test_p99_and_psi_arithmetic():
    counts = [0] * (len(LATENCY_EDGES_MS) + 1)
    counts[3], counts[8] = 99, 1  # 99 requests <= 5 ms, 1 <= 200 ms
    assert p99_ms(counts) == 5.0
    counts[-1] = 1  # 101 requests: the 99th percentile (rank 99.99) is in the 200 ms bucket
    assert p99_ms(counts) == 200.0 and math.isnan(p99_ms([0] * 14))
    counts[-1] = 2  # 102: rank 100.98 is past the 200 ms bucket, in the overflow
    assert p99_ms(counts) == math.inf
    assert psi(FLAT, FLAT) == 0.0
    shifted = [100] * 10 + [0] * 10
    expected = 10 * (0.1 - 0.05) * math.log(0.1 / 0.05) + 10 * (1e-4 - 0.05) * math.log(1e-4 / 0.05)
    assert psi(shifted, FLAT) == pytest.approx(expected)


def test_fleet_alerts_raise_and_clear(db):
    now = T0 + 10_000
    with db.write() as s:
        s.add_all([Node(id=i, name=i, signing_key="-", recipient_key="-", tags=[], enrolled=T0, last_seen=now - 10)
                   for i in ("ok", "quiet", "behind", "empty")])
        s.flush()
        s.get(Node, "quiet").last_seen = now - 1000
        for node, have in (("ok", 2), ("behind", 1), ("empty", None)):
            s.add(Assignment(node_id=node, model="ctr", version=2, channel="stable", serial=1, rollback=False,
                             updated=now - 4000))
            s.add(NodeModel(node_id=node, model="ctr", installed_version=have, updated=now - 10))
    with db.read() as s:
        found = {(a.kind, a.scope) for a in fleet_alerts(s, POLICY, now)}
    assert found == {("node_silent", "quiet"), ("version_mismatch", "behind"), ("version_mismatch", "empty"),
                     ("serving_nothing", "empty")}
    with db.write() as s:  # the causes go
        s.get(Node, "quiet").last_seen = now
        s.get(NodeModel, ("behind", "ctr")).installed_version = 2
        s.get(NodeModel, ("empty", "ctr")).installed_version = 2
    with db.read() as s:
        assert fleet_alerts(s, POLICY, now) == []


@pytest.mark.sync_config(alert_min_requests=10)
def test_alerts_through_the_service_and_cli(sync_env, tmp_path, monkeypatch):
    """The demo package carries the converter's reference scores; a node serving all-high scores drifts."""
    import time

    env = sync_env
    env.publish(1)
    state = env.enroll("n0")
    rec = OpsRecorder(window_seconds=300, grace_s=0)
    start = int(time.time() // 300 * 300) - 600
    _window(rec, start, score=0.999, n=50)
    node_client(state).report(metrics_report([], rec.closed(start + 300)))
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")
    out = CliRunner().invoke(cli, ["admin", "alerts", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    drift = [a for a in doc["alerts"] if a["kind"] == "score_drift"]
    assert {a["scope"] for a in drift} == {state.identity().node_id, "fleet"}
    assert doc["thresholds"]["psi"] == 0.2
    table = CliRunner().invoke(cli, ["admin", "alerts"], catch_exceptions=False)
    assert "score_drift" in table.stdout


class _UnreachableStore:
    """A package store whose bucket does not answer (as S3BlobStore reports it): counts the reads tried."""

    def __init__(self) -> None:
        self.reads = 0

    def open(self, sha256: str):
        from edgerec.sync.protocol.errors import BlobUnavailableError

        self.reads += 1
        raise BlobUnavailableError("the package store cannot be reached")


def test_an_unreachable_store_costs_one_read_a_minute_not_one_per_package(db):
    """Drift alerts read each package's reference histogram; with the store down a /metrics scrape or an
    alerts call must not wait on every package's timeouts, every time."""
    from edgerec.sync.service.alerts import reference_histograms
    from edgerec.sync.service.store.models import PackageVersion

    with db.write() as s:
        s.add_all([PackageVersion(name="ctr", version=v, manifest_sha256="0" * 64, blob_sha256=f"{v:064x}",
                                  size=1, signer="-", artifacts=[], created=T0) for v in range(1, 6)])
    store = _UnreachableStore()
    with db.read() as s:
        assert reference_histograms(s, store, now=T0) == {}
        assert store.reads == 1  # the first package found the store down; the other four were not tried
        assert reference_histograms(s, store, now=T0 + 30) == {} and store.reads == 1  # within the minute
        reference_histograms(s, store, now=T0 + 61)
        assert store.reads == 2  # a minute later: tried again, once
    other = _UnreachableStore()  # another store of the same process keeps its own account
    with db.read() as s:
        reference_histograms(s, other, now=T0 + 62)
    assert other.reads == 1
