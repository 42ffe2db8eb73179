"""The admin CLI and the node CLI, run through the root ``edgerec`` command against a real service."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from support.net import free_port
from tuf.api.metadata import Metadata, Root

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Run ``edgerec ARGS`` in-process; the credentials file lives in tmp_path."""
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    for var in ("EDGEREC_SERVER", "EDGEREC_ADMIN_TOKEN", "EDGEREC_CA_CERT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # wide tables: rows stay on one line
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def _login(env, tmp_path) -> None:
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")


def test_admin_init_makes_keys_root_and_private_credentials(run, tmp_path, publisher, db_url):
    out = run("admin", "init", "--data-dir", str(tmp_path / "data"), "--keys-dir", str(tmp_path / "rootkeys"),
              "--publisher-key", str(publisher.public_path), "--db", db_url, "--root-keys", "3",
              "--threshold", "2", "--json")
    doc = json.loads(out.stdout)
    assert doc["threshold"] == 2 and len(doc["root_keys"]) == 3
    assert (os.stat(tmp_path / "admin.json").st_mode & 0o777) == 0o600
    assert json.loads((tmp_path / "admin.json").read_text())["token"].startswith("era_")
    for key in doc["root_keys"]:
        assert (os.stat(key).st_mode & 0o777) == 0o600
    assert not list((tmp_path / "data").rglob("root-*.key"))  # the service does not hold root keys
    root = Metadata[Root].from_file(str(tmp_path / "data" / "repository" / "metadata" / "1.root.json")).signed
    assert root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 3
    assert root.consistent_snapshot is True
    assert len(root.unrecognized_fields["x-edgerec"]["publisher_keys"]) == 1
    assert (tmp_path / "data" / "repository" / "metadata" / "timestamp.json").exists()


def test_publish_rollout_and_fleet_views(run, sync_env, tmp_path):
    env = sync_env
    _login(env, tmp_path)
    token = json.loads(run("admin", "enroll-token", "create", "--tags", "eu,store-7", "--expires", "1h",
                           "--out", str(tmp_path / "enroll.token"), "--json").stdout)
    assert token["tags"] == ["eu", "store-7"] and "token" not in token
    assert (os.stat(token["token_file"]).st_mode & 0o777) == 0o600
    state = tmp_path / "node"
    enrolled = json.loads(run("node", "enroll", "--server", env.url, "--token-file", token["token_file"],
                              "--state-dir", str(state), "--name", "edge-7", "--json").stdout)
    pkg = tmp_path / "ctr-1.edgepkg"
    pkg.write_bytes(env.packages[1])
    out = run("admin", "publish", str(pkg), "--channel", "stable")
    assert "published ctr v1 on stable" in out.stdout and "sealed when a rollout assigns it" in out.stdout
    roll = json.loads(run("admin", "rollout", "ctr", "1", "--channel", "stable", "--percent", "100",
                          "--json").stdout)
    assert (roll["version"], roll["percent"], roll["changed"], roll["envelopes"]) == (1, 100.0, 1, 1)

    out = run("node", "run", "--state-dir", str(state), "--model-dir", str(tmp_path / "models"), "--once")
    assert "installed ctr v1" in out.stdout
    nodes = json.loads(run("admin", "nodes", "--json").stdout)
    assert [(n["node_id"], n["name"], n["tags"]) for n in nodes] == [(enrolled["node_id"], "edge-7",
                                                                       ["eu", "store-7"])]
    m = nodes[0]["models"][0]
    assert (m["model"], m["desired_version"], m["installed_version"], m["state"]) == ("ctr", 1, 1, "installed")
    status = json.loads(run("admin", "status", "ctr", "--json").stdout)
    assert status["rollout"]["version"] == 1 and status["nodes"][0]["accelerator"] == "cpu"
    table = run("admin", "status", "ctr").stdout
    assert enrolled["node_id"] in table and "1 of 1 node(s) serve their desired version" in table
    assert enrolled["node_id"] in run("admin", "nodes").stdout
    assert json.loads(run("admin", "packages", "--json").stdout)[0]["target"] == "stable/ctr/1.edgepkg"
    local = json.loads(run("node", "status", "--state-dir", str(state), "--json").stdout)
    assert local["installed"]["ctr"]["version"] == 1
    edge = json.loads(run("node", "edge-config", "--state-dir", str(state), "--json").stdout)
    assert edge["recipient_id"] == enrolled["node_id"] and len(edge["trusted_keys"]) == 1
    assert edge["model_dir"] == str((tmp_path / "models").resolve())  # recorded by 'node run'
    assert "--recipient-key" in run("node", "edge-config", "--state-dir", str(state)).stdout


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_errors_are_one_line(run, sync_env, tmp_path, monkeypatch):
    env = sync_env
    _login(env, tmp_path)
    pkg = tmp_path / "ctr-1.edgepkg"
    pkg.write_bytes(env.packages[1])
    run("admin", "publish", str(pkg), "--channel", "stable", "--json")
    line = _one_line_error(run("admin", "publish", str(pkg), "--channel", "stable", code=1))
    assert "already published" in line and "409" in line
    line = _one_line_error(run("admin", "status", "nope", code=1))
    assert "unknown model 'nope'" in line
    line = _one_line_error(run("admin", "rollout", "ctr", "1", "--channel", "a/b", code=1))
    assert "not a valid name" in line
    monkeypatch.setenv("EDGEREC_ADMIN_TOKEN", "era_wrong")
    line = _one_line_error(run("admin", "nodes", code=1))
    assert "admin token is not valid" in line
    monkeypatch.delenv("EDGEREC_ADMIN_TOKEN")
    monkeypatch.setenv("EDGEREC_SERVER", f"http://127.0.0.1:{free_port()}")
    line = _one_line_error(run("admin", "nodes", code=1))
    assert "cannot reach the sync service" in line


def test_credentials_come_from_env_first_and_the_file_must_be_private(run, sync_env, tmp_path, monkeypatch):
    env = sync_env
    save_credentials(Credentials(env.url, "era_stale"), tmp_path / "admin.json")
    monkeypatch.setenv("EDGEREC_ADMIN_TOKEN", env.init.admin_token)
    assert json.loads(run("admin", "nodes", "--json").stdout) == []
    os.chmod(tmp_path / "admin.json", 0o644)
    line = _one_line_error(run("admin", "nodes", code=1))
    assert "readable by others" in line


def test_admin_login_checks_and_saves(run, sync_env, tmp_path):
    env = sync_env
    token_file = tmp_path / "admin.token"
    token_file.write_text(env.init.admin_token + "\n")
    token_file.chmod(0o600)
    out = run("admin", "--server", env.url, "login", "--token-file", str(token_file))
    assert "logged in" in out.stdout
    assert json.loads((tmp_path / "admin.json").read_text())["server"] == env.url
    token_file.write_text("era_nope")
    _one_line_error(run("admin", "--server", env.url, "login", "--token-file", str(token_file), code=1))


# -- secrets: never on a command line, never printed -------------------------------------


def test_tokens_on_the_command_line_are_refused(run, sync_env, tmp_path, monkeypatch):
    env = sync_env
    for args in (("admin", "--server", env.url, "login", "--token", env.init.admin_token),
                 ("node", "enroll", "--server", env.url, "--token", "ert_x", "--state-dir", str(tmp_path / "n"))):
        line = _one_line_error(run(*args, code=2))
        assert "--token would put a secret on the command line" in line and "--token-file" in line
        assert env.init.admin_token not in line
    assert not (tmp_path / "n").exists()
    # From the environment instead.
    monkeypatch.setenv("EDGEREC_ADMIN_TOKEN", env.init.admin_token)
    assert "logged in" in run("admin", "--server", env.url, "login").stdout
    monkeypatch.setenv("EDGEREC_ENROLL_TOKEN", env.token())
    doc = json.loads(run("node", "enroll", "--server", env.url, "--state-dir", str(tmp_path / "n"), "--json").stdout)
    assert doc["node_id"].startswith("n")


def test_token_files_must_be_private(run, sync_env, tmp_path):
    env = sync_env
    loose = tmp_path / "enroll.token"
    loose.write_text(env.token())
    loose.chmod(0o644)
    line = _one_line_error(run("node", "enroll", "--server", env.url, "--token-file", str(loose), "--state-dir",
                               str(tmp_path / "n"), code=1))
    assert "enrollment token file is accessible by group or others" in line and "chmod 600" in line


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://edgerec:s3cret-pw@127.0.0.1:1/edgerec", "postgresql://edgerec:***@127.0.0.1:1/edgerec"),
    # libpq (through psycopg and SQLAlchemy) takes a password from the query too
    ("postgresql+psycopg://edgerec@127.0.0.1:1/edgerec?sslmode=disable&password=s3cret-pw",
     "postgresql+psycopg://edgerec@127.0.0.1:1/edgerec?sslmode=disable&password=***"),
])
def test_database_password_never_on_the_command_line_nor_printed(run, tmp_path, publisher, monkeypatch, url, shown):
    line = _one_line_error(run("admin", "init", "--data-dir", str(tmp_path / "d"), "--keys-dir", str(tmp_path / "k"),
                               "--publisher-key", str(publisher.public_path), "--db", url, code=2))
    assert "EDGEREC_DB_URL" in line and "s3cret-pw" not in line
    assert not (tmp_path / "d").exists()
    # From the environment it is taken (the service keeps it in service.json, 0600) and never shown.
    monkeypatch.setenv("EDGEREC_DB_URL", url)
    from edgerec.sync.service.admin_init import InitResult

    seen = {}

    def fake_init(data_dir, keys_dir, pubs, db_url, root_keys, threshold):
        seen["db"] = db_url
        return InitResult(data_dir, db_url, [keys_dir / "root-1.key"], threshold, "era_not-shown")

    monkeypatch.setattr("edgerec.sync.service.admin_init.init_service", fake_init)
    args = ("admin", "init", "--data-dir", str(tmp_path / "d"), "--keys-dir", str(tmp_path / "k"),
            "--publisher-key", str(publisher.public_path), "--threshold", "1")
    doc = json.loads(run(*args, "--json").stdout)
    assert seen["db"] == url and doc["db"] == shown
    text = run(*args).output
    for out in (json.dumps(doc), text):
        assert "s3cret-pw" not in out and "era_not-shown" not in out
