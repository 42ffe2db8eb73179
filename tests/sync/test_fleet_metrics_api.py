"""Private releases through the running service: signed node reports in, the A/B report out (API and CLI)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.node.fleet_metrics import metrics_report
from edgerec.sync.node.privacy import PrivacyConfig
from edgerec.sync.node.simulator import Arm, make_fleet
from edgerec.sync.protocol.errors import ApiError

from .helpers import node_client

HOUR = 3600
DAY0 = 1_767_225_600
CFG = PrivacyConfig(epsilon_per_window=0.5, bounds={"impression": 1, "click": 1, "conversion": 1})


def _send(env, nodes: int, config: PrivacyConfig = CFG, windows: int = 2):
    fleet = make_fleet(4, nodes, [Arm("control", 1, 0.05), Arm("treatment", 2, 0.07)], users=20_000, config=config)
    for w in range(windows):
        fleet.window(DAY0 + w * HOUR)
    states = [env.enroll(f"n{i}") for i in range(nodes)]
    answers = []
    for sim, state in zip(fleet.nodes, states, strict=True):
        mine = [r for n, r in fleet.releases if n == sim.node_id]
        answers.append(node_client(state).report(metrics_report(mine)))
    return answers


def test_releases_in_node_reports_make_the_ab_report(sync_env, tmp_path, monkeypatch):
    env = sync_env
    answers = _send(env, 5)
    assert all(a["duplicate"] is False for a in answers)
    doc = env.admin().ab_report("exp", ["control", "treatment"])
    control, treatment = doc["variants"]
    assert (doc["windows_released"], doc["windows_withheld"], doc["k"]) == (2, 0, 5)
    assert doc["epsilon_per_user"] == 1.0
    assert treatment["verdict"] == "better" and treatment["p_value"] < 1e-6
    assert control["impressions"] > 90_000 and treatment["lift"]["low"] > 0.2
    cells = env.admin().fleet_metrics("ctr")["cells"]
    assert len(cells) == 4 and all(c["released"] and c["nodes"] == 5 for c in cells)

    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    monkeypatch.setenv("COLUMNS", "250")
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")
    runner = CliRunner()
    out = runner.invoke(cli, ["admin", "ab-report", "exp", "--json", "--plot", str(tmp_path / "ab.png")],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["variants"][1]["verdict"] == "better"
    assert (tmp_path / "ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = runner.invoke(cli, ["admin", "ab-report", "exp"], catch_exceptions=False)
    assert "treatment" in table.stdout and "better" in table.stdout and "(control)" in table.stdout
    bad = runner.invoke(cli, ["admin", "ab-report", "Exp/1"])
    assert bad.exit_code != 0 and "experiment" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_fewer_than_k_nodes_are_withheld_through_the_service(sync_env):
    env = sync_env
    _send(env, 4, windows=1)
    doc = env.admin().ab_report("exp")
    assert (doc["windows_released"], doc["windows_withheld"]) == (0, 1)
    assert all(v["impressions"] == 0 for v in doc["variants"])
    cells = env.admin().fleet_metrics()["cells"]
    assert cells and all(c["released"] is False and c["counts"] is None and c["nodes"] is None for c in cells)


def test_a_control_that_is_not_a_variant_is_a_400_naming_it(sync_env):
    """Found by schemathesis: it was a KeyError and a 500."""
    env = sync_env
    _send(env, 5, windows=1)
    with pytest.raises(ApiError) as caught:
        env.admin().ab_report("exp", control="nope")
    assert (caught.value.status, caught.value.field) == (400, "control")
    assert "control" in str(caught.value) and "treatment" in str(caught.value)


def test_noise_free_releases_are_refused_by_default(sync_env):
    env = sync_env
    with pytest.raises(ApiError) as exc:
        _send(env, 1, PrivacyConfig(bounds={"click": 1}, mechanism="none"), windows=1)
    assert exc.value.status == 400 and "noise.mechanism" in exc.value.detail
    assert env.admin().reports("metrics") == []  # nothing of the refused report is kept


@pytest.mark.sync_config(metrics_accept_noise_free=True, metrics_min_nodes=1)
def test_a_service_started_for_tests_accepts_noise_free_releases(sync_env):
    env = sync_env
    _send(env, 1, PrivacyConfig(bounds={"impression": 1, "click": 1}, mechanism="none"), windows=1)
    doc = env.admin().ab_report("exp")
    assert doc["windows_released"] == 1 and doc["k"] == 1


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


def test_experiments_are_created_listed_and_stopped(run, sync_env):
    made = json.loads(run("admin", "experiment", "create", "exp", "--model", "ctr", "--variants",
                          "treatment=2:30,control=1:70", "--salt", "s1", "--json").stdout)
    assert made["control"] == "treatment" and made["variants"][1] == {"name": "control", "version": 1,
                                                                        "weight": 70.0}
    _send(sync_env, 5, windows=1)
    # the report follows the experiment's definition: its first variant is the control
    doc = json.loads(run("admin", "ab-report", "exp", "--json").stdout)
    assert doc["control"] == "treatment" and doc["variants"][1]["verdict"] == "worse"
    assert "exp" in run("admin", "experiment", "list").stdout
    assert json.loads(run("admin", "experiment", "stop", "exp", "--json").stdout)["state"] == "stopped"
    assert [e["state"] for e in json.loads(run("admin", "experiment", "list", "--json").stdout)] == ["stopped"]
    again = run("admin", "experiment", "create", "exp", "--model", "ctr", "--variants", "1,2", code=1)
    assert "exists already" in again.output


@pytest.mark.parametrize(("args", "field"), [
    (["--model", "ctr", "--variants", "1"], "--variants"),
    (["--model", "ctr", "--variants", "a=x:1,b=2"], "--variants"),
    (["--model", "ctr", "--variants", "1:0,2"], "--variants"),
    (["--model", "Ctr!", "--variants", "1,2"], "--model"),
    (["--model", "ctr", "--variants", "A=1,b=2"], "--variants name"),
])
def test_experiment_create_errors_name_the_field(run, args, field):
    out = run("admin", "experiment", "create", "exp", *args, code=1)
    assert out.output.count("\n") == 1 and field in out.output


@pytest.mark.parametrize(("env", "field", "value"), [
    ({"EDGEREC_SYNC_METRICS_ACCEPT_NOISE_FREE": "true"}, "metrics_accept_noise_free", True),
    ({"EDGEREC_SYNC_METRICS_ACCEPT_NOISE_FREE": "0"}, "metrics_accept_noise_free", False),
    ({"EDGEREC_SYNC_METRICS_MIN_NODES": "10"}, "metrics_min_nodes", 10),
    ({"EDGEREC_SYNC_ALERT_P99_MS": "80"}, "alert_p99_ms", 80.0),
])
def test_metrics_settings_from_the_environment(monkeypatch, env, field, value):
    from edgerec.sync.service.config import ServiceConfig

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert getattr(ServiceConfig.from_env(), field) == value


@pytest.mark.parametrize(("env", "message"), [
    ({"EDGEREC_SYNC_METRICS_ACCEPT_NOISE_FREE": "maybe"}, "^EDGEREC_SYNC_METRICS_ACCEPT_NOISE_FREE: 'maybe' is not"),
    ({"EDGEREC_SYNC_METRICS_ALPHA": "1.5"}, r"^EDGEREC_SYNC_METRICS_ALPHA: must be in \(0, 1\), got 1.5$"),
    ({"EDGEREC_SYNC_THREADS": "0"}, "^EDGEREC_SYNC_THREADS: must be a number > 0, got 0$"),
    ({"EDGEREC_SYNC_REPO_URL": "ftp://x"}, "^EDGEREC_SYNC_REPO_URL: expected an http"),
    ({"EDGEREC_SYNC_TIMESTAMP_EXPIRY_S": "99999999"}, "^EDGEREC_SYNC_TIMESTAMP_EXPIRY_S: must not exceed"),
])
def test_bad_service_settings_name_the_variable(monkeypatch, env, message):
    from edgerec.sync.protocol.errors import ConfigError
    from edgerec.sync.service.config import ServiceConfig

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=message):
        ServiceConfig.from_env()


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--repo-url", "ftp://x"], {}, "error: --repo-url: expected an http(s) URL"),
    ([], {"EDGEREC_SYNC_THREADS": "0"}, "error: EDGEREC_SYNC_THREADS: must be a number > 0, got 0"),
])
def test_sync_serve_setting_errors_name_what_the_user_wrote(tmp_path, args, env, says):
    """Not the dataclass field (``ServiceConfig.repo_url``): the option or the variable, one line, exit 1."""
    import os
    import subprocess

    from support.sync_replica import EDGEREC

    out = subprocess.run([EDGEREC, "sync", "serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", "0",
                          "--key-file", str(tmp_path / "k"), *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith(says), lines
    assert not (tmp_path / "x.db").exists()  # refused before anything was made
