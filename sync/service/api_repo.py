"""The TUF repository as static files: ``/repository/metadata/*`` and ``/repository/targets/*``.

The same folders can be synced to a CDN or object store; these views only
add the cache headers such a front needs and byte ranges (resumable
downloads). Versioned metadata and hash-prefixed targets never change, so
they are immutable; ``timestamp.json`` must be revalidated. A stateless
replica (no data directory) answers the same URLs from the database: metadata
from ``tuf_metadata``, targets streamed chunk by chunk from ``blob_chunks``,
with the same byte ranges (:func:`_blob_response`).
"""

from __future__ import annotations

import io
import re
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_from_directory
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.wsgi import FileWrapper

from edgerec.sync.service.store.models import ChannelTarget, PackageVersion

from .app import service
from .blobs import CHUNK
from .db_blobs import DbBlobStore

bp = Blueprint("repository", __name__)
_IMMUTABLE = "public, max-age=31536000, immutable"


@bp.get("/repository/metadata/<name>")
def metadata(name: str) -> Any:
    if not name.endswith(".json"):
        raise NotFound()
    svc = service()
    if svc.datadir is None:
        data = svc.repo.file(name)
        if data is None:
            raise NotFound()
        resp = Response(data, mimetype="application/json")
        resp.add_etag()
        resp.make_conditional(request)
    else:
        resp = send_from_directory(svc.datadir.metadata, name, conditional=True, max_age=0)
    resp.headers["Cache-Control"] = "no-cache" if name in ("timestamp.json", "root.json") else _IMMUTABLE
    return resp


@bp.get("/repository/targets/<path:path>")
def targets(path: str) -> Any:
    svc = service()
    if svc.datadir is None:
        assert isinstance(svc.blobs, DbBlobStore)
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


def _blob_response(blobs: DbBlobStore, sha: str) -> Response:
    """A blob from the database, streamed one chunk at a time; ``Range`` and ``If-Range`` as for a file."""
    try:
        reader = blobs.open(sha)
    except FileNotFoundError as exc:
        raise NotFound() from exc
    size = reader.seek(0, io.SEEK_END)
    reader.seek(0)
    resp = Response(FileWrapper(reader, CHUNK), mimetype="application/octet-stream", direct_passthrough=True)
    resp.content_length = size
    resp.set_etag(sha)  # content-addressed: the digest is a strong validator
    # Werkzeug seeks the (seekable) reader to the range's start: a resumed download reads only what is left.
    resp.make_conditional(request, accept_ranges=True, complete_length=size)
    return resp


@bp.get("/api/v1/health")
def health() -> Any:
    return jsonify(status="ok")
