"""The sync service under hostile input: 4xx naming the field, bounded logs, metrics, private files.

Every case runs against a real service on loopback (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import public_pem
from edgerec.sdk.log_bounds import MAX_LOG_MESSAGE, MAX_LOG_TRACEBACK, BoundedRecords
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.protocol.httpsig import RequestSigner
from edgerec.sync.service.store.db import Database
from edgerec.sync.service.store.models import EnrollToken, Node, Report

from .helpers import node_client

DEEP = "[" * 100 + "]" * 100
HOSTILE_BODIES = {
    "deep nesting": '{"token": ' + DEEP + "}",
    "very deep nesting": '{"token": ' + "[" * 30_000 + "]" * 30_000 + "}",
    "NaN": '{"token": NaN}',
    "Infinity": '{"token": -Infinity}',
    "float overflow": '{"token": 1e999}',
    "too many digits": '{"token": ' + "9" * 5000 + "}",
    "lone surrogate": '{"token": "\\ud800"}',
    "NUL": '{"token": "ert_\\u0000"}',
    "not an object": "[1, 2]",
    "not UTF-8": b'{"token": "\xff"}',
}


def _metrics(env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(env.url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def _signed(env, state, method: str, path: str, body: bytes | None = None) -> httpx.Response:
    ident = state.identity()
    headers = RequestSigner(ident.node_id, state.signing_key()).sign(
        method, env.url + path, body, {"Content-Type": "application/json"} if body else {})
    return httpx.request(method, env.url + path, content=body, headers=headers)


def _count(env, model) -> int:
    with env.service.db.read() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


# -- malformed input: 4xx, the field named, nothing stored -----------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
def test_hostile_json_on_enroll_reports_checkin_and_admin_is_a_4xx(sync_env, case):
    env = sync_env
    body = HOSTILE_BODIES[case]
    data = body if isinstance(body, bytes) else body.encode()
    state = env.enroll("edge-1")
    admin = {"Authorization": f"Bearer {env.init.admin_token}", "Content-Type": "application/json"}
    answers = {
        "enroll": httpx.post(env.url + "/api/v1/enroll", content=data,
                             headers={"Content-Type": "application/json"}),
        "reports": _signed(env, state, "POST", "/api/v1/node/reports", data),
        "checkin": _signed(env, state, "POST", "/api/v1/node/checkin", data),
        "enroll-tokens": httpx.post(env.url + "/api/v1/admin/enroll-tokens", content=data, headers=admin),
        "rollouts": httpx.post(env.url + "/api/v1/admin/rollouts", content=data, headers=admin),
    }
    for route, r in answers.items():
        assert r.status_code == 400, (route, r.status_code, r.text[:300])
        doc = r.json()
        assert doc["field"] == "body" and doc["error"] in ("malformed_body", "bad_request"), (route, doc)
        assert len(r.content) < 1000
    assert _count(env, Report) == 0 and _count(env, Node) == 1 and _count(env, EnrollToken) == 1


@pytest.mark.parametrize(("path", "doc", "field"), [
    ("/api/v1/admin/rollouts", {"model": "ctr", "version": 10**30, "channel": "stable"}, "version"),
    ("/api/v1/admin/rollouts", {"model": "ctr", "version": 1, "channel": "stable", "percent": 10**400}, "percent"),
    ("/api/v1/admin/rollouts", {"model": "ctr", "version": 1, "channel": "stable", "percent": 1e308}, "percent"),
    ("/api/v1/admin/rollouts", {"model": "ctr" * 30, "version": 1, "channel": "stable"}, "model"),
    ("/api/v1/admin/enroll-tokens", {"expires_s": 10**400}, "expires_s"),
    ("/api/v1/admin/enroll-tokens", {"tags": ["ok", "Not A Tag"]}, "tag"),
    ("/api/v1/admin/models/ctr/rollback", {"version": 2**63}, "version"),
    # refusals whose text starts with the field path name that field too
    ("/api/v1/admin/rollouts", {"model": "ctr", "version": 1, "channel": "stable", "max_failure_percent": 150},
     "max_failure_percent"),
    ("/api/v1/admin/experiments", {"name": "exp", "model": "ctr", "variants": [
        {"name": "a", "version": 1}, {"name": "b", "version": 1, "weight": 0}]}, "variants[1].weight"),
    ("/api/v1/admin/gated-rollouts", {"model": "ctr", "version": 1, "channel": "stable", "phases": [5, 100],
                                      "gates": ["ctr>=-1%"], "max_windows": 0}, "max_windows"),
])
def test_admin_numbers_and_names_out_of_range_are_a_4xx(sync_env, path, doc, field):
    env = sync_env
    env.publish(1)
    r = httpx.post(env.url + path, content=json.dumps(doc).encode(),
                   headers={"Authorization": f"Bearer {env.init.admin_token}"})
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert r.json()["detail"].startswith(field + ": "), r.text  # the text as it was


@pytest.mark.parametrize(("doc", "field"), [
    ({"kind": "status", "interval_s": -1}, "interval_s"),
    ({"kind": "status", "edge": "melting"}, "edge"),
    ({"kind": "metrics", "releases": [{"format": "edgerec.release/0"}]}, "releases[0].format"),
    ({"kind": "metrics", "ops": [{"format": "edgerec.ops/0"}]}, "ops[0].format"),
])
def test_node_report_refusals_name_the_field(sync_env, doc, field):
    env = sync_env
    state = env.enroll("edge-1")
    r = _signed(env, state, "POST", "/api/v1/node/reports",
                json.dumps({"report_id": "r-000001", **doc}).encode())
    assert (r.status_code, r.json()["field"]) == (400, field), r.text
    assert r.json()["detail"].startswith(field + ": "), r.text
    assert _count(env, Report) == 0


@pytest.mark.parametrize("path", ["/api/v1/admin/fleet-metrics", "/api/v1/admin/experiments/exp/report",
                                  "/api/v1/admin/reports"])
@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "NaN", "soon"])
def test_since_that_is_not_a_finite_time_is_a_400_naming_it(sync_env, path, since):
    r = httpx.get(f"{sync_env.url}{path}?since={since}",
                  headers={"Authorization": f"Bearer {sync_env.init.admin_token}"})
    assert (r.status_code, r.json()["field"]) == (400, "since"), r.text


def test_node_numbers_and_paths_out_of_range_are_a_4xx(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    r = _signed(env, state, "GET", f"/api/v1/node/envelopes/ctr/{10**30}")
    assert (r.status_code, r.json()["field"]) == (404, "version")
    report = {"report_id": "r-000001", "kind": "status",
              "models": [{"name": "ctr", "installed_version": 10**20, "failure": None}]}
    r = _signed(env, state, "POST", "/api/v1/node/reports", json.dumps(report).encode())
    assert (r.status_code, r.json()["field"]) == (400, "models[0].installed_version")
    report["models"] = [{"name": "ctr", "failure": {"version": 1, "reason": "x", "at": 10**300}}]
    r = _signed(env, state, "POST", "/api/v1/node/reports", json.dumps(report).encode())
    assert r.status_code == 201  # an implausible time becomes the time it arrived
    admin = {"Authorization": f"Bearer {env.init.admin_token}"}
    r = httpx.post(env.url + "/api/v1/admin/nodes/n%00x/revoke", headers=admin)
    assert (r.status_code, r.json()["field"]) == (400, "node_id")
    for query, field in (("since=nan", "since"), ("since=inf", "since"), ("kind=x%00", "kind"),
                         ("limit=many", "limit")):
        r = httpx.get(env.url + "/api/v1/admin/reports?" + query, headers=admin)
        assert (r.status_code, r.json()["field"]) == (400, field), query
    doc = httpx.get(env.url + "/api/v1/admin/reports", headers=admin).json()
    assert doc["reports"][0]["body"]["models"][0]["failure"]["at"] == 10**300  # stored as sent, valid JSON


# -- logs: one bounded line per refusal, no secrets --------------------------------------------


def test_refused_and_replayed_signed_requests_are_logged_once_and_counted(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    node_id = state.identity().node_id
    caplog = env.server_log()  # the service process's log records
    before = _metrics(env)
    body = json.dumps({"report_id": "r-replay-01", "kind": "metrics"}).encode()
    headers = RequestSigner(node_id, state.signing_key()).sign(
        "POST", env.url + "/api/v1/node/reports", body, {"Content-Type": "application/json"})
    assert httpx.post(env.url + "/api/v1/node/reports", content=body, headers=headers).status_code == 201
    caplog.clear()
    assert httpx.post(env.url + "/api/v1/node/reports", content=body, headers=headers).status_code == 401  # replay
    assert httpx.get(env.url + "/api/v1/node/assignments").status_code == 401  # unsigned
    stranger = RequestSigner("n0000000000000000", state.signing_key()).sign("GET", env.url + "/api/v1/node/assignments")
    assert httpx.get(env.url + "/api/v1/node/assignments", headers=stranger).status_code == 401
    wrong_path = RequestSigner(node_id, state.signing_key()).sign("GET", env.url + "/api/v1/node/assignments")
    assert httpx.get(env.url + "/api/v1/node/envelopes/ctr/1", headers=wrong_path).status_code == 401
    env.admin().revoke(node_id)
    assert _signed(env, state, "GET", "/api/v1/node/assignments").status_code == 403

    lines = [r for r in caplog.records if r.getMessage().startswith("signed request refused")]
    reasons = [r.getMessage().split("(", 1)[1].split(")", 1)[0] for r in lines]
    assert reasons == ["replayed", "unsigned", "unknown_node", "bad_signature", "revoked"]
    assert all(r.levelno == logging.WARNING for r in lines)
    # One line each: no second "refused" line for the same request.
    assert not [r for r in caplog.records if r.getMessage().startswith("refused (") and "/node/" in r.getMessage()]
    secrets = [headers["Signature"], headers["Signature-Input"], wrong_path["Signature"], env.init.admin_token]
    for r in caplog.records:
        text = r.getMessage()
        assert "\n" not in text and len(text) < 1500
        assert not any(s in text for s in secrets)
    assert node_id in lines[0].getMessage() and "POST /api/v1/node/reports" in lines[0].getMessage()

    after = _metrics(env)
    for reason in ("replayed", "unsigned", "unknown_node", "bad_signature", "revoked"):
        got = _value(after, "edgerec_sync_refusals_total", reason=reason) - _value(
            before, "edgerec_sync_refusals_total", reason=reason)
        assert got == 1, reason


def test_log_lines_are_bounded_whatever_the_input(sync_env):
    env = sync_env
    caplog = env.server_log()  # the service process's log records
    huge = "a" * 60_000  # in the path: under the URL limits, far over a log line
    assert httpx.get(f"{env.url}/api/v1/node/envelopes/{huge}/1").status_code == 401
    admin = {"Authorization": f"Bearer {env.init.admin_token}"}
    assert httpx.get(f"{env.url}/api/v1/admin/models/{huge}", headers=admin).status_code == 400
    assert caplog.records
    for r in caplog.records:
        assert len(r.getMessage()) <= MAX_LOG_MESSAGE + 100, r.getMessage()[:200]
    # The net under every sync logger: a 7 MB message and traceback are cut before any handler.
    record = logging.LogRecord("edgerec.sync", logging.ERROR, __file__, 1, "boom %s", ("x" * 7_000_000,), None)
    try:
        raise ValueError("y" * 7_000_000)
    except ValueError:
        record.exc_info = sys.exc_info()
    BoundedRecords().filter(record)
    line = logging.Formatter().format(record)
    assert len(line) < MAX_LOG_MESSAGE + MAX_LOG_TRACEBACK + 200


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_count_requests_refusals_and_nodes_by_state(sync_env):
    env = sync_env
    before = _metrics(env)
    assert _value(before, "edgerec_sync_nodes", state="unknown") == 0
    ok, bad, gone = env.enroll("ok"), env.enroll("bad"), env.enroll("gone")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    assert env.daemon(ok).run_once().installed == [("ctr", 1)]
    report = {"report_id": "r-bad-0001", "kind": "status", "health": "<script>", "models": []}
    assert _signed(env, bad, "POST", "/api/v1/node/reports", json.dumps(report).encode()).status_code == 201
    env.admin().revoke(gone.identity().node_id)
    assert httpx.post(env.url + "/api/v1/enroll", content=b"{").status_code == 400
    assert httpx.get(env.url + "/no/such/route").status_code == 404
    assert httpx.request("BREW", env.url + "/api/v1/health").status_code == 405
    after = _metrics(env)
    states = {s: _value(after, "edgerec_sync_nodes", state=s) for s in ("ok", "degraded", "unknown", "revoked")}
    assert states == {"ok": 1, "degraded": 1, "unknown": 0, "revoked": 1}

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("edgerec_sync_requests_total", endpoint="node.enroll", code="201") == 3
    assert delta("edgerec_sync_requests_total", endpoint="node.enroll", code="400") == 1
    assert delta("edgerec_sync_requests_total", endpoint="node.checkin", method="POST", code="200") == 1
    assert delta("edgerec_sync_requests_total", endpoint="unmatched", code="404") == 1
    assert delta("edgerec_sync_requests_total", method="other", code="405") == 1  # no label from the client
    assert delta("edgerec_sync_request_duration_seconds_count", endpoint="node.checkin") == 1
    assert delta("edgerec_sync_refusals_total", endpoint="node.enroll", reason="malformed_body") == 1
    assert delta("edgerec_sync_refusals_total", endpoint="unmatched", reason="not_found") == 1
    labels = {v for (n, ls), _ in after.items() for k, v in ls if n.startswith("edgerec_sync")}
    assert "<script>" not in labels and "BREW" not in labels


def test_metrics_sum_worker_processes_in_multiprocess_mode(sync_env, tmp_path):
    """Two worker processes record into PROMETHEUS_MULTIPROC_DIR; a third renders their sum."""
    env = sync_env
    prom = tmp_path / "prom"
    prom.mkdir()
    script = textwrap.dedent(f"""
        import sys
        from edgerec.sync.service.metrics import SyncMetrics
        from edgerec.sync.service.store.db import Database
        m = SyncMetrics(Database({str(env.service.db.url.render_as_string(hide_password=False))!r}))
        if sys.argv[1] == "render":
            sys.stdout.write(m.render()[0].decode())
        else:
            for _ in range(int(sys.argv[1])):
                m.request("node.checkin", "POST", 200, 0.01)
            m.refusal("node.reports", "replayed")
    """)
    environ = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", script, n], env=environ, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", script, "render"], env=environ, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(out) for s in fam.samples}
    assert _value(samples, "edgerec_sync_requests_total", endpoint="node.checkin", code="200") == 7
    assert _value(samples, "edgerec_sync_request_duration_seconds_count", endpoint="node.checkin") == 7
    assert _value(samples, "edgerec_sync_refusals_total", reason="replayed") == 2
    assert ("edgerec_sync_nodes", (("state", "unknown"),)) in samples


# -- files and views ---------------------------------------------------------------------------


def test_sqlite_database_files_are_private(sync_env, tmp_path):
    env = sync_env
    if env.service.db.dialect != "sqlite":
        pytest.skip("SQLite only")
    env.enroll("edge-1")
    db = env.service.db.url.database
    for name in (db, db + "-wal", db + "-shm"):
        if os.path.exists(name):
            assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    loose = tmp_path / "loose.db"
    loose.write_bytes(b"")
    loose.chmod(0o644)
    Database(f"sqlite:///{loose}").dispose()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    fresh = tmp_path / "sub" / "fresh.db"
    Database(f"sqlite:///{fresh}").dispose()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


NASTY = "[bold red]pwned[/] \x1b[2J\x1b]0;title\x07 [link=http://x]y[/link]"
HEALTH = "[red]x[/red] \x1b[31mhot"  # a node's health: markup and a colour sequence


def test_admin_views_show_node_strings_as_data(sync_env, tmp_path, monkeypatch):
    env = sync_env
    state = env.enroll(NASTY)
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    report = {"report_id": "r-nasty-001", "kind": "status", "health": HEALTH, "accelerator": NASTY[:32],
              "models": [{"name": "ctr", "state": NASTY[:32], "failure": {"version": 1, "reason": NASTY}}]}
    assert _signed(env, state, "POST", "/api/v1/node/reports", json.dumps(report).encode()).status_code == 201
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    monkeypatch.setenv("COLUMNS", "400")
    runner = CliRunner()
    node_id = state.identity().node_id
    for args in (["admin", "nodes"], ["admin", "status", "ctr"], ["admin", "node", node_id]):
        out = runner.invoke(cli, args, catch_exceptions=False)
        assert out.exit_code == 0, out.output
        assert "\x1b" not in out.output and "\x07" not in out.output
        assert "[bold red]pwned[/]" in out.output and "\\x1b[2J" in out.output
        if args[1] != "status":  # the views that show health: its markup and escape sequence as text
            assert "[red]x[/red] \\x1b[31mhot" in out.output, out.output
        doc = json.loads(runner.invoke(cli, [*args, "--json"], catch_exceptions=False).stdout)
        row = doc[0] if isinstance(doc, list) else doc["nodes"][0] if args[1] == "status" else doc
        assert row["health"] == HEALTH and row["name"] == NASTY  # the JSON carries the data unchanged
    out = runner.invoke(cli, ["admin", "node", node_id], catch_exceptions=False).output
    header = out.splitlines()[0]  # node-supplied strings in the one-line header, not only in its tables
    assert header.startswith(f"node {node_id} ([bold red]pwned[/] \\x1b[2J\\x1b]0;title\\x07 [link=http://x]y[/link], "
                             "tags -): last seen "), header
    assert header.endswith("health [red]x[/red] \\x1b[31mhot"), header
    nodes = json.loads(runner.invoke(cli, ["admin", "nodes", "--json"]).stdout)
    assert nodes[0]["name"] == NASTY and nodes[0]["models"][0]["last_failure"]["reason"] == NASTY


def test_node_keys_sent_at_enrollment_are_data_too(sync_env):
    """A public key PEM with trailing junk or of the wrong kind is a 400 naming the key."""
    env = sync_env
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
    doc = {"token": env.token(), "signing_key": pem, "recipient_key": pem}
    r = httpx.post(env.url + "/api/v1/enroll", json=doc)
    assert (r.status_code, r.json()["field"]) == (400, "recipient_key")
    assert node_client  # the helper stays importable for the other cases
