"""Open Inference Protocol v2 tensors: JSON and binary data to numpy and back.

Implements the JSON tensor form and the binary tensor extension that Triton
and ``tritonclient`` use by default: the body is the JSON header
(``Inference-Header-Content-Length`` bytes) followed by raw little-endian
tensor bytes, each input naming its ``binary_data_size``; BYTES elements are
4-byte little-endian lengths followed by the bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.array_checks import all_finite

from .errors import BadRequestError, InferenceFailedError
from .wire import loads_object

_NUMERIC: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
DATATYPES = (*_NUMERIC, "BYTES")
_DATATYPE_SET = frozenset(DATATYPES)  # membership per tensor without a scan of the tuple
_BY_DTYPE = {v: k for k, v in _NUMERIC.items()}
MANIFEST_DTYPES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "int8": "INT8", "uint8": "UINT8",
                   "int32": "INT32", "int64": "INT64", "bool": "BOOL", "string": "BYTES"}
MAX_RANK = 8
_ALLOWED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # JSON values each numeric datatype takes


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: inputs as arrays, what to send back and how."""

    id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool


def datatype_of(dtype: np.dtype[Any]) -> str:
    if dtype.kind in "USO":
        return "BYTES"
    found = _BY_DTYPE.get(dtype)  # native byte order: no new dtype to build
    if found is not None:
        return found
    try:
        return _BY_DTYPE[dtype.newbyteorder("=")]
    except KeyError as exc:
        raise InferenceFailedError(f"output dtype {dtype} has no Open Inference Protocol datatype") from exc


def parse_request(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """Decode an infer request body; every error names the offending field."""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise BadRequestError("must be a length within the body", field="Inference-Header-Content-Length")
        n = int(header_length)
        view = memoryview(body)
        doc, binary = loads_object(view[:n]), view[n:]
    else:
        doc, binary = loads_object(body), memoryview(b"")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequestError("expected a string", field="id")
    params = _params(doc, "parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("expected a non-empty list of tensors", field="inputs")
    inputs: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise BadRequestError("expected a tensor object", field=where)
        name, datatype, shape, count = _header(t, where, max_elements)
        if name in inputs:
            raise BadRequestError(f"input {name!r} appears twice", field=f"{where}.name")
        size = _params(t, where + ".parameters").get("binary_data_size") if "parameters" in t else None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
                raise BadRequestError("exceeds the binary data in the body",
                                      field=f"{where}.parameters.binary_data_size")
            if "data" in t:
                raise BadRequestError("give data or binary_data_size, not both", field=f"{where}.data")
            arr = _from_binary(binary[offset : offset + size], datatype, count, where)
            offset += size
        elif "data" in t:
            arr = _from_json(t["data"], datatype, count, where)
        else:
            raise BadRequestError("missing (and no binary_data_size parameter)", field=f"{where}.data")
        inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input", field="body")
    return InferRequest(rid, inputs, _outputs(doc), params.get("binary_data_output") is True)


def _params(doc: dict[str, Any], where: str) -> dict[str, Any]:
    params = doc.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequestError("expected an object", field=where)
    return params


def _header(t: dict[str, Any], where: str, max_elements: int) -> tuple[str, str, list[int], int]:
    """(name, datatype, shape, element count) of a tensor object."""
    name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(name, str) or not name:
        raise BadRequestError("expected a tensor name", field=f"{where}.name")
    if datatype not in _DATATYPE_SET:
        raise BadRequestError(f"expected one of {', '.join(DATATYPES)}", field=f"{where}.datatype")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise _bad_shape(where, max_elements)
    # ``type(d) is int`` refuses bools (JSON numbers parse to exact ints, never another subclass). Each
    # dimension is bounded too: [0, 10**30] has no elements, but no array has that shape. (A loop: all()
    # over a generator makes a frame per tensor.)
    for d in shape:
        if type(d) is not int or not 0 <= d <= max_elements:
            raise _bad_shape(where, max_elements)
    count = math.prod(shape)
    if count > max_elements:
        raise BadRequestError(f"more than {max_elements} elements", field=f"{where}.shape")
    return name, datatype, shape, count


def _bad_shape(where: str, max_elements: int) -> BadRequestError:
    return BadRequestError(f"expected a list of at most {MAX_RANK} dimensions from 0 to {max_elements}",
                           field=f"{where}.shape")


def _from_json(data: Any, datatype: str, count: int, where: str) -> npt.NDArray[Any]:
    field = f"{where}.data"
    if not isinstance(data, list):
        data = [data]
    if count == 0:
        try:
            size = np.asarray(data).size
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequestError("not a rectangular array", field=field) from exc
        if size:
            raise BadRequestError("shape has no elements but data is not empty", field=field)
        return np.zeros(0, dtype=str if datatype == "BYTES" else _NUMERIC[datatype])
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError("not a rectangular array of numbers or strings", field=field) from exc
    if arr.size != count:
        raise BadRequestError(f"has {arr.size} elements, the shape says {count}", field=field)
    kind = arr.dtype.kind
    if datatype == "BYTES":
        if kind != "U":
            raise BadRequestError("expected strings for BYTES", field=field)
        return arr.ravel()
    target = _NUMERIC[datatype]
    if kind not in _ALLOWED_KINDS[target.kind]:
        raise BadRequestError(f"expected {datatype} values, got {_kind(arr)}", field=field)
    if target.kind in "iu" and arr.dtype != target:
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequestError(f"values outside the {datatype} range", field=field)
    # Only a narrower float target can overflow (float64 -> float32; any -> float16): the others skip
    # np.errstate, which costs more than the cast (about 1 us a tensor).
    if target.kind != "f" or not (target.itemsize == 2 or (kind == "f" and arr.dtype.itemsize > target.itemsize)):
        return arr.astype(target, copy=False).ravel()
    # Floats that overflow their datatype become Inf, which the SDK's encoder refuses by name.
    with np.errstate(over="ignore"):
        return arr.astype(target, copy=False).ravel()


def _kind(arr: npt.NDArray[Any]) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers with fractions",
            "U": "strings"}.get(arr.dtype.kind, "mixed values")


def _from_binary(buf: memoryview, datatype: str, count: int, where: str) -> npt.NDArray[Any]:
    field = f"{where}.parameters.binary_data_size"
    if datatype == "BYTES":
        return _bytes_elements(buf, count, field)
    dtype = _NUMERIC[datatype]
    if len(buf) != dtype.itemsize * count:
        raise BadRequestError(f"{len(buf)} bytes do not hold {count} {datatype} values", field=field)
    if datatype == "BOOL":
        raw = np.frombuffer(buf, dtype=np.uint8, count=count)
        if raw.size and raw.max() > 1:
            raise BadRequestError("BOOL bytes must be 0 or 1", field=field)
        return raw.astype(np.bool_)
    arr = np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=count).astype(dtype)
    if dtype.kind == "f" and not all_finite(arr):
        raise BadRequestError("contains NaN or Inf", field=field)
    return arr


