"""``GET /openapi.json``: an OpenAPI 3.0 document of every endpoint.

Model-name path parameters list the loaded models as an ``enum``, so a client
generator (or the schemathesis fuzzer in CI) reaches real models; the
document is rebuilt only when the repository changes.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from edgerec.sdk import __version__

from .api_v2 import metadata
from .context import server
from .metrics import EVENT_TYPES
from .repository import ModelVersion
from .tensors import DATATYPES
from .wire import json_response

bp = Blueprint("openapi", __name__)

JSON = "application/json"
ERROR = {"$ref": "#/components/schemas/Error"}
ID = {"oneOf": [{"type": "string", "maxLength": 256}, {"type": "integer"}]}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, tag: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
        secure: bool = False, example: Any = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok, "4XX": _json(ERROR, "Refused: the error names the field")}
    responses.update(extra or {})
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        media: dict[str, Any] = {"schema": body}
        if example is not None:
            media["example"] = example
        op["requestBody"] = {"required": True, "content": {JSON: media}}
    if secure:
        op["security"] = [{"bearer": []}]
    return op


def _path_params(models: list[str], versioned: bool) -> list[dict[str, Any]]:
    name: dict[str, Any] = {"type": "string", "maxLength": 64}
    if models:
        name["enum"] = models
    params = [{"name": "model_name", "in": "path", "required": True, "schema": name}]
    if versioned:
        params.append({"name": "model_version", "in": "path", "required": True,
                       "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}})
    return params


def _model_paths(models: list[str], examples: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    unavailable = {"503": _json(ERROR, "A variant's version is not loaded, or the server is overloaded")}
    infer_ok = {"description": "Outputs (JSON, or the JSON header then binary tensors)",
                "content": {JSON: {"schema": _ref("InferenceResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    header = [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
               "schema": {"type": "string", "pattern": "^[0-9]{1,10}$"},
               "description": "Binary tensor extension: length of the JSON part of the body"}]
    for versioned in (False, True):
        base = "/v2/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
        params = _path_params(models, versioned)
        paths[base] = {"get": _op("Model metadata", "v2", _json(_ref("ModelMetadata")), params=params)}
        paths[base + "/ready"] = {"get": _op("Model readiness", "v2", _json(_ref("ModelReady")), params=params)}
        paths[base + "/infer"] = {"post": _op(
            "Inference (Open Inference Protocol v2)", "v2", infer_ok, body=_ref("InferenceRequest"),
            params=params + header, extra=unavailable, example=examples.get("infer"))}
        tf = "/v1/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
        paths[tf + ":predict"] = {"post": _op(
            "TF-Serving predict (row or columnar form)", "tfserving", _json(_ref("PredictResponse")),
            body=_ref("PredictRequest"), params=params, extra=unavailable, example=examples.get("predict"))}
        paths[tf] = {"get": _op("TF-Serving model status", "tfserving", _json(_ref("ModelStatus")), params=params)}
    return paths


def build(models: list[str], examples: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole document for the models loaded now; ``examples`` are request bodies that work."""
    examples = examples or {}
    control_params = _path_params(models, True)
    experiment = {"name": "experiment", "in": "path", "required": True,
                  "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("Server liveness", "v2", _json({"type": "object", "required": ["live"],
                                                                      "properties": {"live": {"type": "boolean"}}}))},
        "/v2/health/ready": {"get": _op("Server readiness (200 ready, 400 not yet)", "v2", _json(_ref("Ready")))},
        "/v2": {"get": _op("Server metadata", "v2", _json(_ref("ServerMetadata")))},
        **_model_paths(models, examples),
        "/v1/rank": {"post": _op("Rank candidates for a user", "recommend", _json(_ref("RankResponse")),
                                 body=_ref("RankRequest"), example=examples.get("rank"),
                                 extra={"503": _json(ERROR, "The experiment's variant is not loaded")})},
        "/v1/events": {"post": _op("Record impressions, clicks and conversions", "recommend",
                                   _json(_ref("EventsResponse")), body=_ref("EventsRequest"))},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["ops"], "responses": {"200": {
            "description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["ops"],
                                  "responses": {"200": _json({"type": "object"})}}},
        "/control/v1/models": {"get": _op("Loaded model versions", "control", _json(_ref("ModelList")),
                                          secure=True)},
        "/control/v1/models/load": {"post": _op(
            "Verify, load, warm up and swap in a package", "control", _json(_ref("LoadResponse")),
            body=_ref("LoadRequest"), secure=True)},
        "/control/v1/models/{model_name}/versions/{model_version}/unload": {"post": _op(
            "Release a version", "control", _json(_ref("UnloadResponse")), params=control_params, secure=True)},
        "/control/v1/experiments": {"get": _op("Running experiments", "control", _json({
            "type": "object", "required": ["experiments"],
            "properties": {"experiments": {"type": "array", "items": _ref("Experiment")}}}), secure=True)},
        "/control/v1/experiments/{experiment}": {
            "put": _op("Run an experiment (or replace it) on every worker; its variants' versions must be loaded",
                       "control", _json(_ref("Experiment")), body=_ref("ExperimentRequest"),
                       params=[experiment], secure=True),
            "delete": _op("Stop an experiment on every worker", "control", _json({
                "type": "object", "required": ["name", "state", "workers"], "properties": {
                    "name": {"type": "string"}, "state": {"type": "string"}, "workers": {"type": "integer"}}}),
                params=[experiment], secure=True)},
        "/v1/users/{user_id}": {"delete": _op(
            "Erase a user's cached profile and experiment assignments (every worker)", "control",
            _json({"type": "object", "required": ["erased", "workers"], "properties": {
                "erased": {"type": "object", "additionalProperties": {"type": "integer"}},
                "workers": {"type": "integer"}}}),
            params=[{"name": "user_id", "in": "path", "required": True,
                     "schema": {"type": "string", "minLength": 1, "maxLength": 256}}], secure=True)},
    }
    for name, what in (("prepare", "Prepare a load (worker to worker)"),
                       ("commit", "Commit a prepared load (worker to worker)"),
                       ("abort", "Drop a prepared load (worker to worker)")):
        body = _ref("LoadRequest") if name == "prepare" else {
            "type": "object", "properties": {"candidate": {"type": "string"}, "serve": {"type": "boolean"}}}
        paths[f"/control/v1/internal/{name}"] = {"post": _op(what, "control", _json({"type": "object"}),
                                                             body=body, secure=True)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "edgerec edge server", "version": __version__,
                 "description": "Open Inference Protocol v2, TF-Serving predict, ranking, events, "
                                "metrics and the local control API."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}}}
