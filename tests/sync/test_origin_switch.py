"""Moving the fleet to another repository origin through signed configuration (``admin repo-url set``).

Real parts: the service (granian, a child process), two static origins (Debian's nginx with docs/operations.md's
configuration, each with its own access log), the node daemon's cycles, and a restarted daemon as its own
process (``edgerec node run --once``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from click.testing import CliRunner
from support.net import free_port
from support.nginx import Nginx, doc_config

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.node.client import NodeClient, http_client
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.origin import REFUSED
from edgerec.sync.node.state import NodeState
from edgerec.sync.service.server import RunningServer

EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]


class Origin:
    """nginx serving ``root`` as a repository origin on a free port, with an access log of its own."""

    def __init__(self, binary: str, root: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root, self.log = root, log
        snippet = doc_config("edgerec-origin.conf")
        snippet = snippet.replace("listen 127.0.0.1:8480;", f"listen 127.0.0.1:{self.port};\n    access_log {log};")
        snippet = snippet.replace("/var/lib/edgerec/sync/repository", str(root))
        root.mkdir(parents=True, exist_ok=True)
        self.nginx = Nginx(binary, snippet, [self.port])

    def requests(self) -> list[str]:
        """The paths asked for so far (nginx writes its access log line by line)."""
        if not self.log.exists():
            return []
        return [line.split('"')[1].split()[1] for line in self.log.read_text().splitlines() if '"' in line]

    def stop(self) -> None:
        self.nginx.stop()


def _mirror(src: Path, dest: Path) -> None:
    """Copy the service's repository folder to a CDN's (what an operator's sync job does)."""
    shutil.copytree(src, dest, dirs_exist_ok=True)


def _origin_of(state_dir: Path) -> tuple[str, str]:
    ident = NodeState(state_dir).identity()
    return ident.metadata_url, ident.targets_url


@pytest.mark.slow
def test_the_node_follows_a_new_origin_once_it_serves_the_repository(make_env, nginx_binary, tmp_path, caplog):
    cdn_root = tmp_path / "cdn"
    env = make_env()
    origins: list[Origin] = []
    try:
        one = Origin(nginx_binary, env.data_dir / "repository", tmp_path / "one.log")
        origins.append(one)
        two = Origin(nginx_binary, cdn_root, tmp_path / "two.log")  # empty for now
        origins.append(two)
        admin = env.admin()
        assert admin.set_repo_url(one.url) == {"repo_url": one.url, "source": "admin"}
        enroll_node(tmp_path / "node", env.url, env.token(), "cdn-node")
        assert _origin_of(tmp_path / "node") == (one.url + "/metadata/", one.url + "/targets/")

        env.publish(1)
        admin.rollout("ctr", 1, "stable", 100, [])
        daemon = env.daemon(NodeState(tmp_path / "node"))
        assert daemon.run_once().installed == [("ctr", 1)]
        assert two.requests() == []

        # Origin 2 serves nothing yet: the node refuses to switch, says so once, installs from origin 1.
        assert admin.set_repo_url(two.url)["repo_url"] == two.url
        env.publish(2)
        admin.rollout("ctr", 2, "stable", 100, [])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgerec.sync.node"):
            result = daemon.run_once()
        assert result.installed == [("ctr", 2)] and result.failures == {}
        assert _origin_of(tmp_path / "node")[0] == one.url + "/metadata/"
        refusals = [r.getMessage() for r in caplog.records if "repository origin" in r.getMessage()]
        assert len(refusals) == 1 and two.url in refusals[0] and "404" in refusals[0], refusals
        assert "\n" not in refusals[0] and len(refusals[0]) < 1000
        assert "/metadata/timestamp.json" in two.requests()
        refused = json.loads(daemon.db.setting(REFUSED) or "null")
        assert refused["url"] == two.url + "/metadata/"

        # Origin 2 lags behind (a copy from before v3 was published on beta): older than what the node has.
        _mirror(env.data_dir / "repository", cdn_root)
        env.publish(3, "beta")
        (tmp_path / "node" / ".origin-probe-killed").mkdir()  # a daemon killed while probing left it
        result = daemon.run_once()
        assert not list((tmp_path / "node").glob(".origin-probe-*"))
        assert result.installed == [] and result.failures == {}
        assert _origin_of(tmp_path / "node")[0] == one.url + "/metadata/"
        assert "older than version" in json.loads(daemon.db.setting(REFUSED) or "null")["reason"]

        # Caught up: the next cycle switches; with origin 1 gone, v3 comes from origin 2.
        _mirror(env.data_dir / "repository", cdn_root)
        assert daemon.run_once().failures == {}
        assert _origin_of(tmp_path / "node") == (two.url + "/metadata/", two.url + "/targets/")
        assert not daemon.db.setting(REFUSED)
        one.stop()
        admin.rollout("ctr", 3, "beta", 100, [])
        _mirror(env.data_dir / "repository", cdn_root)
        before = len(two.requests())
        assert daemon.run_once().installed == [("ctr", 3)]
        assert any(p.startswith("/targets/") for p in two.requests()[before:]), two.requests()[before:]
        daemon.close()

        # A restarted daemon (its own process) keeps origin 2.
        before = len(two.requests())
        run = subprocess.run([*EDGEREC, "node", "run", "--state-dir", str(tmp_path / "node"), "--model-dir",
                              str(tmp_path / "node" / "models"), "--once"], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        assert "/metadata/timestamp.json" in two.requests()[before:]
        status = subprocess.run([*EDGEREC, "node", "status", "--state-dir", str(tmp_path / "node"), "--json"],
                                capture_output=True, text=True, timeout=60)
        doc = json.loads(status.stdout)
        assert (doc["metadata_url"], doc["origin_refused"]) == (two.url + "/metadata/", None)

        # Origin 2 goes away, then the service sends nodes back to its own /repository (repo-url set --api):
        # the cycle's refresh from origin 2 fails, the switch does not, and the rollback installs from the API.
        two.stop()
        assert admin.set_repo_url("/repository")["repo_url"] == "/repository"
        admin.rollback("ctr", 2, "stable")
        daemon = env.daemon(NodeState(tmp_path / "node"))
        result = daemon.run_once()
        assert result.installed == [("ctr", 2)] and result.failures == {}
        assert _origin_of(tmp_path / "node") == (env.url + "/repository/metadata/",
                                                 env.url + "/repository/targets/")
    finally:
        for o in origins:
            o.stop()


class _TamperingClient(NodeClient):
    """The check-in answer changed on its way to the node (a compromised proxy): another origin added."""

    repo_url = ""

    def checkin(self, report: dict[str, Any]) -> list[bytes]:
        docs = super().checkin(report)
        out = []
        for raw in docs:
            doc = json.loads(raw)
            doc["signed"]["repo_url"] = self.repo_url
            out.append(json.dumps(doc).encode())
        return out


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


def test_a_tampered_assignment_cannot_move_the_node(sync_env, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    evil = f"http://127.0.0.1:{server.server_address[1]}"
    http = http_client(sync_env.url)
    try:
        state = sync_env.enroll("tampered")
        before = _origin_of(state.dir)
        sync_env.publish(1)
        sync_env.admin().rollout("ctr", 1, "stable", 100, [])
        client = _TamperingClient(http, state.identity().node_id, state.signing_key())
        client.repo_url = evil
        result = sync_env.daemon(state, client=client).run_once()
        assert result.installed == [] and "AssignmentSignatureError" in result.failures["ctr"]
        assert _origin_of(state.dir) == before and _Recorder.seen == []
    finally:
        http.close()
        server.shutdown()
        server.server_close()


def test_admin_repo_url_show_and_set(make_env, tmp_path, monkeypatch):
    env = make_env(repo_url="https://origin.example.com/")
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    for var in ("EDGEREC_SERVER", "EDGEREC_ADMIN_TOKEN", "EDGEREC_CA_CERT"):
        monkeypatch.delenv(var, raising=False)
    save_credentials(Credentials(env.url, env.init.admin_token), tmp_path / "admin.json")
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["admin", "repo-url", *args])
        assert result.exit_code == code, result.output
        return result.output

    assert json.loads(run("show", "--json")) == {"repo_url": "https://origin.example.com", "source": "serve"}
    assert "https://origin.example.com (sync serve --repo-url)" in run("show")
    # Every replica names the same origin: another service process on the same database, asked before and after.
    replica = RunningServer(env.service, maintenance=False).start()
    http = http_client(replica.url)
    try:
        ident = enroll_node(tmp_path / "n1", replica.url, env.token(), "n1")
        assert ident.metadata_url == "https://origin.example.com/metadata/"
        env.publish(1)
        env.admin().rollout("ctr", 1, "stable", 100, [])
        client = NodeClient(http, ident.node_id, NodeState(tmp_path / "n1").signing_key())

        def signed_origins() -> set[str | None]:
            return {json.loads(d)["signed"].get("repo_url") for d in client.assignments()}

        assert signed_origins() == {"https://origin.example.com"}
        assert json.loads(run("set", "https://cdn.example.com/fleet/", "--json")) == {
            "repo_url": "https://cdn.example.com/fleet", "source": "admin"}
        assert signed_origins() == {"https://cdn.example.com/fleet"}
        shown = httpx.get(replica.url + "/api/v1/admin/repo-url", timeout=10,
                          headers={"Authorization": f"Bearer {env.init.admin_token}"}).json()
        assert shown == {"repo_url": "https://cdn.example.com/fleet", "source": "admin"}
        # New nodes pin the admin's origin at enrollment.
        ident = enroll_node(tmp_path / "n2", replica.url, env.token(), "n2")
        assert ident.metadata_url == "https://cdn.example.com/fleet/metadata/"
    finally:
        http.close()
        replica.stop()
    assert "the service's own /repository (set with admin repo-url set)" in run("set", "--api")
    assert json.loads(run("set", "--clear", "--json"))["source"] == "serve"

    # Bad input: one line naming what is wrong, a non-zero exit, nothing stored.
    for bad in ("ftp://cdn.example.com", "https://user:secret@cdn.example.com", "ftp://u:secret@cdn", "cdn.org"):
        out = run("set", bad, code=1)
        assert out.startswith("error: URL:") and out.count("\n") == 1 and "Traceback" not in out
        assert "secret" not in out
    assert run("set", code=1).startswith("error: give exactly one of URL, --api or --clear")
    assert run("set", "https://a.example.com", "--api", code=1).startswith("error: give exactly one")
    # The API checks too (a client that skips the CLI's checks).
    auth = {"Authorization": f"Bearer {env.init.admin_token}"}
    for body in ({"repo_url": "https://u:p@cdn.example.com"}, {"repo_url": 7}, {"repo_url": "https://" + "a" * 3000},
                 {"repo_url": "https://cdn.example.com/\tx"}):
        resp = httpx.put(env.url + "/api/v1/admin/repo-url", json=body, headers=auth, timeout=10)
        assert resp.status_code == 400 and resp.json()["field"] == "repo_url", resp.text
    assert httpx.put(env.url + "/api/v1/admin/repo-url", json={"repo_url": None}, timeout=10).status_code == 401
    assert json.loads(run("show", "--json"))["repo_url"] == "https://origin.example.com"
