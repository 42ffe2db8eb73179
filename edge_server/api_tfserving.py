"""TensorFlow Serving REST: ``:predict`` in row (``instances``) and columnar (``inputs``) form, and model status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from edgerec.sdk.array_checks import all_finite

from .batching import Arrays
from .context import server, state
from .errors import BadRequestError, InferenceFailedError
from .repository import ModelVersion
from .wire import json_response, loads_object

bp = Blueprint("tfserving", __name__)


@bp.post("/v1/models/<name>:predict")
@bp.post("/v1/models/<name>/versions/<version>:predict")
def predict(name: str, version: str | None = None) -> Response:
    forms: list[str] = []

    def read(mv: ModelVersion) -> dict[str, Any]:
        form, inputs = parse_predict(loads_object(request.get_data(cache=False)), mv)
        forms.append(form)
        return inputs

    _, outputs = server().dataplane.infer(state(), name, version, read)
    for key, arr in outputs.items():
        if arr.dtype.kind == "f" and not all_finite(arr):
            raise InferenceFailedError(f"output {key} holds NaN or Inf, which JSON cannot carry")
    if forms[0] == "row":
        return json_response({"predictions": _rows(outputs)})
    if len(outputs) == 1:
        return json_response({"outputs": next(iter(outputs.values())).tolist()})
    return json_response({"outputs": {k: v.tolist() for k, v in outputs.items()}})


def parse_predict(doc: dict[str, Any], mv: ModelVersion) -> tuple[str, dict[str, Any]]:
    """("row" or "columnar", inputs by name) from a predict body."""
    sig = doc.get("signature_name")
    if sig is not None and not isinstance(sig, str):
        raise BadRequestError("expected a string", field="signature_name")
    unknown = set(doc) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadRequestError("unknown field; expected instances or inputs", field=sorted(unknown)[0])
    if ("instances" in doc) == ("inputs" in doc):
        raise BadRequestError("give exactly one of instances (row form) or inputs (columnar form)",
                              field="instances")
    names = [t.name for t in mv.manifest.signature.inputs]
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequestError("expected a non-empty list", field="instances")
        if isinstance(instances[0], dict):
            keys = set(instances[0])
            for i, inst in enumerate(instances):
                if not isinstance(inst, dict) or set(inst) != keys:
                    raise BadRequestError(f"every instance needs the same keys ({', '.join(sorted(keys))})",
                                          field=f"instances[{i}]")
            return "row", {k: [inst[k] for inst in instances] for k in keys}
        return "row", {_single(names, "instances"): instances}
    inputs = doc["inputs"]
    if isinstance(inputs, dict):
        return "columnar", inputs
    return "columnar", {_single(names, "inputs"): inputs}


def _single(names: list[str], field: str) -> str:
    if len(names) != 1:
        raise BadRequestError(f"the model has inputs {', '.join(names)}; name them in objects", field=field)
    return names[0]


def _rows(outputs: Arrays) -> list[Any]:
    if len(outputs) == 1:
        rows: list[Any] = next(iter(outputs.values())).tolist()
        return rows
    cols = {k: v.tolist() for k, v in outputs.items()}
    n = len(next(iter(cols.values())))
    return [{k: col[i] for k, col in cols.items()} for i in range(n)]


@bp.get("/v1/models/<name>")
@bp.get("/v1/models/<name>/versions/<version>")
def status(name: str, version: str | None = None) -> Response:
    repo = server().repo
    chosen = repo.get(name, version)
    versions = [chosen] if version is not None else [v for v in repo.versions() if v.name == chosen.name]
    return json_response({"model_version_status": [
        {"version": v.label, "state": "UNLOADING" if v.retiring else "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in versions
    ]})


__all__ = ["bp", "parse_predict"]
