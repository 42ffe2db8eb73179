"""``GET /api/v1/openapi.json``: an OpenAPI 3.0 document of the sync service's HTTP API.

Written by hand from the views, so a client generator has real request
bodies, and kept complete by a test that compares it with Flask's routes. The
node routes are signed per request (``sync/protocol/httpsig.py``), which
OpenAPI cannot describe: they appear with their bodies and a 401 for
unsigned calls. ``tests/sync/test_schemathesis.py`` fuzzes the whole document
against a running service.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from edgerec.sdk import __version__

bp = Blueprint("openapi", __name__)

JSON = "application/json"
NAME: dict[str, Any] = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
TAGS: dict[str, Any] = {"type": "array", "items": NAME, "maxItems": 64}
SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
ERROR: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def _op(summary: str, tag: str, *, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None,
        path: tuple[str, ...] = (), status: str = "200", admin: bool = True,
        content: str = JSON) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "OK", "content": {JSON: {"schema": ANY_OBJECT}}},
        "4XX": {"description": "Refused: the error names the field", "content": {JSON: {"schema": ERROR}}},
    }
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    params = [{"name": p, "in": "path", "required": True, "schema": NAME} for p in path]
    params += [{"name": k, "in": "query", "required": False, "schema": v} for k, v in (query or {}).items()]
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {content: {"schema": body}}}
    if admin:
        op["security"] = [{"admin": []}]
    return op


def _store(op: dict[str, Any]) -> dict[str, Any]:
    """``op`` that reads or writes package bytes: 503 while an object store (``--blob-url``) cannot be used."""
    op["responses"]["503"] = {"description": "The package store cannot be used now; try again later",
                              "content": {JSON: {"schema": ERROR}}}
    return op


def _paths() -> dict[str, Any]:
    a = "/api/v1/admin"
    since = {"since": SECONDS}
    positive: dict[str, Any] = {"type": "number", "minimum": 0, "exclusiveMinimum": True}  # OpenAPI 3.0's form
    rollout = _obj({"model": NAME, "version": {"type": "integer", "minimum": 1}, "channel": NAME,
                    "percent": {**positive, "maximum": 100}, "tags": TAGS,
                    "max_failures": {"type": "integer", "minimum": 0},
                    "max_failure_percent": {"type": "number", "minimum": 0, "maximum": 100}},
                   ("model", "version", "channel"))
    gated = _obj({"model": NAME, "version": {"type": "integer", "minimum": 1}, "channel": NAME,
                  "phases": {"type": "array", "items": {"type": "number"}, "maxItems": 10},
                  "gates": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": 8},
                  "tags": TAGS, "alpha": {"type": "number"}, "max_windows": {"type": "integer"}},
                 ("model", "version", "channel", "phases", "gates"))
    experiment = _obj({"name": NAME, "model": NAME, "tags": TAGS, "salt": {"type": "string", "maxLength": 128},
                       "variants": {"type": "array", "maxItems": 16, "items": _obj(
                           {"name": NAME, "version": {"type": "integer", "minimum": 1},
                            "weight": {"type": "number", "minimum": 1e-6, "maximum": 1e6}},
                           ("name", "version", "weight"))}},
                      ("name", "model", "variants"))
    signed = {"description": "Signed by the node (HTTP message signatures); unsigned calls get 401."}
    return {
        "/api/v1/health": {"get": _op("Liveness", "service", admin=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["service"],
                             "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}},
        "/api/v1/openapi.json": {"get": _op("This document", "service", admin=False)},
        "/api/v1/enroll": {"post": _op("Enroll a node with a one-time token", "node", status="201", admin=False,
                                       body=_obj({"token": {"type": "string", "maxLength": 256},
                                                  "signing_key": {"type": "string", "maxLength": 4096},
                                                  "recipient_key": {"type": "string", "maxLength": 4096},
                                                  "name": {"type": "string", "maxLength": 64}},
                                                 ("token", "signing_key", "recipient_key")))},
        "/api/v1/node/assignments": {"get": {**_op("The node's signed assignments", "node", admin=False),
                                             **signed}},
        "/api/v1/node/checkin": {"post": {**_op("Status in, signed assignments out", "node", admin=False,
                                                body=ANY_OBJECT), **signed}},
        "/api/v1/node/reports": {"post": {**_op("A status or metrics report", "node", admin=False,
                                                body=ANY_OBJECT), **signed}},
        "/api/v1/node/envelopes/{model}/{version}": {"get": {**_op(
            "Key envelopes of an assigned version", "node", admin=False, path=("model",)), **signed}},
        "/repository/metadata/{name}": {"get": _op("TUF metadata (static file)", "repository", admin=False,
                                                   path=("name",))},
        "/repository/targets/{path}": {"get": _store(_op("TUF target (static file, byte ranges)", "repository",
                                                         admin=False, path=("path",)))},
        f"{a}/whoami": {"get": _op("Check the admin token", "admin")},
        f"{a}/enroll-tokens": {"post": _op("Create a one-time enrollment token", "admin", status="201",
                                           body=_obj({"tags": TAGS, "expires_s": SECONDS}))},
        f"{a}/packages": {
            "get": _op("Published packages", "admin"),
            "post": _store(_op("Publish a signed package (the .edgepkg bytes)", "admin", status="201",
                               query={"channel": NAME}, content="application/octet-stream",
                               body={"type": "string", "format": "binary"})),
        },
        f"{a}/rollouts": {"post": _op("Roll a version out to a share of a channel", "admin", status="201",
                                      body=rollout)},
        f"{a}/models/{{model}}": {"get": _op("A model's rollout status", "admin", path=("model",))},
        f"{a}/models/{{model}}/pause": {"post": _op("Pause the model's rollout", "admin", path=("model",))},
        f"{a}/models/{{model}}/resume": {"post": _op("Resume the model's rollout", "admin", path=("model",))},
        f"{a}/models/{{model}}/rollback": {"post": _op(
            "Roll the model back to a version", "admin", status="201", path=("model",),
            body=_obj({"version": {"type": "integer", "minimum": 1}, "channel": NAME}, ("version",)))},
        f"{a}/nodes": {"get": _op("Every node and what it serves", "admin")},
        f"{a}/nodes/{{node_id}}": {"get": _op("One node", "admin", path=("node_id",))},
        f"{a}/nodes/{{node_id}}/revoke": {"post": _op("Revoke a node", "admin", path=("node_id",))},
        f"{a}/reports": {"get": _op("Stored reports", "admin", query={
            "kind": {"type": "string", "enum": ["status", "metrics"]}, "since": SECONDS,
            "limit": {"type": "integer", "minimum": 1, "maximum": 10000}})},
        f"{a}/prune": {"post": _op("Apply retention now", "admin")},
        f"{a}/repo-url": {
            "get": _op("The repository origin nodes are told", "admin"),
            "put": _op("Move the fleet to another repository origin", "admin", body=_obj(
                {"repo_url": {"type": "string", "maxLength": 2048, "nullable": True}}, ("repo_url",))),
        },
        f"{a}/experiments": {"get": _op("Experiments", "metrics"),
                             "post": _op("Create an experiment", "metrics", status="201", body=experiment)},
        f"{a}/experiments/{{name}}/stop": {"post": _op("Stop an experiment", "metrics", path=("name",))},
        f"{a}/experiments/{{name}}/report": {"get": _op("A/B report with intervals and a verdict", "metrics",
                                                        path=("name",), query={
                                                            **since, "variants": {"type": "string"},
                                                            "control": NAME})},
        f"{a}/fleet-metrics": {"get": _op("Released fleet windows", "metrics", query={**since, "model": NAME})},
        f"{a}/alerts": {"get": _op("Open alerts", "metrics")},
        f"{a}/ops-metrics": {"get": _op("Operational figures per node and fleet", "metrics", query={
            "model": NAME, "node": NAME, "windows": {"type": "integer", "minimum": 1},
            "max_nodes": {"type": "integer", "minimum": 1}})},
        f"{a}/gated-rollouts": {"get": _op("Gated rollouts", "metrics"),
                                "post": _op("Start a rollout gated on outcomes", "metrics", status="201",
                                            body=gated)},
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    paths = _paths()
    # The envelope route's version is an integer, unlike every other path parameter.
    paths["/api/v1/node/envelopes/{model}/{version}"]["get"]["parameters"].append(
        {"name": "version", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}})
    return {
        "openapi": "3.0.3",
        "info": {"title": "edgerec sync service", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _obj({"error": {"type": "string"}, "detail": {"type": "string"},
                                       "field": {"type": "string", "nullable": True}}, ("error", "detail"))},
        },
    }


@bp.get("/api/v1/openapi.json")
def openapi() -> Any:
    return jsonify(document())


__all__ = ["bp", "document"]
