"""Package ciphertexts in an S3-compatible store (``sync serve --blob-url``), against moto's real HTTP server.

Replicas are real ``edgerec sync serve`` processes over one database with their blob store configured by
``EDGEREC_BLOB_URL`` and the standard AWS variables; the bucket is read back with boto3.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from support.net import free_port, wait_for
from support.s3 import MotoS3
from support.sync_replica import EDGEREC, Replica

from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import load_verify_key
from edgerec.sdk.testing import ctr_builder, ctr_weights
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.errors import ApiError, BlobUnavailableError, ConfigError
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.blob_url import S3Settings, parse_blob_url
from edgerec.sync.service.blobs import CHUNK, BlobStore
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.db_blobs import DbBlobStore
from edgerec.sync.service.move_state import move_to_database
from edgerec.sync.service.s3_blobs import S3BlobStore, S3Objects
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import BlobChunk, BlobRow, PackageVersion

from .helpers import zip_with_a_big_member

# Replicas in production share PostgreSQL; the replica tests run there (and the first also on SQLite, as
# test_stateless.py's do); what only the store does runs once, on SQLite.
ON_POSTGRES = pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
ON_SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BUCKET = "edgerec-test"
PREFIX = "fleet/a"
BLOB_URL = f"s3://{BUCKET}/{PREFIX}"


@dataclass
class Fleet:
    """A stateless deployment: its database, a replica key, the admin token and a bucket on moto's server."""

    db_url: str
    key: Path
    token: str
    s3: MotoS3
    tmp: Path

    def replica(self, name: str, s3: bool = True) -> Replica:
        env = {**self.s3.env, "EDGEREC_BLOB_URL": BLOB_URL} if s3 else {"EDGEREC_BLOB_URL": ""}
        return Replica(self.db_url, self.key, self.tmp / f"work-{name}", free_port(), self.tmp / f"{name}.log",
                       env=env)

    def admin(self, replica: Replica) -> AdminClient:
        return AdminClient(Credentials(replica.url, self.token))

    def rows(self) -> dict[str, tuple[int, str]]:
        """sha256 -> (size, location) of every listed blob."""
        db = Database(self.db_url)
        try:
            with db.read() as s:
                return {r.sha256: (r.size, r.location) for r in s.execute(select(BlobRow)).scalars()}
        finally:
            db.dispose()

    def chunks(self, sha: str) -> int:
        db = Database(self.db_url)
        try:
            with db.read() as s:
                return s.execute(select(func.count()).select_from(BlobChunk).where(BlobChunk.sha256 == sha)
                                 ).scalar_one()
        finally:
            db.dispose()

    def object(self, sha: str) -> bytes:
        body: bytes = self.s3.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/sha256/{sha}")["Body"].read()
        return body


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    s3 = MotoS3(tmp_path / "moto.log").start()
    s3.apply_env(monkeypatch)
    s3.client().create_bucket(Bucket=BUCKET)
    yield s3
    s3.kill()


@pytest.fixture
def fleet(db_url: str, tmp_path: Path, publisher, moto: MotoS3) -> Fleet:
    init = init_service(tmp_path / "data", tmp_path / "rk", [load_verify_key(publisher.public_path)], db_url)
    key = tmp_path / "replica.key"
    move_to_database(init.data_dir, db_url, key)
    shutil.rmtree(init.data_dir)  # a stateless deployment: the database, the key file, the bucket
    return Fleet(db_url, key, init.admin_token, moto, tmp_path)


def _package(tmp: Path, packages: dict[int, bytes], version: int) -> Path:
    path = tmp / f"ctr-{version}.edgepkg"
    path.write_bytes(packages[version])
    return path


def _target(published: dict[str, object]) -> str:
    return f"/repository/targets/{published['channel']}/ctr/{published['sha256']}.{published['version']}.edgepkg"


