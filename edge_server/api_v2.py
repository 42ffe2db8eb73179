"""Open Inference Protocol v2 REST (KServe v2; Triton, MLServer and OpenVINO speak it).

Health, server and model metadata, model readiness and ``infer`` with JSON
tensors or the binary tensor extension. Not-ready answers use 4xx, as the
protocol says (200 true, 4xx false).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request

from edgerec.sdk import __version__

from .context import RequestState, server, state
from .repository import ModelVersion
from .tensors import MANIFEST_DTYPES, InferRequest, encode_outputs, parse_request
from .wire import JSON, dumps_bytes, json_response

if TYPE_CHECKING:
    from .app import EdgeServer

bp = Blueprint("v2", __name__)
EXTENSIONS = ["binary_tensor_data"]
BINARY = "application/octet-stream"


@bp.get("/v2/health/live")
def live() -> Response:
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    if server().ready.is_set():
        return json_response({"ready": True})
    return json_response({"ready": False, "error": "not_ready", "detail": "models are still loading"}, 400)


@bp.get("/v2")
def server_metadata() -> Response:
    return json_response({"name": "edgerec", "version": __version__, "extensions": EXTENSIONS})


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    repo = server().repo
    mv = repo.get(name, version)
    versions = [v.label for v in repo.versions() if v.name == mv.name]
    return json_response(metadata(mv, versions))


def metadata(mv: ModelVersion, versions: list[str]) -> dict[str, Any]:
    """Model metadata; inputs with a vocabulary take raw ids (BYTES or INT64), as requests do."""
    m = mv.manifest
    vocabs = mv.model.encoder.vocabularies
    info = mv.model.info

    def dtype(name: str, manifest_dtype: str) -> str:
        vocab = vocabs.get(name)
        if vocab is not None:
            return "INT64" if vocab.is_int else "BYTES"
        return MANIFEST_DTYPES[manifest_dtype]

    return {
        "name": mv.name,
        "versions": versions,
        "platform": f"{info.backend}_{info.format}",
        "inputs": [{"name": t.name, "datatype": dtype(t.name, t.dtype), "shape": _shape(t.shape)}
                   for t in m.signature.inputs],
        "outputs": [{"name": t.name, "datatype": MANIFEST_DTYPES[t.dtype], "shape": _shape(t.shape)}
                    for t in m.signature.outputs],
    }


def _shape(shape: tuple[int | None, ...]) -> list[int]:
    return [-1 if d is None else d for d in shape]


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    mv = server().repo.get(name, version)
    return json_response({"name": mv.name, "version": mv.label, "ready": not mv.retiring})


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    body, content_type, headers = infer_answer(server(), state(), name, version,
                                               lambda: request.get_data(cache=False),
                                               request.headers.get("Inference-Header-Content-Length"))
    return Response(body, mimetype=content_type, headers=headers)


def infer_answer(srv: EdgeServer, st: RequestState, name: str, version: str | None, body: Callable[[], bytes],
                 header_length: str | None) -> tuple[bytes, str, dict[str, str] | None]:
    """(body, content type, extra headers) of an infer answer; also the fast route's view.

    ``body`` is called once the version is leased (so the batcher knows the
    request is coming while it is parsed).
    """
    parsed: list[InferRequest] = []

    def read(mv: ModelVersion) -> dict[str, Any]:
        req = parse_request(body(), header_length, srv.max_elements)
        parsed.append(req)
        return req.inputs

    mv, outputs = srv.dataplane.infer(st, name, version, read)
    req = parsed[0]
    docs, chunks = encode_outputs(outputs, req.outputs, req.binary_output)
    doc: dict[str, Any] = {"model_name": mv.name, "model_version": mv.label, "outputs": docs}
    if req.id is not None:
        doc["id"] = req.id
    if not chunks:
        return dumps_bytes(doc), JSON, None
    header = dumps_bytes(doc)
    return header + b"".join(chunks), BINARY, {"Inference-Header-Content-Length": str(len(header))}


__all__ = ["bp", "infer_answer", "metadata"]
