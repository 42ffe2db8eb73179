"""The TUF repository as static files: ``/repository/metadata/*`` and ``/repository/targets/*``.

The same folders can be synced to a CDN or object store; these views only
add the cache headers such a front needs and byte ranges (resumable
downloads). Versioned metadata and hash-prefixed targets never change, so
they are immutable; ``timestamp.json`` must be revalidated.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, send_from_directory
from werkzeug.exceptions import NotFound

from .app import service

bp = Blueprint("repository", __name__)
_IMMUTABLE = "public, max-age=31536000, immutable"


@bp.get("/repository/metadata/<name>")
def metadata(name: str) -> Any:
    if not name.endswith(".json"):
        raise NotFound()
    resp = send_from_directory(service().datadir.metadata, name, conditional=True, max_age=0)
    resp.headers["Cache-Control"] = "no-cache" if name in ("timestamp.json", "root.json") else _IMMUTABLE
    return resp


@bp.get("/repository/targets/<path:path>")
def targets(path: str) -> Any:
    resp = send_from_directory(service().datadir.targets, path, conditional=True, max_age=0)
    resp.headers["Cache-Control"] = _IMMUTABLE
    return resp


@bp.get("/api/v1/health")
def health() -> Any:
    return jsonify(status="ok")
