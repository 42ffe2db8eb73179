"""Package ciphertexts in an S3-compatible object store, indexed in the database (``sync serve --blob-url``).

A blob is the object ``<prefix>/sha256/<hex>`` (content-addressed: the same
bytes are stored once, by whichever replica comes first) and a ``blobs`` row
with ``location`` 's3'. The object is uploaded completely first and the row
inserted after, so a listed blob is complete, as with :class:`.db_blobs.DbBlobStore`;
a replica killed mid-upload leaves at most an unlisted object (overwritten with
the same bytes by the next publish) or an unfinished multipart upload (for the
bucket's lifecycle rule to abort). Blobs listed before the store was configured
('db' rows) are still read from ``blob_chunks``, so a fleet can move over one
replica at a time.

Reads are ranged GETs of at most :data:`~.blobs.CHUNK` bytes (:class:`S3Reader`,
seekable): a download of any size costs one chunk of memory and a resumed one
reads only what is left. A store that cannot be reached answers
:class:`~edgerec.sync.protocol.errors.BlobUnavailableError` (503), never a 500.

boto3 is imported only here, and only when a store is configured: ``pip install
'edgerec[s3]'``. :class:`S3Objects` is the one boundary where its untyped client is met.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy.exc import IntegrityError

from edgerec.sdk.http_errors import bounded
from edgerec.sync.protocol.errors import BlobUnavailableError, ConfigError
from edgerec.sync.service.store.models import BLOB_IN_DB, BLOB_IN_S3, BlobRow

from .blob_url import S3Settings
from .blobs import CHUNK, SeekableReader
from .db_blobs import DbBlobStore, listed
from .store import Database

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class S3Objects:
    """The few calls made on the bucket, typed; the boto3 client (``Any``) stays inside this class.

    Endpoint, region and credentials come from boto3's standard chain. Errors of
    the store (unreachable, refused, missing object) become :class:`BlobUnavailableError`.
    """

    def __init__(self, settings: S3Settings) -> None:
        try:
            import boto3
            from boto3.exceptions import S3UploadFailedError
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError as exc:
            raise ConfigError("--blob-url: an S3 store needs boto3: pip install 'edgerec[s3]'") from exc
        self.settings = settings
        # What a failed call raises: the store's answers, its transport, and an upload's wrapper of both.
        self._errors: tuple[type[BaseException], ...] = (BotoCoreError, ClientError, S3UploadFailedError, OSError)
        config = Config(connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
                        retries={"max_attempts": settings.max_attempts, "mode": "standard"})
        # A session per store: boto3's default session is not thread-safe to create clients from; the client is.
        self._client: Any = boto3.session.Session().client("s3", config=config)
        self._transfer: Any = TransferConfig(multipart_threshold=settings.multipart_bytes,
                                             multipart_chunksize=settings.multipart_bytes,
                                             max_concurrency=settings.upload_threads)

    def check_bucket(self) -> None:
        """HeadBucket, at a replica's start: a one-line ConfigError when the bucket cannot be reached."""
        try:
            self._client.head_bucket(Bucket=self.settings.bucket)
        except self._errors as exc:
            raise ConfigError(f"--blob-url {self.settings.url}: the bucket cannot be reached: "
                              f"{bounded(str(exc))}") from exc

    def upload(self, stream: BinaryIO, key: str) -> None:
        """Write ``stream`` (from its position) to ``key``: one PUT, or a multipart upload of bounded parts."""
        try:
            self._client.upload_fileobj(stream, self.settings.bucket, key, Config=self._transfer)
        except self._errors as exc:
            raise self._unavailable("upload", key, exc) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (``length`` > 0), in one ranged GET."""
        try:
            answer = self._client.get_object(Bucket=self.settings.bucket, Key=key,
                                             Range=f"bytes={start}-{start + length - 1}")
            data: bytes = answer["Body"].read()
        except self._errors as exc:
            raise self._unavailable("read", key, exc) from exc
        if len(data) != length:
            raise BlobUnavailableError(f"{self.settings.url}: object {key} gave {len(data)} bytes at {start}, "
                                       f"not {length} (changed or truncated in the bucket)")
        return data

    def _unavailable(self, what: str, key: str, exc: BaseException) -> BlobUnavailableError:
        return BlobUnavailableError(f"{self.settings.url}: {what} of {key} failed: {type(exc).__name__}: "
                                    f"{bounded(str(exc))}")


class S3BlobStore:
    """The blob store of a stateless replica with ``--blob-url``: objects in the bucket, rows in ``db``."""

    def __init__(self, db: Database, tmp: Path, settings: S3Settings, objects: S3Objects | None = None) -> None:
        self.db = db
        self.settings = settings
        self.objects = objects or S3Objects(settings)
        # 'db' rows (stored before the bucket was configured), upload spooling, and the sweep of chunked
        # uploads that replicas without a bucket left half written.
        self.in_db = DbBlobStore(db, tmp)

    def receive(self, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
        """As :meth:`.blobs.BlobStore.receive`: spool an upload to a local temporary file, bounded by ``limit``."""
        return self.in_db.receive(chunks, limit)

    def size(self, sha256: str) -> int | None:
        """The blob's size, or None when it is not (completely) stored, wherever its bytes are."""
        return self.in_db.size(sha256)

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` once; return its SHA-256."""
        return self.put_stream(io.BytesIO(data))

    def put_stream(self, stream: BinaryIO) -> str:
        """Store what a seekable ``stream`` holds from its position on, once; return its SHA-256.

        Read twice: once for the digest (the object's name), once by the upload.
        The stream must not change in between (a package in memory, a stopped
        service's blob file).
        """
        start = stream.tell()
        digest, size = hashlib.sha256(), 0
        while piece := stream.read(CHUNK):
            digest.update(piece)
            size += len(piece)
        sha = digest.hexdigest()
        if self.exists(sha):
            return sha  # stored before, here or in the database: content-addressed, once
        stream.seek(start)
        self.objects.upload(stream, self.settings.key(sha))
        try:
            with self.db.write() as session:
                if session.get(BlobRow, sha) is None:
                    session.add(BlobRow(sha256=sha, size=size, chunk_size=CHUNK, created=time.time(),
                                        location=BLOB_IN_S3))
        except IntegrityError:
            pass  # another replica listed the same bytes (the same object) first
        return sha

    def sweep_pending(self, now: float, older_than_s: float = 3600) -> int:
        """As :meth:`.db_blobs.DbBlobStore.sweep_pending` (chunked uploads of replicas without a bucket)."""
        return self.in_db.sweep_pending(now, older_than_s)

    def read(self, sha256: str) -> bytes:
        """The whole blob (for small reads)."""
        with self.open(sha256) as reader:
            return reader.read()

    def open(self, sha256: str) -> io.BufferedReader:
        """A stored blob as a seekable binary file, from the bucket or the database as its row says;
        FileNotFoundError when it is not stored."""
        row = listed(self.db, sha256)
        if row is None:
            raise FileNotFoundError(f"blob {sha256} is not stored")
        if row.location == BLOB_IN_DB:
            return self.in_db.reader(sha256, row.size, row.chunk_size)
        if row.location != BLOB_IN_S3:
            raise BlobUnavailableError(f"blob {sha256} is stored in {row.location!r}, which this replica does not know")
        return io.BufferedReader(S3Reader(self.objects, self.settings.key(sha256), row.size, row.chunk_size),
                                 CHUNK)


#: The blob stores of a stateless replica (chunks in the database, or objects in a bucket): what it sweeps,
#: serves targets from and migrates into.
ReplicaBlobs = DbBlobStore | S3BlobStore


class S3Reader(SeekableReader):
    """Reads an object with ranged GETs of at most ``chunk_size`` bytes each, from wherever it was seeked to."""

    def __init__(self, objects: S3Objects, key: str, size: int, chunk_size: int) -> None:
        super().__init__(size)
        self.objects, self.key, self.chunk_size = objects, key, chunk_size

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self.chunk_size, self.size - self._pos)
        if length <= 0:
            return 0
        view[:length] = self.objects.get_range(self.key, self._pos, length)
        self._pos += length
        return length
