"""The nodes' releases in the service's database (SQLite and PostgreSQL): store once, refuse, report, prune."""

from __future__ import annotations

import pytest
from sqlalchemy import func, inspect, select, text, update

from edgerec.sync.node.fleet_metrics import OpsRecorder
from edgerec.sync.node.privacy import PrivacyConfig
from edgerec.sync.node.simulator import Arm, make_fleet
from edgerec.sync.protocol.errors import BadRequestError
from edgerec.sync.service.aggregate import ab_report, sum_releases
from edgerec.sync.service.fleet_metrics import (
    MetricsPolicy,
    experiment_report,
    load_ops,
    load_releases,
    store_metrics,
)
from edgerec.sync.service.retention import prune_ops, prune_releases
from edgerec.sync.service.store import SCHEMA_VERSION, Database, migrate
from edgerec.sync.service.store.models import MetricCount, Node, SchemaInfo

HOUR = 3600
DAY0 = 1_767_225_600
NOW = DAY0 + 30 * HOUR
CFG = PrivacyConfig(epsilon_per_window=0.5, bounds={"impression": 1, "click": 1, "conversion": 1})


def _nodes(db: Database, n: int) -> None:
    with db.write() as s:
        s.add_all([Node(id=f"node-{i:04d}", name=f"n{i}", signing_key="-", recipient_key="-", tags=[], enrolled=0.0)
                   for i in range(n)])


def _fleet(nodes: int = 6, seed: int = 3, config: PrivacyConfig = CFG):
    return make_fleet(seed, nodes, [Arm("control", 1, 0.05), Arm("treatment", 2, 0.06)], users=4000,
                      config=config)


def test_releases_are_stored_once_and_the_report_matches_the_in_memory_one(db):
    _nodes(db, 6)
    fleet = _fleet()
    for w in range(3):
        fleet.window(DAY0 + w * HOUR)
    policy = MetricsPolicy(k=5)
    with db.write() as s:
        for node_id, rel in fleet.releases:
            out = store_metrics(db, s, node_id, {"releases": [rel.to_doc()]}, policy, now=NOW)
            assert (out.releases, out.duplicates) == (1, 0)
    with db.write() as s:  # a retried report stores nothing twice
        node_id, rel = fleet.releases[0]
        assert store_metrics(db, s, node_id, {"releases": [rel.to_doc()]}, policy, now=NOW).duplicates == 1
    with db.read() as s:
        loaded = load_releases(s)
        report = experiment_report(s, "exp", policy, variants=["control", "treatment"])
    assert sorted(loaded, key=lambda p: (p[1].window_start, p[0])) == sorted(
        fleet.releases, key=lambda p: (p[1].window_start, p[0]))
    expected = ab_report(sum_releases(fleet.releases, 5), "exp", ["control", "treatment"])
    assert report == expected
    assert report.windows_released == 3 and report.epsilon_per_user == 1.5


@pytest.mark.parametrize(("policy", "patch", "message"), [
    (MetricsPolicy(), {"noise": {"mechanism": "none", "test_only": True}}, r"releases\[0\]\.noise\.mechanism: "),
    (MetricsPolicy(), {"window": {"start": NOW, "seconds": HOUR}}, r"releases\[0\]\.window: "),
    (MetricsPolicy(), {"format": "other"}, r"releases\[0\]\.format: "),
])
def test_refused_releases_name_the_field(db, policy, patch, message):
    _nodes(db, 1)
    fleet = _fleet(nodes=1)
    [(node_id, rel)] = fleet.window(DAY0)
    doc = {**rel.to_doc(), **patch}
    with db.write() as s, pytest.raises(BadRequestError, match=message):
        store_metrics(db, s, node_id, {"releases": [doc]}, policy, now=NOW)


def test_noise_free_releases_only_when_the_service_accepts_them(db):
    _nodes(db, 1)
    fleet = _fleet(nodes=1, config=PrivacyConfig(bounds={"click": 1}, mechanism="none"))
    [(node_id, rel)] = fleet.window(DAY0)
    with db.write() as s, pytest.raises(BadRequestError, match="noise-free"):
        store_metrics(db, s, node_id, {"releases": [rel.to_doc()]}, MetricsPolicy(), now=NOW)
    with db.write() as s:
        assert store_metrics(db, s, node_id, {"releases": [rel.to_doc()]}, MetricsPolicy(accept_noise_free=True),
                             now=NOW).releases == 1


def test_ops_windows_are_stored_and_pruned(db):
    _nodes(db, 2)
    ops = OpsRecorder(grace_s=0)
    ops.request(DAY0, "ctr", 1, 3.0, [0.2])
    [w] = ops.closed(DAY0 + 300)
    fleet = _fleet(nodes=2)
    fleet.window(DAY0)
    with db.write() as s:
        out = store_metrics(db, s, "node-0000", {"ops": [w.to_doc()], "releases": [fleet.releases[0][1].to_doc()]},
                            MetricsPolicy(), now=NOW)
        assert (out.releases, out.ops) == (1, 1)
        store_metrics(db, s, "node-0001", {"releases": [fleet.releases[1][1].to_doc()]}, MetricsPolicy(),
                      now=NOW + 100)
    with db.read() as s:
        assert load_ops(s) == [("node-0000", w)]
    assert (prune_releases(db, before=NOW + 50), prune_ops(db, before=NOW + 50)) == (1, 1)
    with db.read() as s:
        assert s.execute(select(func.count()).select_from(MetricCount)).scalar_one() == 2  # node-0001's only
    with db.read() as s:
        assert [n for n, _ in load_releases(s)] == ["node-0001"] and load_ops(s) == []


def test_a_version_2_database_gets_the_metrics_tables(db):
    with db.write() as s:
        for t in ("metric_counts", "metric_releases", "ops_windows", "experiments"):
            s.execute(text(f"DROP TABLE {t}"))
        s.execute(update(SchemaInfo).values(version=2))  # schema 2: what nodes serve, no fleet metrics yet
    assert migrate(db) == 2
    with db.engine.connect() as conn:
        assert {"metric_counts", "metric_releases", "ops_windows", "experiments"} <= set(
            inspect(conn).get_table_names())
    with db.read() as s:  # and on to the current schema from there
        assert s.execute(select(SchemaInfo.version)).scalar_one() == SCHEMA_VERSION
