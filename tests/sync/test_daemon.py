"""The node daemon: resumable downloads, the edge server step, keeping the old version, TLS."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from support.tls import self_signed
from tuf.ngclient import Updater

from edgerec.sdk.errors import ConfigurationError
from edgerec.sdk.user_keys import ensure_user_key, read_user_key
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.edge_control import EdgeControl
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.fetcher import HttpxFetcher
from edgerec.sync.node.health import HealthPolicy
from edgerec.sync.node.privacy import SqliteBudgetLedger
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.tls import client_verify
from edgerec.sync.service.server import RunningServer


def stop_waitress(server, thread) -> None:
    """Close a waitress server (the fake edge server's) from its own loop thread, then its workers."""
    from waitress import wasyncore

    if thread.is_alive():
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(timeout=10)
    server.task_dispatcher.shutdown()


def _target_url(env, pub) -> str:
    return f"{env.url}/repository/targets/stable/ctr/{pub['sha256']}.1.edgepkg"


def test_interrupted_download_resumes_with_a_range_request(sync_env, tmp_path):
    env = sync_env
    pub = env.publish(1)
    url = _target_url(env, pub)
    whole = httpx.get(url).content
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / hashlib.sha256(url.encode()).hexdigest()).write_bytes(whole[: len(whole) // 2])
    seen: list[tuple[int, str | None]] = []
    client = httpx.Client(event_hooks={"response": [lambda r: seen.append(
        (r.status_code, r.request.headers.get("Range")))]})
    fetcher = HttpxFetcher(client, partial)
    root = (env.data_dir / "repository" / "metadata" / "1.root.json").read_bytes()
    (tmp_path / "meta").mkdir()
    up = Updater(str(tmp_path / "meta"), f"{env.url}/repository/metadata/", str(tmp_path / "t"),
                 f"{env.url}/repository/targets/", fetcher=fetcher, bootstrap=root)
    path = up.download_target(up.get_targetinfo("stable/ctr/1.edgepkg"))
    assert Path(path).read_bytes() == whole
    assert (206, f"bytes={len(whole) // 2}-") in seen and fetcher.resumed_bytes == len(whole) // 2
    assert not any(partial.iterdir())


def test_a_corrupt_partial_download_is_discarded_and_retried(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    pub = env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    state.partial_dir.mkdir(parents=True)
    url = _target_url(env, pub)
    (state.partial_dir / hashlib.sha256(url.encode()).hexdigest()).write_bytes(b"garbage" * 100)
    daemon = env.daemon(state)
    first = daemon.run_once()
    assert first.installed == [] and "LengthOrHashMismatchError" in first.failures["ctr"]
    assert daemon.run_once().installed == [("ctr", 1)]


def test_keeps_the_previous_version_and_prunes_older(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    daemon = env.daemon(state)
    admin = env.admin()
    folder = state.dir / "models" / "ctr"
    for v in (1, 2, 3):
        env.publish(v)
        admin.rollout("ctr", v, "stable", 100, [])
        assert daemon.run_once().installed == [("ctr", v)]
    assert sorted(p.name for p in folder.iterdir()) == ["2.edgepkg", "3.edgepkg", "current"]
    assert os.readlink(folder / "current") == "3.edgepkg"
    # Nothing new to do: no download, no install.
    again = daemon.run_once()
    assert again.installed == [] and again.failures == {} and again.reported


def test_state_files_are_private(sync_env):
    state = sync_env.enroll("edge-1")
    # Made on first use: the databases (0600 before SQLite opens them), the control token, the user key.
    state.db.enqueue({"report_id": "r1"})
    ledger = SqliteBudgetLedger(state.ledger_file)
    token = state.control_token()
    ensure_user_key(state.user_key_file)
    files = ["keys/signing.key", "keys/recipient.key", "node.json", "root.json", "node.db", "privacy.sqlite",
             "control.token", "keys/user.key"]
    files += [p.name for p in state.dir.glob("*.sqlite-*")] + [p.name for p in state.dir.glob("node.db-*")]
    for f in files:
        assert (os.stat(state.dir / f).st_mode & 0o777) == 0o600, f
    assert (os.stat(state.dir).st_mode & 0o777) == 0o700
    ledger.close()
    state.close()
    # A database made wider (by hand, by an older version) is tightened when opened.
    state.db_file.chmod(0o644)
    assert state.db.pending() and (state.db_file.stat().st_mode & 0o777) == 0o600
    state.close()
    # A control token or user key file that group or others may read is refused, naming the file.
    assert state.control_token() == token
    for path, read in ((state.control_token_file, state.control_token),
                       (state.user_key_file, lambda: read_user_key(state.user_key_file))):
        path.chmod(0o644)
        with pytest.raises(ConfigurationError, match=f"{path}: .* file is accessible by group or others"):
            read()


def test_unreachable_service_is_survived(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    daemon = env.daemon(state)
    env.server.stop()
    result = daemon.run_once()
    assert result.reachable is False and result.installed == []
    env.server = RunningServer(env.service, maintenance=False).start()  # for the fixture's teardown


def test_tls_end_to_end(sync_env, tmp_path):
    env = sync_env
    cert, key = self_signed(tmp_path)
    tls = RunningServer(env.service, tls=(cert, key), maintenance=False).start()
    try:
        assert tls.url.startswith("https://")
        with pytest.raises(httpx.ConnectError):
            httpx.get(tls.url + "/api/v1/health")  # not trusted without the CA
        assert httpx.get(tls.url + "/api/v1/health", verify=client_verify(str(cert))).json() == {"status": "ok"}
        ident = enroll_node(tmp_path / "node", tls.url, env.token(), "tls-node", ca_cert=str(cert))
        env.publish(1)
        env.admin().rollout("ctr", 1, "stable", 100, [])
        daemon = NodeDaemon(NodeState(tmp_path / "node"), tmp_path / "models")
        try:
            assert daemon.run_once().installed == [("ctr", 1)]
        finally:
            daemon.close()
        assert ident.metadata_url.startswith("https://")
    finally:
        tls.stop()


def test_with_the_real_edge_server(sync_env, tmp_path):
    """The daemon drives the project's edge server (``edgerec serve``, a child process): it serves what the
    node installed."""
    from edgerec.edge_server import RunningServer as EdgeServer
    from edgerec.edge_server.config import ServerConfig

    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    admin.rollout("ctr", 1, "stable", 100, [])
    env.daemon(state).run_once()  # exports the trusted publisher keys from the verified root
    trusted = tuple(sorted(state.trust_dir.glob("*.pub")))
    assert len(trusted) == 1
    token = "t" * 32
    config = ServerConfig(port=0, trusted_keys=trusted, recipient_key=state.keys / "recipient.key",
                          recipient_id=state.identity().node_id, control_token=token, access_log=False)
    edge = EdgeServer(config)
    url = edge.url
    try:
        daemon = env.daemon(state, model_dir=tmp_path / "models", edge=EdgeControl(url, token),
                            health=HealthPolicy(window_s=0.5))
        admin.rollout("ctr", 2, "stable", 100, [])
        result = daemon.run_once()
        assert result.installed == [("ctr", 2)] and result.failures == {}
        listed = httpx.get(url + "/control/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
        serving = [(m["name"], int(m["version"])) for m in listed["models"] if m["state"] == "serving"]
        assert ("ctr", 2) in serving
    finally:
        assert edge.close() == 0
