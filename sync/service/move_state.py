"""``edgerec sync migrate --to-database``: move a data directory's files into the database.

What a data directory holds besides the database (see :mod:`.datadir`): the
online keys go into ``wrapped_keys`` wrapped with a replica key (its file is
made when missing), the package ciphertexts into ``blobs``/``blob_chunks``
(streamed, one chunk in memory), or with ``--blob-url`` into an object store
(:mod:`.s3_blobs`), each checked against its name. The TUF
metadata is in the database already; its files are only a rendering. Run
again, it adds only what is missing, so it can finish an interrupted move.
Afterwards replicas run with ``--db`` and ``--key-file`` alone.

``edgerec sync migrate --blobs-to-bucket`` (:func:`move_blobs_to_bucket`)
moves blobs already in the database's rows into the ``--blob-url`` bucket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update

from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.service.store.models import BLOB_IN_DB, BLOB_IN_S3, BlobChunk, BlobRow

from .blob_url import S3Settings
from .blobs import CHUNK, check_sha256
from .datadir import DataDir
from .db_blobs import DbBlobStore
from .online_keys import OnlineKeys
from .replica_keys import create_key_file, key_id, read_key_file, wrap_online_keys
from .s3_blobs import ReplicaBlobs, S3BlobStore
from .store import Database, migrate


@dataclass(frozen=True)
class Moved:
    """What one run moved: keys newly wrapped, blobs newly stored (and those already there), the key's id."""

    keys: int
    blobs: int
    blobs_present: int
    key_id: str
    key_created: bool


def move_to_database(data_dir: Path, db_url: str | None, key_file: Path, s3: S3Settings | None = None) -> Moved:
    """Copy the online keys and blobs of ``data_dir`` into its database (or ``db_url``); the blobs into the
    object store ``s3`` instead, when given (indexed in the database all the same)."""
    dd = DataDir(data_dir)
    db = Database(dd.db_url(db_url))
    try:
        migrate(db)
        secrets = OnlineKeys(dd.keys).all()  # every key readable before anything is written
        created = not key_file.exists()
        if created:
            create_key_file(key_file)
        key = read_key_file(key_file)
        wrapped = wrap_online_keys(db, key, secrets)
        store: ReplicaBlobs
        if s3 is None:
            store = DbBlobStore(db, dd.tmp)
        else:
            store = S3BlobStore(db, dd.tmp, s3)
            store.objects.check_bucket()
        moved = present = 0
        for path in sorted((dd.blobs / "sha256").glob("*/*")):
            try:
                sha = check_sha256(path.name)
            except ValueError:
                continue  # not a blob (a temporary file of an interrupted write)
            if store.exists(sha):
                present += 1
                continue
            if _digest(path) != sha:
                raise ConfigError(f"{path}: its content does not match its name (a damaged blob); not moved")
            with path.open("rb") as fh:
                stored = store.put_stream(fh)
            if stored != sha:  # changed while being read
                raise ConfigError(f"{path}: changed while it was moved")
            moved += 1
        return Moved(wrapped, moved, present, key_id(key), created)
    finally:
        db.dispose()


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(CHUNK):
            h.update(piece)
    return h.hexdigest()


def move_blobs_to_bucket(db_url: str, s3: S3Settings, work: Path) -> int:
    """Move the blobs kept in the database's rows (``location`` 'db') into the bucket; how many moved.

    Each is streamed chunk by chunk into its object; then one transaction
    marks its row 's3' and deletes its chunks. Interrupted, a blob keeps its
    rows and is moved again by the next run. Run it once every replica has
    ``--blob-url``: a replica without it answers 503 for a moved blob, and a
    download reading the chunks at that moment stops short (nodes resume it
    with a range, from the bucket).
    """
    db = Database(db_url)
    try:
        migrate(db)
        store = S3BlobStore(db, work, s3)
        store.objects.check_bucket()
        with db.read() as session:
            rows = session.execute(select(BlobRow.sha256, BlobRow.size, BlobRow.chunk_size)
                                   .where(BlobRow.location == BLOB_IN_DB).order_by(BlobRow.sha256)).all()
        for sha, size, chunk_size in rows:
            with store.in_db.reader(sha, size, chunk_size) as reader:
                store.objects.upload(reader, s3.key(sha))
            with db.write() as session:
                session.execute(update(BlobRow).where(BlobRow.sha256 == sha, BlobRow.location == BLOB_IN_DB)
                                .values(location=BLOB_IN_S3))
                session.execute(delete(BlobChunk).where(BlobChunk.sha256 == sha))
        return len(rows)
    finally:
        db.dispose()
