"""JSON in and out of the request path: strict parsing, compact answers.

``json.loads`` accepts ``NaN`` and ``Infinity`` (not JSON) and raises
RecursionError on deeply nested input; both become a 400 here.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from .errors import BadRequestError, MalformedBodyError

JSON = "application/json"


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject)
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(body: bytes | memoryview, what: str = "body") -> Any:
    """Parse a JSON body; MalformedBodyError names what was being read."""
    try:
        text = (body if isinstance(body, bytes) else bytes(body)).decode("utf-8")
        return _decoder.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedBodyError(f"not valid JSON ({str(exc)[:200]})", field=what) from exc


def loads_object(body: bytes | memoryview, what: str = "body") -> dict[str, Any]:
    doc = loads(body, what)
    if not isinstance(doc, dict):
        raise BadRequestError("expected a JSON object", field=what)
    return doc


def dumps(doc: Any) -> str:
    """Compact JSON; non-finite floats raise ValueError (callers check model outputs first)."""
    return _encoder.encode(doc)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(doc), status=status, mimetype=JSON, headers=headers)


__all__ = ["JSON", "dumps", "json_response", "loads", "loads_object"]