def test_replicas_keep_packages_in_the_bucket_and_serve_them_with_ranges(fleet, packages, tmp_path):
    """(a) published through an S3 replica: the object is in the bucket, no chunk rows; (b) another replica
    serves it, whole and in ranges, and a node installs it; (f) a replica without S3 answers 503 for it,
    with one log line naming the setting, and still serves the blobs kept in the database."""
    a, b, plain = fleet.replica("a"), fleet.replica("b"), fleet.replica("plain", s3=False)
    try:
        for replica in (a, b, plain):
            replica.start()
        with fleet.admin(plain) as admin:
            in_db = admin.publish(_package(tmp_path, packages, 1), "stable")  # before the fleet moved to S3
        with fleet.admin(a) as admin:
            published = admin.publish(_package(tmp_path, packages, 2), "stable")
        sha = str(published["sha256"])
        assert f"(database {'postgresql' if 'postgresql' in fleet.db_url else 'sqlite'}, packages in {BLOB_URL})" \
            in a.log.read_text()  # the ready line says where packages go
        rows = fleet.rows()
        assert rows == {in_db["sha256"]: (in_db["size"], "db"), sha: (published["size"], "s3")}
        stored = fleet.object(sha)
        assert len(stored) == published["size"] and hashlib.sha256(stored).hexdigest() == sha
        assert fleet.chunks(sha) == 0 and fleet.chunks(str(in_db["sha256"])) > 0

        # The other replica serves it from the bucket: whole, a resumed tail, a middle range, revalidation.
        whole = httpx.get(b.url + _target(published))
        assert whole.status_code == 200 and whole.content == stored
        tail = httpx.get(b.url + _target(published), headers={"Range": f"bytes={len(stored) - 1000}-"})
        assert tail.status_code == 206 and tail.content == stored[-1000:]
        assert tail.headers["Content-Range"] == f"bytes {len(stored) - 1000}-{len(stored) - 1}/{len(stored)}"
        mid = httpx.get(b.url + _target(published), headers={"Range": "bytes=100-199", "If-Range": f'"{sha}"'})
        assert mid.status_code == 206 and mid.content == stored[100:200]
        assert httpx.get(b.url + _target(published), headers={"If-None-Match": f'"{sha}"'}).status_code == 304
        # A replica with the bucket still reads what was kept in the database (a fleet moving over).
        old = httpx.get(a.url + _target(in_db))
        assert old.status_code == 200 and hashlib.sha256(old.content).hexdigest() == in_db["sha256"]

        # A node enrolled through one replica installs, through the other, what the bucket holds.
        with fleet.admin(b) as admin:
            token = admin.create_enroll_token([], 600)["token"]
            admin.rollout("ctr", 2, "stable", 100, [])
        enroll_node(tmp_path / "node", b.url, token)
        daemon = NodeDaemon(NodeState(tmp_path / "node"), tmp_path / "models")
        try:
            assert daemon.run_once().installed == [("ctr", 2)]
        finally:
            daemon.close()

        # A replica not given the bucket: 503 (not a 500), one warning naming the setting; 'db' rows still served.
        refused = httpx.get(plain.url + _target(published))
        assert refused.status_code == 503 and refused.json()["error"] == "unavailable"
        lines = [ln for ln in plain.log.read_text().splitlines() if sha in ln and "access" not in ln]
        assert len(lines) == 1 and lines[0].startswith(
            f"WARNING edgerec.sync: refused (blob_unavailable): GET {_target(published)}: blob {sha} "), lines
        assert "--blob-url" in lines[0] and "EDGEREC_BLOB_URL" in lines[0], lines
        assert "Traceback" not in plain.log.read_text()
        assert httpx.get(plain.url + _target(in_db)).content == old.content
    finally:
        for r in (a, b, plain):
            r.stop()


