"""The local control API the node daemon drives: load, unload and list model versions.

Loopback callers only (unless ``control_allow_remote``), ``Authorization:
Bearer <token>`` compared in constant time; no token configured means the API
is off. Operations run one at a time.

With several worker processes a load runs in two phases so that all workers
switch or none does: every worker prepares (verify, load, warm up), then every
worker commits (the swap); if any prepare fails, all discard theirs. Workers
reach each other on private loopback ports listed in the run folder; a request
carrying ``X-Edgerec-Peer`` is one worker's call to another and is not fanned
out again.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import Any

import httpx
from flask import Blueprint, Response, request

from .context import server
from .errors import BadRequestError, ConflictError, EdgeServerError, ForbiddenError, NotFoundError, UnauthorizedError
from .repository import ModelVersion, Prepared
from .wire import json_response, loads_object

bp = Blueprint("control", __name__, url_prefix="/control/v1")
log = logging.getLogger("edgerec.edge_server.control")
PEER_HEADER = "X-Edgerec-Peer"
PENDING_TTL_S = 600.0
PEER_TIMEOUT_S = 600.0


def is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


@bp.before_request
def authorize() -> None:
    srv = server()
    if not srv.config.control_allow_remote and not is_loopback(request.remote_addr):
        raise ForbiddenError("the control API answers loopback callers only", field="remote_addr")
    if srv.control_token is None:
        raise ForbiddenError("the control API is off: start the server with --control-token-file "
                             "or EDGEREC_CONTROL_TOKEN", field="Authorization")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), srv.control_token.encode()):
        raise UnauthorizedError("missing or wrong bearer token", field="Authorization")


@bp.get("/models")
def list_models() -> Response:
    return json_response({"models": [mv.describe() for mv in server().repo.versions()]})


def _load_body() -> tuple[str, bool]:
    doc = loads_object(request.get_data(cache=False))
    path, serve = doc.get("path"), doc.get("serve", True)
    if not isinstance(path, str) or not path:
        raise BadRequestError("expected the absolute path of a .edgepkg file", field="path")
    if not isinstance(serve, bool):
        raise BadRequestError("expected true or false", field="serve")
    return path, serve


def _answer(mv: ModelVersion) -> dict[str, Any]:
    d = mv.describe()
    return {"name": d["name"], "version": d["version"], "accelerator": d["accelerator"], "state": d["state"],
            "fully_delegated": d["fully_delegated"], "loaded_at": d["loaded_at"]}


@bp.post("/models/load")
def load() -> Response:
    """Verify, load, warm up and swap in a version (on every worker); the old one keeps serving on failure."""
    path, serve = _load_body()
    srv = server()
    with srv.control_lock:
        peers = [] if request.headers.get(PEER_HEADER) else srv.peers()
        prepared = srv.repo.prepare(path)
        remote: list[tuple[str, str]] = []
        try:
            for peer in peers:
                doc = _call(peer, "/internal/prepare", {"path": path})
                remote.append((peer, doc["candidate"]))
        except EdgeServerError:
            srv.repo.discard(prepared)
            for peer, candidate in remote:
                _call(peer, "/internal/abort", {"candidate": candidate}, quiet=True)
            raise
        mv = srv.repo.commit(prepared, serve=serve)
        for peer, candidate in remote:
            _call(peer, "/internal/commit", {"candidate": candidate, "serve": serve})
        srv.save_state()
    log.info("loaded %s v%s from %s (%s)", mv.name, mv.version, path, mv.state)
    return json_response(_answer(mv))


@bp.post("/models/<name>/versions/<version>/unload")
def unload(name: str, version: str) -> Response:
    srv = server()
    with srv.control_lock:
        mv = srv.repo.unload(name, version)
        if not request.headers.get(PEER_HEADER):
            for peer in srv.peers():
                _call(peer, f"/models/{name}/versions/{version}/unload", {}, quiet=True)
        srv.save_state()
    log.info("unloaded %s v%s", mv.name, mv.version)
    return json_response({"name": mv.name, "version": mv.version, "state": "unloaded"})


# -- worker to worker -------------------------------------------------------------


@bp.post("/internal/prepare")
def internal_prepare() -> Response:
    path, _ = _load_body()
    srv = server()
    _expire(srv.pending)
    prepared = srv.repo.prepare(path)
    key = prepared.id if isinstance(prepared, Prepared) else f"loaded-{prepared.name}-{prepared.version}"
    srv.pending[key] = (time.monotonic(), prepared)
    return json_response({"candidate": key})


@bp.post("/internal/commit")
def internal_commit() -> Response:
    doc = loads_object(request.get_data(cache=False))
    entry = server().pending.pop(str(doc.get("candidate")), None)
    if entry is None:
        raise NotFoundError("no such prepared version (expired or already used)", field="candidate")
    # No control lock here: the coordinating worker holds its own while it waits for this answer.
    mv = server().repo.commit(entry[1], serve=doc.get("serve", True) is not False)
    return json_response(_answer(mv))


@bp.post("/internal/abort")
def internal_abort() -> Response:
    doc = loads_object(request.get_data(cache=False))
    entry = server().pending.pop(str(doc.get("candidate")), None)
    if entry is not None:
        server().repo.discard(entry[1])
    return json_response({"aborted": entry is not None})


def _expire(pending: dict[str, tuple[float, Any]]) -> None:
    now = time.monotonic()
    for key, (at, prepared) in list(pending.items()):
        if now - at > PENDING_TTL_S:
            pending.pop(key, None)
            server().repo.discard(prepared)


def _call(peer: str, path: str, body: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """POST to a sibling worker's control API; its error comes back as the same kind."""
    headers = {"Authorization": f"Bearer {server().control_token}", PEER_HEADER: "1"}
    try:
        r = httpx.post(f"{peer}/control/v1{path}", json=body, headers=headers, timeout=PEER_TIMEOUT_S)
        doc: dict[str, Any] = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        if quiet:
            log.warning("worker %s did not answer %s: %s", peer, path, exc)
            return {}
        raise _PeerError(f"worker {peer} did not answer: {exc}") from exc
    if r.status_code >= 400 and not quiet:
        err = _PeerError(str(doc.get("detail", doc)), doc.get("field"))
        err.status, err.code = r.status_code, str(doc.get("error", _PeerError.code))
        raise err
    return doc


class _PeerError(ConflictError):
    """A sibling worker refused or did not answer; relayed with its own status and code."""

    code = "peer_failed"


__all__ = ["PEER_HEADER", "bp", "is_loopback"]
