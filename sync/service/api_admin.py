"""Admin API: enrollment tokens, publishing, rollouts and the fleet view.

Every call carries ``Authorization: Bearer <admin token>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, jsonify, request

from edgerec.sync.protocol.errors import BadRequestError, ConfigError, PayloadTooLargeError
from edgerec.sync.service.store.models import MAX_BIGINT

from . import retention
from .api_node import json_body, read_body
from .app import service
from .core import name_arg, summary_doc
from .reports import KINDS

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")
_CHUNK = 1024 * 1024
MAX_TOKEN_LIFETIME_S = 366 * 86400


@bp.before_request
def _admin_only() -> None:
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    service().check_admin(token)


def _body() -> dict[str, Any]:
    return json_body(read_body(service().config.max_json_bytes))


def _int(doc: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_BIGINT:
        raise BadRequestError(f"expected an integer from {minimum} to {MAX_BIGINT}", field=key)
    return value


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError("expected a list of names", field="tags")
    return [name_arg(t, "tag") for t in value]


@bp.get("/whoami")
def whoami() -> Any:
    return jsonify(ok=True)


@bp.post("/enroll-tokens")
def enroll_token() -> Any:
    doc = _body()
    expires = doc.get("expires_s")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)
                                or not 0 < expires <= MAX_TOKEN_LIFETIME_S):
        raise BadRequestError(f"expected a number of seconds > 0 and at most {MAX_TOKEN_LIFETIME_S}",
                              field="expires_s")
    return jsonify(service().create_enroll_token(_tags(doc.get("tags")), expires)), 201


def _upload_chunks(limit: int) -> Iterator[bytes]:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"upload exceeds the limit of {limit} bytes")
    stream = request.stream
    while chunk := stream.read(_CHUNK):
        yield chunk


@bp.post("/packages")
def publish() -> Any:
    svc = service()
    channel = name_arg(request.args.get("channel", ""), "channel")
    result = svc.publish(_upload_chunks(svc.config.max_upload_bytes), channel)
    return jsonify(
        name=result.name, version=result.version, channel=result.channel, target=result.target,
        sha256=result.sha256, size=result.size, signer=result.signer, new_version=result.new_version,
    ), 201


@bp.get("/packages")
def packages() -> Any:
    return jsonify(packages=service().packages())


@bp.post("/rollouts")
def rollout() -> Any:
    doc = _body()
    percent = doc.get("percent", 100)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
        raise BadRequestError("expected a number > 0 and <= 100", field="percent")
    max_failures = None if doc.get("max_failures") is None else _int(doc, "max_failures")
    max_pct = doc.get("max_failure_percent")
    if max_pct is not None and (isinstance(max_pct, bool) or not isinstance(max_pct, int | float)):
        raise BadRequestError("expected a number", field="max_failure_percent")
    s = service().rollout(
        name_arg(doc.get("model"), "model"), _int(doc, "version"), name_arg(doc.get("channel"), "channel"),
        float(percent), _tags(doc.get("tags")), max_failures, None if max_pct is None else float(max_pct),
    )
    return jsonify(summary_doc(s)), 201


@bp.post("/models/<model>/pause")
def pause(model: str) -> Any:
    return jsonify(summary_doc(service().pause(name_arg(model, "model"))))


@bp.post("/models/<model>/resume")
def resume(model: str) -> Any:
    return jsonify(summary_doc(service().resume(name_arg(model, "model"))))


@bp.post("/models/<model>/rollback")
def rollback(model: str) -> Any:
    doc = _body()
    channel = doc.get("channel")
    s = service().rollback(
        name_arg(model, "model"), _int(doc, "version"),
        None if channel is None else name_arg(channel, "channel"),
    )
    return jsonify(summary_doc(s)), 201


@bp.get("/models/<model>")
def model_status(model: str) -> Any:
    return jsonify(service().model_status(model))


@bp.get("/nodes")
def nodes() -> Any:
    return jsonify(nodes=service().nodes())


@bp.get("/nodes/<node_id>")
def node(node_id: str) -> Any:
    return jsonify(service().node(node_id))


@bp.post("/nodes/<node_id>/revoke")
def revoke(node_id: str) -> Any:
    return jsonify(service().revoke(name_arg(node_id, "node_id")))


@bp.post("/prune")
def prune_now() -> Any:
    """Retention, once, now: what was removed, and the ages kept (``ServiceConfig.retention_*``)."""
    svc = service()
    c = svc.config
    removed = retention.prune(svc.db, c)
    return jsonify(removed=removed.to_doc(), retention={
        "reports_s": c.retention_reports_s, "releases_s": c.retention_releases_s, "ops_s": c.retention_ops_s})


@bp.get("/repo-url")
def repo_url() -> Any:
    """The repository origin nodes are told (the admin's setting, else ``sync serve --repo-url``)."""
    return jsonify(service().origin.current().to_dict())


@bp.put("/repo-url")
def set_repo_url() -> Any:
    """Set the origin (a URL, or ``/repository`` for this service's API); ``null`` drops the setting."""
    value = _body().get("repo_url")
    if value is not None and not isinstance(value, str):
        raise BadRequestError("expected a URL, '/repository' or null", field="repo_url")
    try:
        origin = service().origin.set(value)
    except ConfigError as exc:
        raise BadRequestError(str(exc).removeprefix("repo_url: "), field="repo_url") from exc
    return jsonify(origin.to_dict())


@bp.get("/reports")
def reports() -> Any:
    kind = request.args.get("kind")
    if kind is not None and kind not in KINDS:
        raise BadRequestError(f"expected one of {', '.join(KINDS)}", field="kind")
    try:
        since = float(request.args.get("since", 0))
    except ValueError as exc:
        raise BadRequestError("expected a number of seconds", field="since") from exc
    if not math.isfinite(since):
        raise BadRequestError("expected a finite number of seconds", field="since")
    try:
        limit = int(request.args.get("limit", 1000))
    except ValueError as exc:
        raise BadRequestError("expected an integer", field="limit") from exc
    return jsonify(reports=service().reports(kind, since, limit))