@ON_POSTGRES
def test_store_down_answers_503_and_recovers(fleet, packages, publisher, tmp_path):
    """(c) the object store stops: a download under way ends short, new ones answer 503 at once, check-ins
    go on; back: downloads work. (e) a replica whose bucket cannot be reached does not start: one line, exit 1."""
    missing = subprocess.run([EDGEREC, "sync", "serve", "--key-file", str(fleet.key), "--port", "0",
                              "--blob-url", f"s3://no-such-bucket-{os.getpid()}/x"],
                             env={**os.environ, "EDGEREC_DB_URL": fleet.db_url}, capture_output=True, text=True,
                             timeout=60)
    lines = [ln for ln in (missing.stdout + missing.stderr).splitlines() if ln.strip()]
    assert missing.returncode == 1 and len(lines) == 1, lines
    assert f"--blob-url s3://no-such-bucket-{os.getpid()}/x: the bucket cannot be reached: " in lines[0], lines

    a = fleet.replica("a").start()
    try:
        big = ctr_builder(ctr_weights(5), "big", 1)
        big.add_file("pad.bin", os.urandom(3 * CHUNK))
        (tmp_path / "big-1.edgepkg").write_bytes(big.build(publisher.key))
        with fleet.admin(a) as admin:
            published = admin.publish(_package(tmp_path, packages, 2), "stable")
            large = admin.publish(tmp_path / "big-1.edgepkg", "stable")
            token = admin.create_enroll_token([], 600)["token"]
        stored = fleet.object(str(published["sha256"]))
        enroll_node(tmp_path / "node", a.url, token)
        daemon = NodeDaemon(NodeState(tmp_path / "node"), tmp_path / "models")
        try:
            got = 0
            with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
                    "GET", a.url + f"/repository/targets/stable/big/{large['sha256']}.1.edgepkg", timeout=30) as r:
                for piece in r.iter_bytes(64 * 1024):
                    if got == 0:
                        fleet.s3.kill()  # the store goes while the first chunk is on its way
                    got += len(piece)
            assert got == CHUNK  # the chunk read before the store went, then a short body (the node resumes)
            down = httpx.get(a.url + _target(published), headers={"Range": "bytes=10-"}, timeout=30)
            assert down.status_code == 503 and down.json()["error"] == "unavailable"
            warned = [ln for ln in a.log.read_text().splitlines() if ln.startswith("WARNING edgerec.sync: ")]
            assert len(warned) == 2 and all("read of fleet/a/sha256/" in ln for ln in warned), warned
            assert warned[0].startswith(f"WARNING edgerec.sync: package {large['sha256']}: download cut short: ")
            assert warned[1].startswith(f"WARNING edgerec.sync: refused (blob_unavailable): GET {_target(published)}")
            assert "EndpointConnectionError" in warned[1]
            cycle = daemon.run_once()  # a check-in needs no package bytes
            assert cycle.reachable and not cycle.overloaded and cycle.failures == {} and cycle.installed == []
            assert httpx.get(a.url + "/repository/metadata/timestamp.json").status_code == 200
            with fleet.admin(a) as admin, pytest.raises(ApiError) as refused:
                admin.publish(_package(tmp_path, packages, 3), "stable")
            assert refused.value.status == 503 and refused.value.error == "unavailable"
            assert len(fleet.rows()) == 2  # nothing listed for what could not be stored

            # Back (moto keeps objects in memory: the new server gets the bucket restored, as from a backup).
            fleet.s3.start()
            client = fleet.s3.client()
            client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/sha256/{published['sha256']}", Body=stored)
            back = httpx.get(a.url + _target(published), headers={"Range": "bytes=10-"})
            assert back.status_code == 206 and back.content == stored[10:]
            assert "Traceback" not in a.log.read_text()
        finally:
            daemon.close()
    finally:
        a.stop()


@ON_POSTGRES
def test_a_replica_killed_mid_upload_lists_nothing(fleet, publisher, tmp_path):
    """(d) kill -9 while the ciphertext is being uploaded: no listed blob, no package; publishing again works."""
    b = ctr_builder(ctr_weights(7), "big", 1)
    b.add_file("pad.bin", os.urandom(48 * 1024 * 1024))  # 6 parts: the upload takes a while
    pkg = tmp_path / "big-1.edgepkg"
    pkg.write_bytes(b.build(publisher.key))
    a = fleet.replica("a").start()
    client = fleet.s3.client()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            with fleet.admin(a) as admin:
                admin.publish(pkg, "stable")
        except BaseException as exc:  # the replica dies under it; asserted below
            errors.append(exc)

    t = threading.Thread(target=publish)
    t.start()
    try:
        assert wait_for(lambda: client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), timeout=60,
                        interval=0.01), a.log.read_text()[-2000:]
        a.kill()
        t.join(30)
        # It was killed mid-upload: the multipart upload was never completed, and nothing is listed.
        assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
        assert len(errors) == 1 and fleet.rows() == {}
        db = Database(fleet.db_url)
        try:
            with db.read() as s:
                assert s.execute(select(func.count()).select_from(PackageVersion)).scalar_one() == 0
        finally:
            db.dispose()

        a = fleet.replica("a2").start()
        with fleet.admin(a) as admin:
            published = admin.publish(pkg, "stable")
        sha = str(published["sha256"])
        assert fleet.rows() == {sha: (published["size"], "s3")}
        tail = httpx.get(a.url + f"/repository/targets/stable/big/{sha}.1.edgepkg",
                         headers={"Range": f"bytes={published['size'] - 5 * CHUNK}-"})
        assert tail.status_code == 206 and len(tail.content) == 5 * CHUNK
        assert tail.content == fleet.object(sha)[-5 * CHUNK:]
    finally:
        t.join(30)
        a.stop()


