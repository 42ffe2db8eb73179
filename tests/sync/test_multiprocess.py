"""Two ``edgerec sync serve`` processes on one database and one data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select
from support.net import free_port, wait_http_ok

from edgerec.sdk.keys import load_verify_key, public_pem
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.client import enroll_request, http_client
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import TufMetadata

from .helpers import tuf_updater

EDGEREC = str(Path(sys.executable).parent / "edgerec")


def _serve(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "EDGEREC_SYNC_THREADS": "4", "EDGEREC_SYNC_MAINTENANCE_INTERVAL_S": "1"}
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([EDGEREC, "sync", "serve", "--data-dir", str(data_dir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(url + "/api/v1/health", proc, log, timeout=60, interval=0.2, tail=1_000_000)
    return proc, url


def _parallel(*calls):
    out: list = [None] * len(calls)

    def run(i, fn):
        try:
            out[i] = fn()
        except Exception as exc:  # the caller looks at what each call gave
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


@pytest.mark.slow
def test_two_processes_share_one_database(db_url, tmp_path, publisher, packages):
    init = init_service(tmp_path / "data", tmp_path / "rk", [load_verify_key(publisher.public_path)], db_url)
    procs = []
    try:
        for i in range(2):
            procs.append(_serve(init.data_dir, tmp_path / f"serve{i}.log"))
        (_, url_a), (_, url_b) = procs
        admin_a = AdminClient(Credentials(url_a, init.admin_token))
        admin_b = AdminClient(Credentials(url_b, init.admin_token))

        # One token presented to both processes at once enrolls exactly one node.
        token = admin_a.create_enroll_token([], 600)["token"]

        def enroll_via(url):
            pem_e = public_pem(Ed25519PrivateKey.generate().public_key())
            pem_x = public_pem(X25519PrivateKey.generate().public_key())
            with http_client(url) as c:
                return enroll_request(c, token, pem_e, pem_x, None)

        results = _parallel(lambda: enroll_via(url_a), lambda: enroll_via(url_b))
        assert sum(isinstance(r, dict) for r in results) == 1
        assert sum(isinstance(r, ApiError) and r.status == 401 for r in results) == 1

        nodes = [enroll_node(tmp_path / f"node{i}", (url_a, url_b)[i % 2], admin_a.create_enroll_token([], 600)[
            "token"]) for i in range(4)]
        pkgs = {}
        for v in (1, 2, 3):
            pkgs[v] = tmp_path / f"ctr-{v}.edgepkg"
            pkgs[v].write_bytes(packages[v])
        # Publishes through both processes at the same time: one linear TUF history.
        out = _parallel(lambda: admin_a.publish(pkgs[1], "stable"), lambda: admin_b.publish(pkgs[2], "stable"),
                        lambda: admin_b.publish(pkgs[3], "beta"))
        assert all(isinstance(o, dict) for o in out), out
        assert all(o["new_version"] for o in out)
        db = Database(db_url)
        with db.read() as s:
            rows = s.execute(select(TufMetadata.role, TufMetadata.version)).all()
        db.dispose()
        versions: dict[str, list[int]] = {}
        for role, v in rows:
            versions.setdefault(role, []).append(v)
        for role, vs in versions.items():
            assert sorted(vs) == list(range(1, len(vs) + 1)), role
        disk = json.loads((init.data_dir / "repository" / "metadata" / "timestamp.json").read_bytes())
        assert disk["signed"]["version"] == max(versions["timestamp"])

        root = (init.data_dir / "repository" / "metadata" / "1.root.json").read_bytes()
        for i, url in enumerate((url_a, url_b)):
            up = tuf_updater(url, root, tmp_path / f"tuf{i}")
            assert all(up.get_targetinfo(t) for t in ("stable/ctr/1.edgepkg", "stable/ctr/2.edgepkg",
                                                      "beta/ctr/3.edgepkg"))

        admin_b.rollout("ctr", 2, "stable", 100, [])
        for i, ident in enumerate(nodes):
            daemon = NodeDaemon(NodeState(tmp_path / f"node{i}"), tmp_path / f"models{i}")
            try:
                assert daemon.run_once().installed == [("ctr", 2)], ident.node_id
            finally:
                daemon.close()
        rows = {r["node_id"]: r for r in admin_a.status("ctr")["nodes"]}
        assert len(rows) == 5  # with the node the raced token enrolled
        assert {(rows[n.node_id]["desired_version"], rows[n.node_id]["installed_version"]) for n in nodes} == {
            (2, 2)}
        admin_a.close()
        admin_b.close()
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
