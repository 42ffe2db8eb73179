"""Package ciphertexts kept in the database, so that any replica can serve any of them.

A blob is split into ``blob_chunks`` rows of :data:`CHUNK` bytes (bytea on
PostgreSQL, BLOB on SQLite) and listed in ``blobs`` once its last chunk is
in: a listed blob is complete. Writes go a few chunks per transaction, so an
upload never holds one long transaction or more than a chunk per statement;
reads fetch one chunk per short read transaction, so a download of any size
costs one chunk of memory and resumes at any byte (:class:`BlobReader` is
seekable: HTTP ranges skip straight to the chunk they start in).
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from edgerec.sync.protocol.errors import BlobUnavailableError
from edgerec.sync.service.store.models import BLOB_IN_DB, BlobChunk, BlobRow

from .blob_url import BLOB_URL_ENV
from .blobs import CHUNK, BlobStore, SeekableReader, check_sha256
from .store import Database

_CHUNKS_PER_TRANSACTION = 8
PENDING = "pending-"  # chunks of an upload still being written are stored under this prefix, never a digest


class DbBlobStore:
    """The blob store of a stateless replica: uploads stream through ``tmp`` (local), blobs live in ``db``."""

    def __init__(self, db: Database, tmp: Path) -> None:
        self.db = db
        self.local = BlobStore(tmp, tmp)  # only its upload spooling (receive) is used

    def receive(self, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
        """As :meth:`BlobStore.receive`: spool an upload to a local temporary file, bounded by ``limit``."""
        return self.local.receive(chunks, limit)

    def size(self, sha256: str) -> int | None:
        """The blob's size, or None when it is not (completely) stored."""
        check_sha256(sha256)
        with self.db.read() as session:
            return session.execute(select(BlobRow.size).where(BlobRow.sha256 == sha256)).scalar_one_or_none()

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` once; return its SHA-256."""
        return self.put_stream(io.BytesIO(data))

    def put_stream(self, stream: BinaryIO) -> str:
        """Store what ``stream`` holds, :data:`CHUNK` bytes at a time; return its SHA-256.

        The digest is known only at the end, so the chunks go under a temporary
        name first and are renamed with the ``blobs`` row in the last transaction.
        """
        # The start time in the name lets maintenance sweep what a killed replica left (sweep_pending).
        pending = f"{PENDING}{int(time.time())}-{secrets.token_hex(16)}"
        digest, size, seq = hashlib.sha256(), 0, 0
        try:
            while True:
                batch = []
                for _ in range(_CHUNKS_PER_TRANSACTION):
                    piece = stream.read(CHUNK)
                    if not piece:
                        break
                    digest.update(piece)
                    size += len(piece)
                    batch.append({"sha256": pending, "seq": seq, "data": bytes(piece)})
                    seq += 1
                if batch:
                    with self.db.write() as session:
                        session.execute(insert(BlobChunk), batch)
                if len(batch) < _CHUNKS_PER_TRANSACTION:
                    break
            sha = digest.hexdigest()
            try:
                with self.db.write() as session:
                    if session.get(BlobRow, sha) is None:
                        session.execute(update(BlobChunk).where(BlobChunk.sha256 == pending).values(sha256=sha))
                        session.add(BlobRow(sha256=sha, size=size, chunk_size=CHUNK, created=time.time()))
                        return sha
            except IntegrityError:
                pass  # another replica stored the same bytes first
            # Stored before (another replica, another channel): the copy goes.
            with self.db.write() as session:
                session.execute(delete(BlobChunk).where(BlobChunk.sha256 == pending))
            return sha
        except BaseException:
            with self.db.write() as session:
                session.execute(delete(BlobChunk).where(BlobChunk.sha256 == pending))
            raise

    def sweep_pending(self, now: float, older_than_s: float = 3600) -> int:
        """Delete the chunks of uploads started before ``now - older_than_s`` that never finished
        (their replica was killed mid-write); returns how many uploads went."""
        with self.db.read() as session:
            names = session.execute(
                select(BlobChunk.sha256).where(BlobChunk.sha256.like(PENDING + "%")).distinct()
            ).scalars().all()
        stale = [n for n in names if _started(n) < now - older_than_s]
        for name in stale:
            with self.db.write() as session:
                session.execute(delete(BlobChunk).where(BlobChunk.sha256 == name))
        return len(stale)

    def read(self, sha256: str) -> bytes:
        """The whole blob (for small reads, such as a package's manifest check)."""
        with self.open(sha256) as reader:
            return reader.read()

    def open(self, sha256: str) -> io.BufferedReader:
        """A stored blob as a seekable binary file (reads a chunk at a time); FileNotFoundError when not stored,
        :class:`BlobUnavailableError` when its bytes are in an object store this replica was not given."""
        row = listed(self.db, sha256)
        if row is None:
            raise FileNotFoundError(f"blob {sha256} is not stored")
        if row.location != BLOB_IN_DB:
            # Logged once, as the refused request's warning (the alerts' manifest reads skip it quietly).
            raise BlobUnavailableError(f"blob {sha256} is stored in the object store ({row.location}) and this "
                                       f"replica has none configured: start it with --blob-url (or {BLOB_URL_ENV}) "
                                       "as the others")
        return self.reader(sha256, row.size, row.chunk_size)

    def reader(self, sha256: str, size: int, chunk_size: int) -> io.BufferedReader:
        """The chunks of a listed ``db`` blob as a seekable binary file."""
        return io.BufferedReader(BlobReader(self.db, sha256, size, chunk_size), CHUNK)


def listed(db: Database, sha256: str) -> Row[int, int, str] | None:
    """The ``blobs`` row of a stored blob (size, chunk_size, location), or None when it is not listed."""
    check_sha256(sha256)
    with db.read() as session:
        return session.execute(select(BlobRow.size, BlobRow.chunk_size, BlobRow.location)
                               .where(BlobRow.sha256 == sha256)).one_or_none()


def _started(pending: str) -> float:
    try:
        return float(pending.removeprefix(PENDING).split("-", 1)[0])
    except ValueError:
        return 0.0  # not a name this module made: old enough to go


class BlobReader(SeekableReader):
    """Reads a blob chunk by chunk, one short read transaction per chunk."""

    def __init__(self, db: Database, sha256: str, size: int, chunk_size: int) -> None:
        super().__init__(size)
        self.db, self.sha256, self.chunk_size = db, sha256, chunk_size
        self._cached: tuple[int, bytes] | None = None

    def _chunk(self, seq: int) -> bytes:
        if self._cached is None or self._cached[0] != seq:
            with self.db.read() as session:
                data = session.execute(
                    select(BlobChunk.data).where(BlobChunk.sha256 == self.sha256, BlobChunk.seq == seq)
                ).scalar_one_or_none()
            if data is None:
                raise OSError(f"blob {self.sha256}: chunk {seq} is missing")
            self._cached = (seq, bytes(data))
        return self._cached[1]

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        done = 0
        while done < len(buffer) and self._pos < self.size:
            seq, skip = divmod(self._pos, self.chunk_size)
            piece = self._chunk(seq)[skip:skip + len(buffer) - done]
            buffer[done:done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done
