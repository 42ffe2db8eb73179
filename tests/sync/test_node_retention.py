"""Retention on the node: planted old sent reports, cached targets, partial downloads and ledger days go;
what is installed, current, previous or accepted stays (time injected, files aged with utime)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from edgerec.sdk.modeldir import ModelDir
from edgerec.sync.node.privacy import SqliteBudgetLedger, utc_day
from edgerec.sync.node.retention import LEDGER_FILE, NodePruned, NodeRetention, prune_node
from edgerec.sync.node.state import Installed, NodeState
from edgerec.sync.protocol.assignments import Accepted
from edgerec.sync.protocol.errors import ConfigError

DAY = 86400
NOW = 1_780_000_000.0
RET = NodeRetention(sent_reports_s=7 * DAY, targets_s=7 * DAY, ledger_days=2, interval_s=3600)


def _aged(path: Path, data: bytes, age_days: float, now: float = NOW) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


def _target(state: NodeState, version: int, age_days: float, now: float = NOW) -> Path:
    return _aged(state.targets_dir / quote(f"stable/ctr/{version}.edgepkg", ""), b"x", age_days, now)


@pytest.fixture
def node(tmp_path):
    state = NodeState(tmp_path / "state")
    yield state, ModelDir(tmp_path / "models")
    state.close()


def test_old_things_go_and_what_is_needed_stays(node):
    state, models = node
    db = state.db
    for i, (sent_days_ago) in enumerate([30, 8, 1, None]):
        db.enqueue({"report_id": f"report-{i:04d}", "kind": "status"})
        if sent_days_ago is not None:
            with db.tx() as c:
                c.execute("UPDATE reports SET sent_at=?, created=? WHERE report_id=?",
                          (NOW - sent_days_ago * DAY, NOW - 40 * DAY, f"report-{i:04d}"))
    # v3 previous and v4 current in the model directory, v4 installed, v5 accepted (about to install)
    for v in (3, 4):
        models.write("ctr", v, b"pkg")
    models.set_current("ctr", 4)
    db.set_installed("ctr", Installed(4, str(models.path_for("ctr", 4)), NOW - 30 * DAY))
    db.set_accepted("ctr", Accepted(9, 5))
    targets = {v: _target(state, v, 30) for v in (1, 2, 3, 4, 5)}
    young = _target(state, 6, 1)
    stranger = _aged(state.targets_dir / "notes.txt", b"mine", 30)  # not a target this node wrote
    stale_part = _aged(state.partial_dir / ("a" * 64), b"half", 30)
    live_part = _aged(state.partial_dir / ("b" * 64), b"half", 0.01)
    ledger = SqliteBudgetLedger(state.dir / LEDGER_FILE)
    for days_ago in (5, 3, 1, 0):
        ledger.spend(utc_day(NOW - days_ago * DAY), 0.5, 12, f"w-{days_ago}", {"n": days_ago})
    ledger.close()

    out = prune_node(state, models, RET, now=NOW)
    assert out == NodePruned(sent_reports=2, targets=2, partials=1, ledger_windows=2)
    assert [(r.report_id, r.sent_at is None) for r in db.reports()] == [("report-0002", False), ("report-0003", True)]
    assert sorted(v for v, p in targets.items() if p.exists()) == [3, 4, 5]  # previous, current/installed, accepted
    assert young.exists() and stranger.exists() and live_part.exists() and not stale_part.exists()
    ledger = SqliteBudgetLedger(state.dir / LEDGER_FILE)
    try:
        assert [ledger.released(f"w-{d}") is not None for d in (5, 3, 1, 0)] == [False, False, True, True]
    finally:
        ledger.close()
    assert models.versions("ctr") == [4, 3]  # the model directory itself is never touched


def test_once_per_interval_and_idempotent(node):
    state, models = node
    _target(state, 1, 30)
    assert prune_node(state, models, RET, now=NOW) == NodePruned(targets=1)
    _target(state, 2, 30)
    assert prune_node(state, models, RET, now=NOW + 60) is None  # within the interval
    assert prune_node(state, models, RET, now=NOW + 3600) == NodePruned(targets=1)
    assert prune_node(state, models, RET, now=NOW + 7200) == NodePruned()  # nothing left to do
    assert not state.dir.joinpath(LEDGER_FILE).exists()  # no ledger is made by pruning one


@pytest.mark.parametrize("bad", [{"targets_s": 0}, {"ledger_days": -1}, {"interval_s": True}])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        NodeRetention(**bad)


def test_the_daemon_prunes_each_cycle_and_never_what_it_serves(sync_env):
    """Real installs through the service: the cached targets of current and previous stay, the older one goes."""
    env = sync_env
    state = env.enroll("edge-1")
    daemon = env.daemon(state, retention=NodeRetention(targets_s=7 * DAY, interval_s=1e-6))
    admin = env.admin()
    for v in (1, 2, 3):
        env.publish(v)
        admin.rollout("ctr", v, "stable", 100, [])
        assert daemon.run_once().installed == [("ctr", v)]
    cached = sorted(state.targets_dir.iterdir())
    assert [p.name for p in cached] == [quote(f"stable/ctr/{v}.edgepkg", "") for v in (1, 2, 3)]
    for p in cached:  # all downloaded a month ago
        os.utime(p, (time.time() - 30 * DAY, time.time() - 30 * DAY))
    again = daemon.run_once()
    assert again.reported and again.failures == {}
    assert [p.name for p in sorted(state.targets_dir.iterdir())] == [quote(f"stable/ctr/{v}.edgepkg", "")
                                                                      for v in (2, 3)]
    assert ModelDir(state.dir / "models").pointers() == {"ctr": 3}


def test_node_run_refuses_a_bad_retention_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli

    out = CliRunner().invoke(cli, ["node", "run", "--state-dir", str(tmp_path), "--retention-days", "0", "--once"])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "--retention-days" in out.output
