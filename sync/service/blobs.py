"""A content-addressed blob store: each package is stored once, named by its SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from edgerec.sdk.files import write_atomic
from edgerec.sync.protocol.errors import PayloadTooLargeError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is a lowercase SHA-256 hex digest; ValueError otherwise."""
    if not _HEX64.match(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class SeekableReader(io.RawIOBase):
    """A read-only raw file of ``size`` bytes that subclasses fill in :meth:`readinto` from ``tell()`` on.

    Seekable, so a zip reader reads only a package's directory and an HTTP range
    starts where it asks; wrapped in :class:`io.BufferedReader` by the stores.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos


class Blobs(Protocol):
    """What the service asks of a blob store: :class:`BlobStore` (files), :class:`.db_blobs.DbBlobStore` or
    :class:`.s3_blobs.S3BlobStore`."""

    def receive(self, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]: ...

    def put_bytes(self, data: bytes) -> str: ...

    def read(self, sha256: str) -> bytes: ...

    def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...


class BlobStore:
    """``root/sha256/ab/<hex>``; temporary files go to ``tmp`` (same file system)."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def receive(self, chunks: Iterable[bytes], limit: int) -> tuple[Path, str, int]:
        """Stream an upload to a temporary file; refuse it past ``limit`` bytes.

        Returns the temporary path, its SHA-256 and size; the caller moves it
        in with :meth:`adopt` or deletes it.
        """
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.tmp)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(f"upload exceeds the limit of {limit} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        return Path(name), digest.hexdigest(), size

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (atomically, once); return its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():
            return sha
        write_atomic(target, data, mode=0o644)
        return sha

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def open(self, sha256: str) -> BinaryIO:
        """The blob as a seekable binary file (a zip reader reads only its directory)."""
        return self.path(sha256).open("rb")

    def link(self, sha256: str, dest: Path) -> None:
        """Expose a blob at ``dest`` (a hard link; a copy across file systems)."""
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(self.path(sha256), tmp)
        except OSError:
            shutil.copyfile(self.path(sha256), tmp)
        os.replace(tmp, dest)
