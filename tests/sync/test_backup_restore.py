"""A backup taken with pg_dump mid-rollout, restored after the database is lost: the restored service, re-signed
with ``edgerec sync resign``, is one the nodes keep following (even those that saw metadata signed after the
backup), and a rollout made after the restore reaches every node."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, make_url, select
from support.net import free_port
from support.postgres import find_pg_bin
from support.sync_replica import EDGEREC, Replica

from edgerec.sdk.keys import load_verify_key
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.move_state import move_to_database
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import TufMetadata

NODES = 6


def _libpq(url: str) -> str:
    """A libpq URI (what pg_dump and psycopg take) for a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _publish(admin: AdminClient, packages: dict[int, bytes], tmp: Path, version: int) -> None:
    pkg = tmp / f"ctr-{version}.edgepkg"
    pkg.write_bytes(packages[version])
    admin.publish(pkg, "stable")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_dump_taken_mid_rollout_restores_into_a_service_nodes_keep_following(pg_server_url, tmp_path,
                                                                              publisher, packages):
    pg_bin = find_pg_bin()
    if pg_bin is None or not (pg_bin / "pg_dump").exists():
        pytest.fail("pg_dump and pg_restore are needed (Debian's postgresql package)")
    server = _libpq(pg_server_url)
    name = "edgerec_backup_" + secrets.token_hex(4)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db_url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    init = init_service(tmp_path / "admin" / "data", tmp_path / "admin" / "root-keys",
                        [load_verify_key(publisher.public_path)], db_url)
    key = tmp_path / "replica" / "replica.key"
    key.parent.mkdir()
    move_to_database(init.data_dir, db_url, key)
    shutil.rmtree(init.data_dir)
    replica = Replica(db_url, key, tmp_path / "replica" / "work", free_port(), tmp_path / "replica" / "serve.log")
    dump = tmp_path / "backup.dump"
    try:
        replica.start()
        admin = AdminClient(Credentials(replica.url, init.admin_token))
        for v in (1, 2):
            _publish(admin, packages, tmp_path, v)
        daemons = []
        for i in range(NODES):
            state_dir = tmp_path / "nodes" / str(i)
            enroll_node(state_dir, replica.url, admin.create_enroll_token([], 600)["token"], f"n{i}")
            daemons.append(NodeDaemon(NodeState(state_dir), state_dir / "models"))
        admin.rollout("ctr", 1, "stable", 100, [])
        assert all(d.run_once().installed == [("ctr", 1)] for d in daemons)
        admin.rollout("ctr", 2, "stable", 100, [])
        assert all(d.run_once().installed == [("ctr", 2)] for d in daemons[:3])  # mid-rollout

        subprocess.run([str(pg_bin / "pg_dump"), "--format=custom", "--file", str(dump), _libpq(db_url)],
                       check=True, capture_output=True, timeout=120)

        # After the backup: another node moves, and v3 is published, so some nodes trust newer metadata
        # than the backup holds.
        assert daemons[3].run_once().installed == [("ctr", 2)]
        _publish(admin, packages, tmp_path, 3)
        assert all(d.run_once().reachable for d in daemons[:4])  # they now trust the newer metadata

        # The database is lost; the backup is restored into a new one of the same name.
        replica.stop()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        subprocess.run([str(pg_bin / "pg_restore"), "--no-owner", "--dbname", _libpq(db_url), str(dump)],
                       check=True, capture_output=True, timeout=120)
        # The restored repository is older than what node 0 trusts: TUF would take it for a rollback attack.
        assert _served_version(db_url) < _trusted_version(daemons[0])
        resigned = subprocess.run([EDGEREC, "sync", "resign", "--key-file", str(key), "--json"],
                                  env={**_env(), "EDGEREC_DB_URL": db_url}, capture_output=True, text=True,
                                  timeout=120)
        assert resigned.returncode == 0, resigned.stderr
        assert _served_version(db_url) > _trusted_version(daemons[0])
        assert json.loads(resigned.stdout)["timestamp"] == _served_version(db_url)
        replica.start()

        # Every node follows the restored service: the rollout of v2 completes, then v3 goes out.
        results = [d.run_once() for d in daemons]
        assert all(r.reachable and r.failures == {} for r in results), [(r.reachable, r.failures) for r in results]
        assert sorted(r.installed for r in results) == [[]] * 4 + [[("ctr", 2)]] * 2
        _publish(admin, packages, tmp_path, 3)  # lost with the database: published again
        admin.rollout("ctr", 3, "stable", 100, [])
        assert all(d.run_once().installed == [("ctr", 3)] for d in daemons)
        rows = admin.status("ctr")["nodes"]
        assert {(r["desired_version"], r["installed_version"]) for r in rows} == {(3, 3)} and len(rows) == NODES
        for d in daemons:
            d.close()
    finally:
        replica.stop()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _env() -> dict[str, str]:
    return dict(os.environ)


def _trusted_version(daemon: NodeDaemon) -> int:
    """The timestamp version a node trusts (its TUF client's copy)."""
    return int(json.loads((daemon.state.tuf_dir / "timestamp.json").read_text())["signed"]["version"])


def _served_version(db_url: str) -> int:
    db = Database(db_url)
    try:
        with db.read() as s:
            return int(s.execute(select(func.max(TufMetadata.version)).where(TufMetadata.role == "timestamp"))
                       .scalar_one())
    finally:
        db.dispose()
