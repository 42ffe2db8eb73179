"""Rollouts gated on outcomes through the service: halt and roll the canaries back, or advance and complete."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.node.privacy import MemoryBudgetLedger, PrivacyConfig, Releaser
from edgerec.sync.protocol.releases import Key
from edgerec.sync.service.fleet_metrics import policy_of, store_metrics
from edgerec.sync.service.store.models import Assignment

HOUR = 3600
CFG = PrivacyConfig(epsilon_per_window=1.0, bounds={"impression": 1, "click": 1})


@pytest.fixture
def run(monkeypatch, tmp_path, sync_env):
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    monkeypatch.setenv("COLUMNS", "250")
    save_credentials(Credentials(sync_env.url, sync_env.init.admin_token), tmp_path / "admin.json")
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return result

    return invoke


def _assigned(env) -> dict[str, tuple[int, bool]]:
    with env.service.db.read() as s:
        return {a.node_id: (a.version, a.rollback) for a in s.execute(select(Assignment)).scalars()}


def _window(env, phase_started: float, rates: dict[int, float], impressions: int) -> float:
    """Every node releases the window after ``phase_started`` for the version it is assigned; returns its end."""
    start = int(math.ceil(phase_started / HOUR) * HOUR)
    with env.service.db.write() as s:
        for node, (version, _) in _assigned(env).items():
            totals = {Key("ctr", version, "", ""): {"impression": impressions,
                                                    "click": round(impressions * rates[version])}}
            rel = Releaser(CFG, MemoryBudgetLedger()).release_totals(start, HOUR, totals)
            store_metrics(env.service.db, s, node, {"releases": [rel.to_doc()]}, policy_of(env.service.config),
                          now=start + HOUR + 1)
    return start + HOUR + 1


@pytest.mark.sync_config(metrics_min_nodes=1)
def test_a_worse_canary_halts_and_a_neutral_one_completes(sync_env, run):
    env = sync_env
    for v in (1, 2, 3):
        env.publish(v)
    for i in range(4):
        env.enroll(f"n{i}")
    run("admin", "rollout", "ctr", "1", "--channel", "stable")
    assert {v for v, _ in _assigned(env).values()} == {1}

    doc = json.loads(run("admin", "rollout", "ctr", "2", "--channel", "stable", "--phases", "50,100",
                         "--gate", "ctr>=-1%", "--json").stdout)
    assert (doc["state"], doc["phase"], doc["base_version"], doc["alpha"]) == ("running", 0, 1, 0.05)
    canaries = {n for n, (v, _) in _assigned(env).items() if v == 2}
    assert len(canaries) == 2
    assert env.service.step_outcome_gates(now=doc["phase_started"] + 10) == 0  # no window yet: waits
    end = _window(env, doc["phase_started"], {1: 0.05, 2: 0.0475}, impressions=1_000_000)  # canary -5 %
    assert env.service.step_outcome_gates(now=end) == 1
    [g] = json.loads(run("admin", "gates", "--json").stdout)
    assert g["state"] == "halted" and "canaries rolled back to v1" in g["reasons"][0]
    assert g["false_halt_rate_at_most"] == 0.05 and g["rho"] > 0
    assert all(v == 1 for v, _ in _assigned(env).values())
    assert all(rb for n, (_, rb) in _assigned(env).items() if n in canaries)  # signed rollbacks for the canaries
    assert "halted" in run("admin", "gates").stdout

    doc = json.loads(run("admin", "rollout", "ctr", "3", "--channel", "stable", "--phases", "50,100",
                         "--gate", "ctr>=-1%", "--json").stdout)
    end = _window(env, end, {1: 0.05, 3: 0.05}, impressions=20_000_000)  # the next window
    assert env.service.step_outcome_gates(now=end) == 1
    g = json.loads(run("admin", "gates", "--json").stdout)[-1]
    assert (g["state"], g["phase"], g["percent"]) == ("completed", 1, 100.0)
    assert {v for v, _ in _assigned(env).values()} == {3}


@pytest.mark.parametrize(("args", "field"), [
    (["--phases", "5,25,100"], "--phases"),
    (["--gate", "ctr>=-1%"], "--phases"),
    (["--phases", "5,x", "--gate", "ctr>=-1%"], "--phases"),
    (["--phases", "5,100", "--gate", "ctr>-1%"], "gate"),
])
def test_gated_rollout_errors_name_the_field(run, args, field):
    out = run("admin", "rollout", "ctr", "2", "--channel", "stable", *args, code=1)
    assert out.output.count("\n") == 1 and field in out.output


@pytest.mark.sync_config(metrics_min_nodes=1)
def test_a_gated_rollout_needs_a_base_version(sync_env, run):
    sync_env.publish(2)
    out = run("admin", "rollout", "ctr", "2", "--channel", "stable", "--phases", "5,100", "--gate", "ctr>=-1%",
              code=1)
    assert "version" in out.output and "base version" in out.output
