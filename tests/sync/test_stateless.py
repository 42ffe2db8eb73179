"""Stateless replicas: a data directory moved into the database, replicas with only ``--db`` and their own key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, event, func, select

from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import generate_keypair, load_verify_key
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.core import SyncService
from edgerec.sync.service.db_blobs import DbBlobStore
from edgerec.sync.service.replica_keys import key_id
from edgerec.sync.service.server import RunningServer
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import BlobChunk, BlobRow, TufMetadata, WrappedKey

from .helpers import tuf_updater, zip_with_a_big_member


def _edgerec(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def moved(db_url, tmp_path, publisher, packages):
    """A service set up with a data directory, v1 published, then moved into the database; the directory is gone."""
    init = init_service(tmp_path / "data", tmp_path / "rk", [load_verify_key(publisher.public_path)], db_url)
    service = SyncService.open(init.data_dir, config=ServiceConfig(threads=4))
    server = RunningServer(service, maintenance=False).start()
    try:
        pkg = tmp_path / "ctr-1.edgepkg"
        pkg.write_bytes(packages[1])
        with AdminClient(Credentials(server.url, init.admin_token)) as admin:
            admin.publish(pkg, "stable")
    finally:
        server.stop()
        service.close()
    key = tmp_path / "replica-a.key"
    out = json.loads(_edgerec("sync", "migrate", "--data-dir", str(init.data_dir), "--db", db_url, "--to-database",
                              "--key-file", str(key), "--json"))
    assert out["keys"] == 6 and out["blobs"] == 1 and out["key_created"] is True
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = json.loads(_edgerec("sync", "migrate", "--data-dir", str(init.data_dir), "--db", db_url,
                                "--to-database", "--key-file", str(key), "--json"))
    assert (again["keys"], again["blobs"], again["blobs_present"]) == (0, 0, 1)  # resumable: adds what is missing
    with pytest.raises(ConfigError, match="serve it with --key-file"):
        SyncService.open(init.data_dir)  # files written beside the database's state would be missed
    shutil.rmtree(init.data_dir)  # nothing of it is needed any more
    return init, key


def _replica(db_url: str, key: Path, work: Path) -> tuple[SyncService, RunningServer]:
    service = SyncService.open_replica(db_url, key, work, ServiceConfig(threads=4))
    return service, RunningServer(service, maintenance=False).start()


def test_a_replica_reads_polled_metadata_at_most_once_a_second_and_its_own_changes_at_once(moved, db_url, tmp_path,
                                                                                            packages):
    """Every node polls timestamp.json with each check-in: a replica answers it from the table at most once a
    second (versioned files, which never change, once), and serves a change it made itself at once."""
    init, key_a = moved
    svc, server = _replica(db_url, key_a, tmp_path / "work")
    statements: list[str] = []
    event.listen(svc.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        # What the replica's views call, in this process (the server's worker keeps its own).
        first = json.loads(svc.repo.file("timestamp.json") or b"")["signed"]["version"]
        assert all(json.loads(svc.repo.file("timestamp.json") or b"")["signed"]["version"] == first
                   for _ in range(10))
        assert len({svc.repo.file("1.root.json") for _ in range(3)}) == 1
        assert svc.repo.file("9.root.json") is None and svc.repo.file("9.root.json") is None
        reads = [q for q in statements if "tuf_metadata" in q]
        assert len(reads) == 4, reads  # the timestamp once, 1.root.json once, 9.root.json each time
        time.sleep(1.1)
        assert json.loads(svc.repo.file("timestamp.json") or b"")["signed"]["version"] == first
        assert len([q for q in statements if "tuf_metadata" in q]) == 5  # read again after a second

        # Through the server: a publish through the replica that served the old timestamp shows at once.
        url = server.url + "/repository/metadata/timestamp.json"
        assert httpx.get(url).json()["signed"]["version"] == first
        pkg = tmp_path / "ctr-2.edgepkg"
        pkg.write_bytes(packages[2])
        with AdminClient(Credentials(server.url, init.admin_token)) as admin:
            assert admin.publish(pkg, "stable")["new_version"]
        assert httpx.get(url).json()["signed"]["version"] > first
    finally:
        server.stop()
        svc.close()


def test_two_replicas_serve_everything_from_the_database(moved, db_url, tmp_path, packages):
    init, key_a = moved
    key_b = tmp_path / "replica-b.key"
    _edgerec("sync", "replica-key", "add", "--db", db_url, "--key-file", str(key_a), "--new-key-file", str(key_b))
    assert key_a.read_bytes() != key_b.read_bytes()  # each replica has its own key
    replicas = [_replica(db_url, k, tmp_path / f"work-{i}") for i, k in enumerate((key_a, key_b))]
    try:
        (svc_a, a), (_svc_b, b) = replicas
        assert svc_a.datadir is None and not (tmp_path / "data").exists()
        admin_a = AdminClient(Credentials(a.url, init.admin_token))
        admin_b = AdminClient(Credentials(b.url, init.admin_token))
        pkg = tmp_path / "ctr-2.edgepkg"
        pkg.write_bytes(packages[2])
        published = admin_b.publish(pkg, "stable")  # through the other replica, stored in the database
        assert published["new_version"]

        # The same metadata from both replicas: one history, not one per replica.
        stamps = [httpx.get(r.url + "/repository/metadata/timestamp.json").json()["signed"]["version"]
                  for r in (a, b)]
        assert stamps[0] == stamps[1] >= 3
        root = httpx.get(a.url + "/repository/metadata/1.root.json").content
        assert httpx.get(b.url + "/repository/metadata/2.root.json").status_code == 404
        up = tuf_updater(a.url, root, tmp_path / "tuf")
        up.refresh()
        info = up.get_targetinfo("stable/ctr/2.edgepkg")
        assert info is not None and info.length == published["size"]

        # The target, hash-prefixed, from either replica, whole and in ranges (a resumed download).
        sha = published["sha256"]
        url = f"/repository/targets/stable/ctr/{sha}.2.edgepkg"
        whole = httpx.get(b.url + url)
        assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == sha
        assert whole.headers["ETag"] == f'"{sha}"' and "immutable" in whole.headers["Cache-Control"]
        tail = httpx.get(a.url + url, headers={"Range": "bytes=1000-"})
        assert tail.status_code == 206 and tail.content == whole.content[1000:]
        assert tail.headers["Content-Range"] == f"bytes 1000-{len(whole.content) - 1}/{len(whole.content)}"
        mid = httpx.get(a.url + url, headers={"Range": "bytes=5-9", "If-Range": f'"{sha}"'})
        assert mid.status_code == 206 and mid.content == whole.content[5:10]
        assert httpx.get(a.url + url, headers={"If-None-Match": f'"{sha}"'}).status_code == 304
        wrong = f"/repository/targets/beta/ctr/{sha}.2.edgepkg"  # stored, but not published on beta
        assert httpx.get(a.url + wrong).status_code == 404

        # A node enrolled through one replica installs what a rollout through the other gave it.
        ident = enroll_node(tmp_path / "node", a.url, admin_a.create_enroll_token([], 600)["token"])
        admin_b.rollout("ctr", 2, "stable", 100, [])
        daemon = NodeDaemon(NodeState(tmp_path / "node"), tmp_path / "models")
        try:
            assert daemon.run_once().installed == [("ctr", 2)]
        finally:
            daemon.close()
        assert {r["node_id"]: r["installed_version"] for r in admin_a.status("ctr")["nodes"]} == {ident.node_id: 2}
        admin_a.close()
        admin_b.close()
        # Uploads spooled locally are gone; the replicas' work folders hold no package.
        assert [p for p in (tmp_path / "work-1").rglob("*") if p.is_file()] == []
    finally:
        for svc, server in replicas:
            server.stop()
            svc.close()


def test_a_replica_key_is_private_known_and_retired(moved, db_url, tmp_path):
    _init, key_a = moved
    key_a.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        SyncService.open_replica(db_url, key_a, tmp_path / "w")
    key_a.chmod(0o600)
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(os.urandom(32))
    stranger.chmod(0o600)
    with pytest.raises(ConfigError, match="no online keys for replica key"):
        SyncService.open_replica(db_url, stranger, tmp_path / "w")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="holds 32 bytes, this one 31"):
        SyncService.open_replica(db_url, short, tmp_path / "w")
    out = _edgerec("sync", "serve", "--db", db_url, "--key-file", str(short), code=1)
    assert "holds 32 bytes" in out and "Traceback" not in out

    # A replica key whose keys were only partly stored (an interrupted move) fails at start, by name.
    partial = tmp_path / "partial.key"
    _edgerec("sync", "replica-key", "add", "--db", db_url, "--key-file", str(key_a), "--new-key-file", str(partial))
    db = Database(db_url)
    with db.write() as s:
        s.execute(delete(WrappedKey).where(WrappedKey.kek_id == key_id(partial.read_bytes()),
                                           WrappedKey.name == "kek.key"))
    db.dispose()
    with pytest.raises(ConfigError, match="lacks online keys kek.key"):
        SyncService.open_replica(db_url, partial, tmp_path / "w")
    _edgerec("sync", "replica-key", "remove", "--db", db_url, "--key-id", key_id(partial.read_bytes()))
    assert "is not known" in _edgerec("sync", "replica-key", "remove", "--db", db_url, "--key-id", "f" * 16, code=1)

    # Rotation: a new key, then the old one retired; the last key is never removed.
    key_b = tmp_path / "replica-b.key"
    _edgerec("sync", "replica-key", "add", "--db", db_url, "--key-file", str(key_a), "--new-key-file", str(key_b))
    db = Database(db_url)
    try:
        with db.read() as s:
            ids = set(s.execute(select(WrappedKey.kek_id)).scalars())
            assert all(key_a.read_bytes() not in w and key_b.read_bytes() not in w
                       for w in s.execute(select(WrappedKey.wrapped)).scalars())
        assert ids == {key_id(key_a.read_bytes()), key_id(key_b.read_bytes())}
        _edgerec("sync", "replica-key", "remove", "--db", db_url, "--key-id", key_id(key_a.read_bytes()))
        with pytest.raises(ConfigError, match="no online keys"):
            SyncService.open_replica(db_url, key_a, tmp_path / "w")
        svc = SyncService.open_replica(db_url, key_b, tmp_path / "w")
        svc.close()
        out = _edgerec("sync", "replica-key", "remove", "--db", db_url, "--key-id", key_id(key_b.read_bytes()),
                       code=1)
        assert "is the only one" in out
    finally:
        db.dispose()


def test_blobs_are_chunked_streamed_and_stored_once(db_url, tmp_path):
    from edgerec.sync.service.blobs import CHUNK
    from edgerec.sync.service.store import migrate

    db = Database(db_url)
    try:
        migrate(db)
        store = DbBlobStore(db, tmp_path / "tmp")
        data = os.urandom(2 * CHUNK + 123)
        sha = store.put_bytes(data)
        assert sha == hashlib.sha256(data).hexdigest() and store.put_bytes(data) == sha
        with db.read() as s:
            assert s.execute(select(func.count()).select_from(BlobChunk)).scalar_one() == 3
            assert s.execute(select(BlobRow.size)).scalars().all() == [len(data)]
        reader = store.open(sha)
        reader.seek(CHUNK - 10)
        assert reader.read(20) == data[CHUNK - 10:CHUNK + 10]  # across a chunk boundary
        assert store.read(sha) == data
        with pytest.raises(FileNotFoundError):
            store.open("0" * 64)
        # Seekable like a file: a zip reader (the alerts' reference histograms) reads just the directory.
        import zipfile

        with zipfile.ZipFile(store.open(store.put_bytes(zip_with_a_big_member(3 * CHUNK)))) as zf:
            assert zf.namelist() == ["big.bin", "small.json"] and zf.read("small.json") == b"{}"

        # A replica killed mid-upload leaves chunks under a pending name: never served, swept when old.
        from edgerec.sync.service.db_blobs import PENDING

        now = time.time()
        with db.write() as s:
            s.add_all([BlobChunk(sha256=f"{PENDING}{int(now) - 7200}-dead", seq=0, data=b"x"),
                       BlobChunk(sha256=f"{PENDING}{int(now)}-live", seq=0, data=b"y")])
        assert store.sweep_pending(now) == 1
        with db.read() as s:
            left = set(s.execute(select(BlobChunk.sha256).distinct()).scalars())
        assert f"{PENDING}{int(now)}-live" in left and f"{PENDING}{int(now) - 7200}-dead" not in left
    finally:
        db.dispose()


def test_admin_token_and_root_update_need_only_the_database(moved, db_url, tmp_path):
    _init, key_a = moved

    token = _edgerec("admin", "token", "--db", db_url, "--name", "ops").strip()
    second = generate_keypair(tmp_path / "pub2", "publisher2")
    out = _edgerec("admin", "root-update", "--db", db_url, "--keys-dir", str(tmp_path / "rk"),
                   "--add-publisher", str(second.public_path), "--key-file", str(key_a))
    assert "version 2" in out
    assert "--key-file" in _edgerec("admin", "root-update", "--db", db_url, "--keys-dir", str(tmp_path / "rk"),
                                    code=1)
    service, server = _replica(db_url, key_a, tmp_path / "work")
    try:
        root2 = httpx.get(server.url + "/repository/metadata/2.root.json")
        assert root2.status_code == 200 and root2.json()["signed"]["version"] == 2
        assert httpx.get(server.url + "/repository/metadata/root.json").json()["signed"]["version"] == 2
        # Re-signed below root with the online keys from the database: a client walks 1 -> 2 and refreshes.
        up = tuf_updater(server.url, httpx.get(server.url + "/repository/metadata/1.root.json").content,
                         tmp_path / "tuf")
        up.refresh()
        assert up.get_targetinfo("stable/ctr/1.edgepkg") is not None
        with AdminClient(Credentials(server.url, token)) as admin:  # the new token works on the replica
            assert [p["version"] for p in admin.packages()] == [1]
    finally:
        server.stop()
        service.close()


def test_replicas_signing_at_once_make_one_history(moved, db_url, tmp_path, packages):
    """Publishes and expiry refreshes on two replicas at the same time: each role's versions stay 1..n."""
    import threading

    init, key_a = moved
    key_b = tmp_path / "replica-b.key"
    db = Database(db_url)
    from edgerec.sync.service.replica_keys import add_replica_key

    add_replica_key(db, key_a, key_b)
    replicas = [_replica(db_url, k, tmp_path / f"work-{i}") for i, k in enumerate((key_a, key_b))]
    try:
        (svc_a, a), (svc_b, b) = replicas
        for v in (2, 3):
            (tmp_path / f"ctr-{v}.edgepkg").write_bytes(packages[v])
        admins = [AdminClient(Credentials(r.url, init.admin_token)) for r in (a, b)]
        with db.read() as s:
            before = s.execute(select(func.max(TufMetadata.version)).where(TufMetadata.role == "timestamp")
                               ).scalar_one()
        # Both replicas' maintenance at once, a day later: each sees every role expiring.
        later = time.time() + 86400 * 400
        out: list[object] = []
        calls = [lambda: admins[0].publish(tmp_path / "ctr-2.edgepkg", "stable"),
                 lambda: admins[1].publish(tmp_path / "ctr-3.edgepkg", "beta"),
                 lambda: svc_a.maintain(later), lambda: svc_b.maintain(later)]
        threads = [threading.Thread(target=lambda c=c: out.append(c())) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(out) == 4
        with db.read() as s:
            rows = s.execute(select(TufMetadata.role, TufMetadata.version)).all()
        versions: dict[str, list[int]] = {}
        for role, v in rows:
            versions.setdefault(role, []).append(v)
        assert all(sorted(vs) == list(range(1, len(vs) + 1)) for vs in versions.values()), versions
        # Two publishes sign two timestamps; a refresh signs one only if its role is still expiring once it
        # holds the lock (a publish in between signs with today's expiry, so each refresh may sign once).
        assert 2 <= max(versions["timestamp"]) - before <= 4
        stamp = httpx.get(b.url + "/repository/metadata/timestamp.json").json()["signed"]
        assert stamp["version"] == max(versions["timestamp"])
        assert stamp["meta"]["snapshot.json"]["version"] == max(versions["snapshot"])
        up = tuf_updater(a.url, httpx.get(a.url + "/repository/metadata/1.root.json").content, tmp_path / "tuf")
        up.refresh()
        assert up.get_targetinfo("stable/ctr/2.edgepkg") and up.get_targetinfo("beta/ctr/3.edgepkg")
        for admin in admins:
            admin.close()
    finally:
        db.dispose()
        for svc, server in replicas:
            server.stop()
            svc.close()
