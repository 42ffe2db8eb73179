"""Retention on the service (SQLite and PostgreSQL): planted old rows go, recent ones stay, once per interval."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner
from sqlalchemy import func, select
from support.net import wait_for

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.node.fleet_metrics import OpsRecorder
from edgerec.sync.node.privacy import PrivacyConfig
from edgerec.sync.node.simulator import Arm, make_fleet
from edgerec.sync.service import retention
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.fleet_metrics import MetricsPolicy, store_metrics
from edgerec.sync.service.retention import Pruned, prune, prune_due
from edgerec.sync.service.server import RunningServer
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import (
    MetricCount,
    MetricRelease,
    Node,
    NodeFailure,
    OpsWindowRow,
    Report,
)

DAY = 86400
NOW = 1_780_000_000.0
CONFIG = ServiceConfig(retention_reports_s=30 * DAY, retention_releases_s=90 * DAY, retention_ops_s=7 * DAY)
CFG = PrivacyConfig(epsilon_per_window=0.5, bounds={"impression": 1, "click": 1, "conversion": 1})


def plant(db: Database, nodes: list[str], ages_days: list[float], now: float) -> None:
    """For each node and age: two reports, a failure, a private release and an operational window,
    received ``age`` days before ``now``."""
    with db.write() as s:
        for n in nodes:
            if s.get(Node, n) is None:
                s.add(Node(id=n, name=n, signing_key="-", recipient_key="-", tags=[], enrolled=0.0))
    for age in ages_days:
        at = now - age * DAY
        start = int(at // 3600 * 3600) - 7200
        fleet = make_fleet(int(age), len(nodes), [Arm("control", 1, 0.05)], users=100, config=CFG)
        fleet.window(start)
        ops = OpsRecorder(grace_s=0)
        ops.request(start, "ctr", 1, 3.0)
        [window] = ops.closed(start + 300)
        with db.write() as s:
            for n, (_, rel) in zip(nodes, fleet.releases, strict=True):
                for kind in ("status", "metrics"):
                    s.add(Report(node_id=n, report_id=f"{kind}-{age}-{n}", kind=kind, body={}, received=at))
                s.add(NodeFailure(node_id=n, model="ctr", version=1, reason="x", at=at, bad=False, received=at))
                store_metrics(db, s, n, {"releases": [rel.to_doc()], "ops": [window.to_doc()]}, MetricsPolicy(),
                              now=at)


def rows(db: Database) -> dict[str, int]:
    with db.read() as s:
        return {t.__tablename__: s.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (Report, NodeFailure, MetricRelease, MetricCount, OpsWindowRow)}


def test_each_kind_goes_after_its_own_age(db, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 3)  # several batches per table
    nodes = [f"n{i}" for i in range(4)]
    plant(db, nodes, [1, 10, 40, 100], NOW)  # days old
    assert rows(db) == {"reports": 32, "node_failures": 16, "metric_releases": 16, "metric_counts": 16,
                        "ops_windows": 16}
    out = prune(db, CONFIG, NOW)
    # reports and failures > 30 days (40, 100); releases > 90 days (100); ops windows > 7 days (10, 40, 100)
    assert out == Pruned(reports=16, node_failures=8, metric_releases=4, ops_windows=12)
    assert rows(db) == {"reports": 16, "node_failures": 8, "metric_releases": 12, "metric_counts": 12,
                        "ops_windows": 4}
    with db.read() as s:
        assert min(s.execute(select(Report.received)).scalars()) == NOW - 10 * DAY
        assert min(s.execute(select(OpsWindowRow.received)).scalars()) == NOW - DAY
    assert prune(db, CONFIG, NOW) == Pruned()  # idempotent


def test_a_run_is_claimed_once_per_interval_over_replicas(db, db_url):
    plant(db, ["n0"], [100], NOW)
    other = Database(db_url)  # a second replica on the same database
    try:
        assert prune_due(db, CONFIG, NOW) == Pruned(2, 1, 1, 1)
        plant(db, ["n0"], [200], NOW)
        assert prune_due(other, CONFIG, NOW + 60) is None  # within the interval: not again, on any replica
        assert rows(db)["reports"] == 2
        assert prune_due(other, CONFIG, NOW + CONFIG.retention_interval_s) == Pruned(2, 1, 1, 1)
    finally:
        other.dispose()


def test_admin_prune_and_the_maintenance_thread(sync_env, tmp_path, monkeypatch):
    env = sync_env
    now = time.time()
    db = env.service.db
    plant(db, ["n-old"], [1, 300, 500], now)
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    monkeypatch.setenv("COLUMNS", "250")
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")
    out = CliRunner().invoke(cli, ["admin", "prune", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    # defaults: reports 30 d, releases 400 d, ops windows 14 d
    assert doc["removed"] == {"reports": 4, "node_failures": 2, "metric_releases": 1, "ops_windows": 2}
    assert doc["retention"]["releases_s"] == 400 * DAY
    assert rows(db)["ops_windows"] == 1
    text = CliRunner().invoke(cli, ["admin", "prune"], catch_exceptions=False).stdout
    assert text.startswith("removed 0 ") and "0 reports" in text and "releases 400 d" in text

    plant(db, ["n-old"], [600], now)  # the serving process's maintenance loop prunes it by itself
    server = RunningServer(env.service, maintenance=True).start()
    try:
        assert wait_for(lambda: rows(db)["ops_windows"] == 1 and rows(db)["reports"] == 2, timeout=60)
    finally:
        server.stop()
