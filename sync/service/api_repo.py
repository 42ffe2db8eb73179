"""The TUF repository as static files: ``/repository/metadata/*`` and ``/repository/targets/*``.

The same folders can be synced to a CDN or object store; these views only
add the cache headers such a front needs and byte ranges (resumable
downloads). Versioned metadata and hash-prefixed targets never change, so
they are immutable; ``timestamp.json`` must be revalidated. A stateless
replica (no data directory) answers the same URLs from the database: metadata
from ``tuf_metadata``, targets streamed chunk by chunk from ``blob_chunks`` (or
by ranged GETs from the object store of ``--blob-url``), with the same byte
ranges (:func:`_blob_response`).

Every node polls ``timestamp.json`` as often as it checks in, so with a data
directory metadata files are answered from memory (:class:`MetadataFiles`),
checked against the file with one ``stat`` per request: a file that any
process replaced (they are written atomically: a new inode) is read again, so
nothing served is older than the file on disk.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.wsgi import FileWrapper

from edgerec.sdk.http_errors import bounded
from edgerec.sync.service.store.models import ChannelTarget, PackageVersion

from .app import EXTENSION, service
from .blobs import CHUNK
from .s3_blobs import ReplicaBlobs

log = logging.getLogger("edgerec.sync")
bp = Blueprint("repository", __name__)
_IMMUTABLE = "public, max-age=31536000, immutable"
_FILES = "edgerec_metadata_files"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,250}\.json")


class MetadataFiles:
    """The metadata folder's files in memory: at most ``max_entries`` files of at most ``max_bytes`` each."""

    def __init__(self, folder: Path, max_entries: int = 256, max_bytes: int = 1 << 20) -> None:
        self.folder, self.max_entries, self.max_bytes = folder, max_entries, max_bytes
        self._files: dict[str, tuple[tuple[int, int, int], bytes, str, float]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[bytes, str, float] | None:
        """(content, ETag, mtime) of a metadata file; None if it is not a regular file here or too large."""
        try:
            st = os.stat(self.folder / name)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_bytes:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._files.get(name)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2], hit[3]
        try:
            data = (self.folder / name).read_bytes()
        except OSError:
            return None
        # If the file was replaced between the stat and the read, the next request's stat differs: read again.
        entry = (key, data, hashlib.sha256(data).hexdigest()[:32], st.st_mtime)
        with self._lock:
            self._files.pop(name, None)
            self._files[name] = entry
            while len(self._files) > self.max_entries:
                del self._files[next(iter(self._files))]
        return entry[1], entry[2], entry[3]


@bp.record_once
def _files(state: BlueprintSetupState) -> None:
    datadir = state.app.extensions[EXTENSION].datadir
    if datadir is not None:  # a stateless replica reads the database instead
        state.app.extensions[_FILES] = MetadataFiles(datadir.metadata)


@bp.get("/repository/metadata/<name>")
def metadata(name: str) -> Any:
    if not _NAME.fullmatch(name):
        raise NotFound()
    svc = service()
    cache_control = "no-cache" if name in ("timestamp.json", "root.json") else _IMMUTABLE
    if svc.datadir is None:
        data = svc.repo.file(name)
        if data is None:
            raise NotFound()
        resp = Response(data, mimetype="application/json")
        resp.add_etag()
        resp.make_conditional(request)
    else:
        found = current_app.extensions[_FILES].get(name)
        if found is None:  # not there (404), or larger than what is kept in memory
            resp = send_from_directory(svc.datadir.metadata, name, conditional=True, max_age=0)
        else:
            data, etag, mtime = found
            resp = Response(data, mimetype="application/json")
            resp.set_etag(etag)
            resp.last_modified = mtime
            resp.make_conditional(request, accept_ranges=True, complete_length=len(data))  # changes resp itself
    resp.headers["Cache-Control"] = cache_control
    return resp


@bp.get("/repository/targets/<path:path>")
def targets(path: str) -> Any:
    svc = service()
    if svc.datadir is None:
        assert isinstance(svc.blobs, ReplicaBlobs)
        resp = _blob_response(svc.blobs, _published_blob(path))
    else:
        resp = send_from_directory(svc.datadir.targets, path, conditional=True, max_age=0)
    resp.headers["Cache-Control"] = _IMMUTABLE
    return resp


# <channel>/<name>/<sha256>.<version>.edgepkg: the hash-prefixed name of a consistent-snapshot target.
_TARGET = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/"
                     r"([0-9a-f]{64})\.([0-9]{1,18})\.edgepkg$")


def _published_blob(path: str) -> str:
    """The blob a target file name stands for, if that version is published on that channel with that hash."""
    m = _TARGET.match(path)
    if m is None:
        raise NotFound()
    channel, name, sha, version = m[1], m[2], m[3], int(m[4])
    with service().db.read() as session:
        found = session.execute(
            select(PackageVersion.id).join(ChannelTarget, ChannelTarget.package_id == PackageVersion.id).where(
                PackageVersion.name == name, PackageVersion.version == version,
                PackageVersion.blob_sha256 == sha, ChannelTarget.channel == channel)
        ).first()
    if found is None:
        raise NotFound()
    return sha


def _blob_response(blobs: ReplicaBlobs, sha: str) -> Response:
    """A blob from the database or the object store, streamed one chunk at a time; ``Range`` and ``If-Range``
    as for a file. A store that cannot be read answers 503 (BlobUnavailableError), before any byte is sent."""
    try:
        reader = blobs.open(sha)
    except FileNotFoundError as exc:
        raise NotFound() from exc
    size = reader.seek(0, io.SEEK_END)
    reader.seek(0)
    resp = Response(_BlobStream(reader, sha), mimetype="application/octet-stream", direct_passthrough=True)
    resp.content_length = size
    resp.set_etag(sha)  # content-addressed: the digest is a strong validator
    # Werkzeug seeks the (seekable) reader to the range's start: a resumed download reads only what is left.
    resp.make_conditional(request, accept_ranges=True, complete_length=size)
    if request.method == "GET" and resp.status_code in (200, 206) and size:
        # The first chunk is read now, so that a store that is down answers 503 here rather than cutting a
        # 200 off after its headers; the lazy seek to the same place keeps the buffered chunk.
        start = resp.content_range.start if resp.status_code == 206 and resp.content_range else None
        reader.seek(start or 0)
        try:
            reader.peek(1)
        except BaseException:
            reader.close()
            raise
    return resp


class _BlobStream(FileWrapper):
    """A blob's bytes for the WSGI server, a chunk at a time (seekable: werkzeug's ranges seek it). A store
    that fails once the answer has started (the bucket down, chunks moved by ``sync migrate
    --blobs-to-bucket``) ends it short with one warning line, not a traceback: the client sees an
    incomplete body and resumes with a range."""

    def __init__(self, reader: io.BufferedReader, sha: str) -> None:
        super().__init__(reader, CHUNK)
        self.sha = sha

    def __next__(self) -> bytes:
        try:
            return super().__next__()
        except OSError as exc:  # BlobUnavailableError, or a chunk gone from the database
            log.warning("package %s: download cut short: %s", self.sha, bounded(str(exc)))
            raise StopIteration from None


@bp.get("/api/v1/health")
def health() -> Any:
    return jsonify(status="ok")
