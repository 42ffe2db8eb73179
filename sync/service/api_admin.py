"""Admin API: enrollment tokens, publishing, rollouts and the fleet view.

Every call carries ``Authorization: Bearer <admin token>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, jsonify, request

from edgerec.sync.protocol.errors import BadRequestError, PayloadTooLargeError

from .api_node import json_body, read_body
from .app import service
from .core import name_arg, summary_doc

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")
_CHUNK = 1024 * 1024


@bp.before_request
def _admin_only() -> None:
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    service().check_admin(token)


def _body() -> dict[str, Any]:
    return json_body(read_body(service().config.max_json_bytes))


def _int(doc: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadRequestError(f"{key}: expected an integer >= {minimum}")
    return value


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError("tags: expected a list of names")
    return [name_arg(t, "tag") for t in value]


@bp.get("/whoami")
def whoami() -> Any:
    return jsonify(ok=True)


@bp.post("/enroll-tokens")
def enroll_token() -> Any:
    doc = _body()
    expires = doc.get("expires_s")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0):
        raise BadRequestError("expires_s: expected a number of seconds > 0")
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
        sha256=result.sha256, size=result.size, signer=result.signer, envelopes=result.envelopes,
        new_version=result.new_version,
    ), 201


@bp.get("/packages")
def packages() -> Any:
    return jsonify(packages=service().packages())


@bp.post("/rollouts")
def rollout() -> Any:
    doc = _body()
    percent = doc.get("percent", 100)
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise BadRequestError("percent: expected a number")
    max_failures = None if doc.get("max_failures") is None else _int(doc, "max_failures")
    max_pct = doc.get("max_failure_percent")
    if max_pct is not None and (isinstance(max_pct, bool) or not isinstance(max_pct, int | float)):
        raise BadRequestError("max_failure_percent: expected a number")
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
    return jsonify(service().revoke(node_id))


@bp.get("/reports")
def reports() -> Any:
    kind = request.args.get("kind")
    try:
        since = float(request.args.get("since", 0))
        limit = int(request.args.get("limit", 1000))
    except ValueError as exc:
        raise BadRequestError("since and limit: expected numbers") from exc
    return jsonify(reports=service().reports(kind, since, limit))