_VERSION = {"type": "object", "required": ["name", "version", "state", "accelerator"], "properties": {
    "name": {"type": "string"}, "version": {"type": "integer"}, "state": {"type": "string"},
    "accelerator": {"type": "string"}, "fully_delegated": {"type": "boolean", "nullable": True},
    "loaded_at": {"type": "string"}, "backend": {"type": "string"}, "source": {"type": "string"}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "detail"], "properties": {
        "error": {"type": "string", "description": "Kind of error (stable, machine-readable)"},
        "detail": {"type": "string", "description": "What is wrong, naming the field"},
        "field": {"type": "string"}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {"name": {"type": "string"},
                                     "versions": {"type": "array", "items": {"type": "string"}},
                                     "platform": {"type": "string"},
                                     "inputs": {"type": "array", "items": _TENSOR_META},
                                     "outputs": {"type": "array", "items": _TENSOR_META}}},
    "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": {"type": "object"},
                "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {
            "type": "object", "required": ["name", "datatype", "shape"], "properties": {
                "name": {"type": "string"}, "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "parameters": {"type": "object"}, "data": {"type": "array"}}}}}},
    "PredictRequest": {"type": "object", "properties": {
        "signature_name": {"type": "string"},
        "instances": {"type": "array", "minItems": 1},
        "inputs": {}}},
    "PredictResponse": {"type": "object", "properties": {"predictions": {"type": "array"}, "outputs": {}}},
    "ModelStatus": {"type": "object", "required": ["model_version_status"], "properties": {
        "model_version_status": {"type": "array", "items": {"type": "object", "properties": {
            "version": {"type": "string"}, "state": {"type": "string"}, "status": {"type": "object"}}}}}},
    "RankRequest": {"type": "object", "required": ["candidates"], "additionalProperties": False, "properties": {
        "model": {"type": "string"}, "version": {"oneOf": [{"type": "integer", "minimum": 0},
                                                           {"type": "string", "pattern": "^[0-9]{1,18}$"}]},
        "experiment": {"type": "string"},
        "user": {"type": "object", "additionalProperties": False, "properties": {
            "id": ID, "features": {"type": "object"}}},
        "candidates": {"type": "array", "minItems": 1, "items": {"oneOf": [ID, {"type": "object"}]}},
        "context": {"type": "object"},
        "top_k": {"type": "integer", "minimum": 1}}},
    "RankResponse": {"type": "object", "required": ["response_id", "model", "version", "variant", "items"],
                     "properties": {
                         "response_id": {"type": "string"}, "model": {"type": "string"},
                         "version": {"type": "string"}, "variant": {"type": "string"},
                         "experiment": {"type": "string", "nullable": True},
                         "items": {"type": "array", "items": {
                             "type": "object", "required": ["item", "score", "rank"], "properties": {
                                 "item": {}, "score": {"type": "number"}, "rank": {"type": "integer"}}}}}},
    "Event": {"type": "object", "required": ["type", "response_id"], "additionalProperties": False, "properties": {
        "type": {"type": "string", "enum": list(EVENT_TYPES)}, "response_id": {"type": "string"},
        "item": {**ID, "description": "An item the response returned (required for click and conversion); "
                 "at most 256 characters"},
        "timestamp": {"oneOf": [{"type": "number"}, {"type": "string"}]}}},
    "EventsRequest": {"oneOf": [
        {"type": "object", "required": ["events"], "additionalProperties": False, "properties": {
            "events": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Event"}}}},
        {"$ref": "#/components/schemas/Event"}]},
    "EventsResponse": {"type": "object", "required": ["accepted", "duplicates", "expired"], "properties": {
        "accepted": {"type": "integer"}, "duplicates": {"type": "integer", "description": "seen before, not counted"},
        "expired": {"type": "integer", "description": "for responses too old to de-duplicate, not counted"}}},
    "ModelList": {"type": "object", "required": ["models"], "properties": {
        "models": {"type": "array", "items": _VERSION}}},
    "LoadRequest": {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string", "description": "Absolute path of a .edgepkg file"},
        "serve": {"type": "boolean", "default": True}}},
    "LoadResponse": _VERSION,
    "ExperimentRequest": {"type": "object", "required": ["model", "variants"], "properties": {
        "name": {"type": "string"}, "model": {"type": "string"}, "salt": {"type": "string"},
        "variants": {"type": "array", "items": {"type": "object", "required": ["name", "version"], "properties": {
            "name": {"type": "string"}, "version": {"type": "integer", "minimum": 0},
            "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": True}}}}}},
    "Experiment": {"type": "object", "required": ["name", "model", "salt", "variants"], "properties": {
        "name": {"type": "string"}, "model": {"type": "string"}, "salt": {"type": "string"},
        "variants": {"type": "array", "items": {"type": "object", "required": ["name", "version", "weight"],
                                                "properties": {"name": {"type": "string"},
                                                               "version": {"type": "integer"},
                                                               "weight": {"type": "number"}}}},
        "workers": {"type": "integer"}}},
    "UnloadResponse": {"type": "object", "required": ["name", "version", "state"], "properties": {
        "name": {"type": "string"}, "version": {"type": "integer"}, "state": {"type": "string"}}},
}


def examples(mv: ModelVersion) -> dict[str, Any]:
    """Working request bodies for ``mv`` from its package's warm-up samples (first rows)."""
    samples = mv.model.warmup_samples()
    if not samples:
        return {}
    row = {k: v[:1] for k, v in samples.items()}
    inputs = metadata(mv, [])["inputs"]
    out: dict[str, Any] = {
        "infer": {"inputs": [{"name": t["name"], "shape": list(row[t["name"]].shape), "datatype": t["datatype"],
                              "data": row[t["name"]].ravel().tolist()} for t in inputs if t["name"] in row]},
        "predict": {"instances": [{k: v[0].tolist() for k, v in row.items()}]},
    }
    feats = mv.manifest.features
    if feats and all(f.input in samples for f in feats):
        def pick(role: str, i: int) -> dict[str, Any]:
            return {f.field: samples[f.input][i].tolist() for f in feats if f.role == role}

        n = min(2, len(next(iter(samples.values()))))
        out["rank"] = {"model": mv.name, "user": {"features": pick("user", 0)}, "context": pick("context", 0),
                       "candidates": [pick("item", i) for i in range(n)], "top_k": 1}
    return out


@bp.get("/openapi.json")
def openapi_json() -> Response:
    srv = server()
    cached = srv.openapi_cache
    if cached is None or cached[0] != srv.repo.generation:
        generation = srv.repo.generation
        versions = srv.repo.versions()
        names = sorted({mv.name for mv in versions})
        serving = [mv for mv in versions if mv.serving]
        cached = (generation, build(names, examples(serving[0]) if serving else None))
        srv.openapi_cache = cached  # a race only builds the same document twice
    return json_response(cached[1])


__all__ = ["SCHEMAS", "bp", "build"]
