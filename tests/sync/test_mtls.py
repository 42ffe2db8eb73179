"""Mutual TLS between nodes (and admins) and the sync service: granian checks client certificates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.tls import PrivateCa

from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.tls import client_verify
from edgerec.sync.service.server import RunningServer

EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]


@pytest.mark.slow
def test_only_clients_with_a_certificate_from_the_fleet_ca_get_in(sync_env, tmp_path):
    env = sync_env
    (tmp_path / "ca").mkdir()
    (tmp_path / "rogue").mkdir()
    ca, rogue = PrivateCa(tmp_path / "ca"), PrivateCa(tmp_path / "rogue", "rogue CA")
    server_cert, server_key = ca.issue("sync", server=True)
    node_cert, node_key = ca.issue("node-1", server=False)
    admin_cert, admin_key = ca.issue("admin", server=False)
    rogue_cert, rogue_key = rogue.issue("intruder", server=False)
    trust = str(ca.cert_path)
    as_node = client_verify(trust, str(node_cert), str(node_key))
    assert not isinstance(as_node, bool)
    svc = RunningServer(env.service, tls=(server_cert, server_key), client_ca=ca.cert_path, probe_tls=as_node,
                        maintenance=False).start()
    health = svc.url + "/api/v1/health"
    try:
        for verify in (client_verify(trust), client_verify(trust, str(rogue_cert), str(rogue_key))):
            with pytest.raises(httpx.HTTPError):  # the handshake fails: no certificate, or not from the CA
                httpx.get(health, verify=verify, timeout=10)
        assert httpx.get(health, verify=as_node, timeout=10).json() == {"status": "ok"}

        creds = Credentials(svc.url, env.init.admin_token, trust, str(admin_cert), str(admin_key))
        with AdminClient(creds) as admin:
            token = admin.create_enroll_token([], None)["token"]
        ident = enroll_node(tmp_path / "node", svc.url, token, "mtls-node", ca_cert=trust,
                            client_cert=str(node_cert), client_key=str(node_key))
        assert (ident.client_cert, ident.client_key) == (str(node_cert), str(node_key))
        env.publish(1)
        env.admin().rollout("ctr", 1, "stable", 100, [])
        daemon = NodeDaemon(NodeState(tmp_path / "node"), tmp_path / "models")  # identity from the state dir
        try:
            result = daemon.run_once()
            assert result.installed == [("ctr", 1)] and result.reported
        finally:
            daemon.close()

        # The one worker killed: a connection made while it is replaced waits for the replacement and is
        # relayed to it (sdk/port_keeper.py), the TLS handshake end to end and the client certificate checked.
        (worker,) = svc.worker_pids()
        os.kill(worker, signal.SIGKILL)
        # Until it is reaped, a dying worker's threads may still hold its socket, and a connection queued
        # there is reset with it unless net.ipv4.tcp_migrate_req is 1 (docs/design.md): wait that out.
        deadline = time.monotonic() + 30
        while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert httpx.get(health, verify=as_node, timeout=30).json() == {"status": "ok"}
        assert svc.worker_pids() not in ([], [worker])
        with pytest.raises(httpx.HTTPError):
            httpx.get(health, verify=client_verify(trust), timeout=30)  # still no way in without a certificate
    finally:
        svc.stop()


def test_client_key_files_must_be_private_and_paired(tmp_path):
    ca = PrivateCa(tmp_path)
    cert, key = ca.issue("node", server=False)
    assert client_verify(None, str(cert), str(key)) is not True
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="group or others"):
        client_verify(None, str(cert), str(key))
    with pytest.raises(ConfigError, match="needs its key"):
        client_verify(None, str(cert), None)
    key.chmod(0o600)
    with pytest.raises(ConfigError, match="client certificate"):
        client_verify(None, str(ca.cert_path), str(key))  # a certificate that is not the key's
    r = subprocess.run([*EDGEREC, "node", "enroll", "--server", "https://127.0.0.1:9", "--state-dir",
                        str(tmp_path / "n"), "--client-cert", str(cert)], capture_output=True, text=True,
                       env={"EDGEREC_ENROLL_TOKEN": "x" * 32, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 1 and "--client-cert and --client-key go together" in r.stderr
    assert "Traceback" not in r.stderr


def test_sync_serve_refuses_a_client_ca_without_tls(tmp_path):
    r = subprocess.run([*EDGEREC, "sync", "serve", "--data-dir", str(tmp_path), "--tls-client-ca",
                        str(PrivateCa(tmp_path).cert_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--tls-client-ca needs --tls-cert" in r.stderr and "Traceback" not in r.stderr
