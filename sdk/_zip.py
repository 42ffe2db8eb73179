"""The zip layer of the package reader: bounded work on bytes nobody has vouched for yet.

:meth:`edgerec.sdk.package.Package.open` calls these in order. Before the
publisher's signature is checked, a reader touches only the end-of-directory
record (at most 64 KiB from the end), the central directory (bounded by
``PackageLimits.max_directory_size``) and the two entries the signature
check needs (``signature.json`` and ``manifest.json``, each bounded). An
unsigned or foreign file of any size therefore costs a few small reads, and
a path is never read whole into memory before it is trusted.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zipfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import DuplicateEntryError, IntegrityError, OversizedEntryError, PackageError, UnsafeEntryError
from .manifest import check_path

if TYPE_CHECKING:
    from .package import PackageLimits

Blob = bytes | memoryview
# Entries at least this large are read in chunks into memory no Python code has touched yet
# (see _read_chunks); smaller ones are plain bytes.
CHUNK = 1 << 20
MAX_NAME = 1024  # characters in an entry name

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes)
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the record above
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_MAX_COMMENT = 0xFFFF


@contextlib.contextmanager
def open_source(source: str | os.PathLike[str] | bytes | IO[bytes], limit: int) -> Iterator[tuple[str, IO[bytes], int]]:
    """(label, seekable binary file, size) for a path, bytes or an open binary file; nothing is read."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size("package", len(data), limit)
        yield "package", io.BytesIO(data), len(data)
        return
    if not isinstance(source, str | os.PathLike):
        fh = source
        try:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
        except (OSError, ValueError) as exc:
            raise PackageError(f"package: not a seekable binary file ({exc})") from exc
        _check_size("package", size, limit)
        yield "package", fh, size
        return
    label = str(source)
    try:
        opened = open(source, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as exc:
        raise PackageError(f"{label}: cannot read ({exc.strerror})") from exc
    with opened:
        size = opened.seek(0, os.SEEK_END)
        _check_size(label, size, limit)
        yield label, opened, size


def _check_size(label: str, size: int, limit: int) -> None:
    if size > limit:
        raise OversizedEntryError(f"{label}: {size} bytes exceeds {limit}")


def open_zip(label: str, fh: IO[bytes], size: int, limits: PackageLimits) -> zipfile.ZipFile:
    """The zip, once its end record says the directory fits the limits (zipfile reads it whole)."""
    count, directory = _directory_extent(label, fh, size)
    if count > limits.max_entries:
        raise OversizedEntryError(f"{label}: {count} entries exceeds {limits.max_entries}")
    if directory > limits.max_directory_size:
        raise OversizedEntryError(
            f"{label}: the zip directory is {directory} bytes, over {limits.max_directory_size}")
    try:
        fh.seek(0)
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise PackageError(f"{label}: not a package (bad or truncated zip: {exc})") from exc


def _directory_extent(label: str, fh: IO[bytes], size: int) -> tuple[int, int]:
    """(entry count, central directory bytes) from the end record; reads 22 bytes, at most 64 KiB."""
    bad = PackageError(f"{label}: not a package (bad or truncated zip: no end of central directory)")
    tail_len = min(size, _EOCD.size)  # the usual case: no archive comment
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    if not tail.startswith(b"PK\x05\x06"):
        tail_len = min(size, _EOCD.size + _MAX_COMMENT)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise bad
    _, _, _, _, count, directory, offset, _ = _EOCD.unpack_from(tail, at)
    if count != 0xFFFF and directory != 0xFFFFFFFF and offset != 0xFFFFFFFF:
        return count, directory
    locator_at = size - tail_len + at - _EOCD64_LOCATOR.size
    if locator_at < 0:
        raise bad
    fh.seek(locator_at)
    locator = fh.read(_EOCD64_LOCATOR.size)
    if len(locator) != _EOCD64_LOCATOR.size:
        raise bad
    sig, _, record_at, _ = _EOCD64_LOCATOR.unpack(locator)
    if sig != b"PK\x06\x07" or record_at + _EOCD64.size > size:
        raise bad
    fh.seek(record_at)
    record = fh.read(_EOCD64.size)
    if len(record) != _EOCD64.size or record[:4] != b"PK\x06\x06":
        raise bad
    fields = _EOCD64.unpack(record)
    return fields[7], fields[8]


def check_infos(label: str, zf: zipfile.ZipFile, limits: PackageLimits) -> dict[str, zipfile.ZipInfo]:
    """Every entry by name, once names, sizes and ratios passed (nothing is decompressed)."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise OversizedEntryError(f"{label}: {len(infos)} entries exceeds {limits.max_entries}")
    seen: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            raise DuplicateEntryError(f"{label}: duplicate entry {name[:MAX_NAME]!r}")
        if len(name) > MAX_NAME:
            raise UnsafeEntryError(f"{label}: an entry name is longer than {MAX_NAME} characters")
        check_path(name, label)
        if info.is_dir():
            raise UnsafeEntryError(f"{label}: unexpected folder entry {name!r}")
        if info.file_size > limits.max_entry_size:
            raise OversizedEntryError(
                f"{label}: entry {name!r} is {info.file_size} bytes, over {limits.max_entry_size}"
            )
        ratio_cap = max(info.compress_size, 1) * limits.max_compression_ratio
        if info.file_size > ratio_cap and info.file_size > 1024 * 1024:
            raise OversizedEntryError(f"{label}: entry {name!r} has a suspicious compression ratio")
        total += info.file_size
        if total > limits.max_total_size:
            raise OversizedEntryError(f"{label}: contents exceed {limits.max_total_size} bytes")
        seen[name] = info
    return seen


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, limit: int) -> Blob:
    """An entry's bytes, refused past ``limit`` or past what its header says."""
    name = info.filename
    if info.file_size > limit:
        raise OversizedEntryError(f"{label}: entry {name!r} is {info.file_size} bytes, over {limit}")
    # The header's size can lie; read at most one byte past it to find out.
    want = info.file_size + 1
    try:
        with zf.open(info) as fh:
            data: Blob = fh.read(want) if want <= CHUNK else _read_chunks(fh, want)
    except zipfile.BadZipFile as exc:
        raise IntegrityError(f"{label}: entry {name!r} is corrupt ({exc})") from exc
    except (EOFError, OSError, ValueError) as exc:
        raise PackageError(f"{label}: entry {name!r} is truncated ({exc})") from exc
    if len(data) > info.file_size:
        raise OversizedEntryError(f"{label}: entry {name!r} is larger than its header says")
    return data


def _read_chunks(fh: Any, want: int) -> memoryview:
    """Read a large entry a chunk at a time into fresh, untouched memory.

    One ``read`` of a 50 MB entry joins its pieces and faults in every page of
    the result while holding the GIL: 30-40 ms in which an edge server's
    request threads cannot run. Here the GIL is held for one chunk at a time.
    """
    out = np.empty(want, np.uint8)  # not zeroed: pages are faulted in by the copies below
    view = out.data
    n = 0
    while n < want:
        chunk = fh.read(min(CHUNK, want - n))
        if not chunk:
            break
        view[n:n + len(chunk)] = chunk
        n += len(chunk)
    return view[:n].toreadonly()
