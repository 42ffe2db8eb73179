"""Node API: enrollment, check-ins, signed assignment polls, envelopes and reports.

Every call but enrollment is an RFC 9421 signed request (:mod:`.httpsig`),
checked inside the same database transaction that records its nonce.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from flask import Blueprint, jsonify, request
from sqlalchemy.orm import Session

from edgerec.sdk.http_errors import parse_json
from edgerec.sync.protocol.errors import BadRequestError, PayloadTooLargeError
from edgerec.sync.protocol.origin import API_ORIGIN

from .app import service
from .core import AuthedNode
from .fleet_metrics import policy_of, store_metrics

bp = Blueprint("node", __name__, url_prefix="/api/v1")


def read_body(limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return data


def json_body(data: bytes) -> dict[str, Any]:
    """A JSON object body, strictly parsed (:func:`~edgerec.sdk.http_errors.parse_json`: no NaN,
    no float overflow, bounded nesting), holding only text a database stores (no NUL, no lone
    surrogate)."""
    doc = parse_json(data, "body")
    if not isinstance(doc, dict):
        raise BadRequestError("expected a JSON object", field="body")
    try:
        text = json.dumps(doc, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError("strings must be valid Unicode (a lone surrogate was sent)", field="body") from exc
    if "\\u0000" in text:
        raise BadRequestError("strings must not hold NUL characters", field="body")
    return doc


def signed_url() -> str:
    # The node signs the path and query it sent; rebuild them (host does not matter).
    query = request.query_string.decode("latin-1")
    return "http://edgerec" + quote(request.path) + (f"?{query}" if query else "")


def authenticated(session: Session, body: bytes) -> AuthedNode:
    return service().authenticate_node(session, request.method, signed_url(), request.headers, body)


@bp.post("/enroll")
def enroll() -> Any:
    svc = service()
    doc = json_body(read_body(svc.config.max_json_bytes))
    out = svc.enroll(doc.get("token"), doc.get("signing_key"), doc.get("recipient_key"), doc.get("name"))
    answer = {"node_id": out.node_id, "tags": out.tags, "root": base64.b64encode(out.root).decode(),
              "metadata_path": "/repository/metadata/", "targets_path": "/repository/targets/"}
    origin = svc.origin.current().url
    if origin and origin != API_ORIGIN:  # a static origin: nodes fetch the repository there, not from this API
        answer["repo_url"] = origin
    return jsonify(answer), 201


@bp.get("/node/assignments")
def assignments() -> Any:
    svc = service()
    with svc.db.write() as session:
        node_id = authenticated(session, read_body(svc.config.max_json_bytes)).id
        docs = svc.signed_assignments(session, node_id)
        return jsonify(node_id=node_id, assignments=docs)


@bp.post("/node/checkin")
def checkin() -> Any:
    """One signed round trip per poll: the node's status report in, its signed assignments out."""
    svc = service()
    body = read_body(svc.config.max_report_bytes)
    out = svc.checkin(request.method, signed_url(), request.headers, body, json_body)
    return jsonify(node_id=out.node_id, assignments=out.assignments,
                   report={"report_id": out.report.report_id, "duplicate": out.report.duplicate})


@bp.get("/node/envelopes/<model>/<int:version>")
def envelopes(model: str, version: int) -> Any:
    svc = service()
    with svc.db.write() as session:
        node_id = authenticated(session, read_body(svc.config.max_json_bytes)).id
        return jsonify(model=model, version=version, envelopes=svc.node_envelopes(session, node_id, model, version))


@bp.post("/node/reports")
def reports() -> Any:
    svc = service()
    body = read_body(svc.config.max_report_bytes)
    with svc.db.write() as session:
        node = authenticated(session, body)
        doc = json_body(body)
        result = svc.report(session, node, doc)
        if not result.duplicate and doc.get("kind") == "metrics" and ("releases" in doc or "ops" in doc):
            # fleet metrics (issue 10): the node's private releases and operational windows
            store_metrics(svc.db, session, node.id, doc, policy_of(svc.config))
    return jsonify(report_id=result.report_id, duplicate=result.duplicate), 200 if result.duplicate else 201