def _bytes_elements(buf: memoryview, count: int, field: str) -> npt.NDArray[Any]:
    out: list[str] = []
    pos, data = 0, bytes(buf)
    for _ in range(count):
        if pos + 4 > len(data):
            raise BadRequestError(f"ends before element {len(out)}", field=field)
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise BadRequestError(f"element {len(out)} runs past the data", field=field)
        try:
            out.append(data[pos : pos + n].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequestError(f"element {len(out)} is not UTF-8", field=field) from exc
        pos += n
    if pos != len(data):
        raise BadRequestError("has bytes after the last element", field=field)
    return np.asarray(out, dtype=str) if out else np.zeros(0, dtype=str)


def _outputs(doc: dict[str, Any]) -> tuple[RequestedOutput, ...] | None:
    raw = doc.get("outputs")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequestError("expected a list", field="outputs")
    out = []
    for i, o in enumerate(raw):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequestError("expected an object with a name", field=f"outputs[{i}]")
        params = _params(o, f"outputs[{i}].parameters")
        out.append(RequestedOutput(o["name"], params.get("binary_data") is True))
    return tuple(out)


def encode_outputs(
    outputs: dict[str, npt.NDArray[Any]], requested: tuple[RequestedOutput, ...] | None, binary_default: bool
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output tensor objects and, for binary outputs, their bytes in the same order."""
    if requested is None:
        chosen = [(name, binary_default) for name in outputs]
    else:
        for i, r in enumerate(requested):
            if r.name not in outputs:
                raise BadRequestError(f"unknown output; the model has {', '.join(outputs)}",
                                      field=f"outputs[{i}].name")
        chosen = [(r.name, r.binary) for r in requested]
    docs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in chosen:
        arr = outputs[name]
        doc: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = _to_bytes(arr)
            doc["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if arr.dtype.kind == "f" and not all_finite(arr):
                raise InferenceFailedError(f"output {name} holds NaN or Inf, which JSON cannot carry; "
                                           "ask for binary_data outputs")
            doc["data"] = arr.ravel().tolist()
        docs.append(doc)
    return docs, chunks


def _to_bytes(arr: npt.NDArray[Any]) -> bytes:
    if arr.dtype.kind in "USO":
        parts = []
        for v in arr.ravel().tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


__all__ = ["DATATYPES", "MANIFEST_DTYPES", "InferRequest", "RequestedOutput", "datatype_of", "encode_outputs",
           "parse_request"]