def test_bad_blob_urls_are_one_line_errors(tmp_path):
    """(e) a malformed --blob-url (or EDGEREC_BLOB_URL): one line naming the option, exit 1, nothing started."""
    for args, env, says in (([], {"EDGEREC_BLOB_URL": "http://bucket/x"}, "expected s3://bucket/prefix"),
                            (["--blob-url", "s3://key:secret@bucket/x"], {}, "no user name or password")):
        out = subprocess.run([EDGEREC, "sync", "serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", "0",
                              "--key-file", str(tmp_path / "k"), *args], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        assert out.returncode != 0 and len(lines) == 1, (args, env, lines)
        assert "--blob-url" in lines[0] and says in lines[0] and "secret" not in lines[0], (args, env, lines)
    for url, says in (("s3://Bad_Bucket/x", "is not an S3 bucket name"), ("s3://bucket/a/../b", "'..' segment"),
                      ("s3://bucket:9000/x", "without query, fragment or port"), ("s3:///x", "not an S3 bucket")):
        with pytest.raises(ConfigError, match=f"^--blob-url: .*{re.escape(says)}"):
            parse_blob_url(url)
    assert not (tmp_path / "x.db").exists()
    # sync migrate: --blob-url on the command line is for --to-database; exported for the replicas, it does
    # not stop a schema upgrade.
    runner = CliRunner()
    wrong = runner.invoke(cli, ["sync", "migrate", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--blob-url", BLOB_URL])
    assert wrong.exit_code == 1 and "--blob-url goes with --to-database or --blobs-to-bucket" in wrong.output
    upgrade = runner.invoke(cli, ["sync", "migrate", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--json"],
                            env={"EDGEREC_BLOB_URL": BLOB_URL})
    assert upgrade.exit_code == 0 and json.loads(upgrade.output) == {"before": 0}, upgrade.output
    with pytest.raises(ConfigError, match="stateless replica"):
        from edgerec.sync.service.core import SyncService

        SyncService.open(tmp_path, config=ServiceConfig(blob_url=BLOB_URL))
    assert parse_blob_url("s3://edgerec-test/") == S3Settings("edgerec-test", "")

    # Without boto3 the service still imports; only a configured store asks for the extra.
    script = ("import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
              "import edgerec.sync.service.server, edgerec.sync.service.cli\n"
              "from edgerec.sync.service.blob_url import parse_blob_url\n"
              "from edgerec.sync.service.s3_blobs import S3Objects\n"
              "try:\n    S3Objects(parse_blob_url('s3://bucket/x'))\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ConfigError --blob-url: an S3 store needs boto3: pip install 'edgerec[s3]'", out
    assert parse_blob_url(BLOB_URL).key("ab" * 32) == f"{PREFIX}/sha256/{'ab' * 32}"


class _CountingObjects(S3Objects):
    """The real client, recording each ranged GET it makes (start, length)."""

    def __init__(self, settings: S3Settings) -> None:
        super().__init__(settings)
        self.gets: list[tuple[int, int]] = []

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.gets.append((start, length))
        return super().get_range(key, start, length)


@ON_SQLITE
def test_store_is_content_addressed_and_reads_bounded_ranges(db, moto, tmp_path):
    settings = parse_blob_url(BLOB_URL)
    objects = _CountingObjects(settings)
    store = S3BlobStore(db, tmp_path / "tmp", settings, objects)
    data = os.urandom(3 * CHUNK + 123)
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest() and store.put_bytes(data) == sha
    listing = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)
    assert [o["Key"] for o in listing["Contents"]] == [f"{PREFIX}/sha256/{sha}"]  # the same bytes, once
    assert store.size(sha) == len(data) and store.exists(sha) and not store.exists("0" * 64)

    reader = store.open(sha)
    reader.seek(2 * CHUNK - 10)
    assert reader.read(20) == data[2 * CHUNK - 10:2 * CHUNK + 10]  # across a chunk boundary
    reader.seek(3 * CHUNK)
    assert reader.read() == data[3 * CHUNK:]  # a resumed download's tail
    assert objects.gets == [(2 * CHUNK - 10, CHUNK), (3 * CHUNK, 123)]  # one bounded GET each, from the seek on
    assert store.read(sha) == data and all(n <= CHUNK for _, n in objects.gets)
    with pytest.raises(FileNotFoundError):
        store.open("0" * 64)
    zipped = store.put_bytes(zip_with_a_big_member(3 * CHUNK))
    objects.gets.clear()
    with zipfile.ZipFile(store.open(zipped)) as zf:
        assert zf.read("small.json") == b"{}"
    assert 0 < sum(n for _, n in objects.gets) < 2 * CHUNK  # the directory and one member, not the 3 MiB one

    # The store unreachable: a read is a BlobUnavailableError (503 over HTTP; an OSError to file readers).
    moto.kill()
    with pytest.raises(BlobUnavailableError, match="read of fleet/a/sha256/"), store.open(sha) as fh:
        fh.read(1)
    with pytest.raises(OSError):
        store.put_bytes(b"new bytes")
    assert store.size(hashlib.sha256(b"new bytes").hexdigest()) is None  # nothing listed


@ON_SQLITE
def test_migrate_moves_blobs_into_the_bucket(db_url, moto, tmp_path, publisher):
    """``sync migrate --to-database --blob-url``: a data directory's blobs into the bucket; ``sync migrate
    --blobs-to-bucket``: the blobs kept in the database's rows; both resumable."""
    init = init_service(tmp_path / "data", tmp_path / "rk", [load_verify_key(publisher.public_path)], db_url)
    data = os.urandom(CHUNK + 7)
    sha = BlobStore(init.data_dir / "blobs", init.data_dir / "tmp").put_bytes(data)
    cmd = [EDGEREC, "sync", "migrate", "--data-dir", str(init.data_dir), "--db", db_url, "--to-database",
           "--key-file", str(tmp_path / "replica.key"), "--blob-url", BLOB_URL, "--json"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert (out["blobs"], out["blobs_present"], out["blob_url"]) == (1, 0, BLOB_URL)
    assert moto.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/sha256/{sha}")["Body"].read() == data
    again = CliRunner().invoke(cli, cmd[1:])  # in-process from here on: the same command, less start-up
    assert again.exit_code == 0 and (json.loads(again.output)["blobs"], json.loads(again.output)["blobs_present"]) \
        == (0, 1), again.output

    d = Database(db_url)
    try:
        in_rows = os.urandom(2 * CHUNK + 3)
        kept = DbBlobStore(d, tmp_path / "tmp").put_bytes(in_rows)  # stored before the fleet had a bucket
        move = [EDGEREC, "sync", "migrate", "--db", db_url, "--blobs-to-bucket", "--json"]
        first = subprocess.run(move, capture_output=True, text=True, check=True, timeout=120,
                               env={**os.environ, "EDGEREC_BLOB_URL": BLOB_URL})
        assert json.loads(first.stdout) == {"blobs": 1, "blob_url": BLOB_URL}
        with d.read() as s:
            assert dict(s.execute(select(BlobRow.sha256, BlobRow.location)).all()) == {sha: "s3", kept: "s3"}
            assert s.execute(select(func.count()).select_from(BlobChunk)).scalar_one() == 0
        assert S3BlobStore(d, tmp_path / "tmp", parse_blob_url(BLOB_URL)).read(kept) == in_rows
        moved = CliRunner().invoke(cli, move[1:], env={"EDGEREC_BLOB_URL": BLOB_URL})
        assert moved.exit_code == 0 and json.loads(moved.output) == {"blobs": 0, "blob_url": BLOB_URL}, moved.output
    finally:
        d.dispose()
