"""JSON in and out of the request path: strict parsing, compact answers.

``json.loads`` accepts ``NaN`` and ``Infinity`` (not JSON) and raises
RecursionError on deeply nested input; both become a 400 here.

With orjson installed (the ``[edge]`` extra), bodies are parsed with it and
the scoring answers are written with it, several times faster than the
standard library. The standard library still decides every case where the two
could differ, so answers do not depend on whether orjson is there: bodies that
orjson refuses (its messages differ; it also refuses lone surrogates and
numbers that overflow a double, which ``json`` accepts), that hold a run of 19
or more digits (orjson turns integers beyond 64 bits into floats) or that
could nest deeper than ``json`` can recurse are parsed by ``json``; documents
orjson cannot write (integers beyond 64 bits) are written by ``json``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response

from .errors import BadRequestError, MalformedBodyError

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]  # optional: None falls back to the json module

JSON = "application/json"
_DIGITS = bytes(57 if 48 <= i <= 57 else 32 for i in range(256))  # digits -> "9", anything else -> " "
_LONG_NUMBER = b"9" * 19  # a regex search costs more than orjson's whole parse
_MAX_OPENERS = 800  # well below the nesting depth at which json.loads raises RecursionError


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject)
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads(body: bytes | memoryview, what: str = "body") -> Any:
    """Parse a JSON body; MalformedBodyError names what was being read."""
    data = body if isinstance(body, bytes) else bytes(body)
    if (orjson is not None and data.count(b"[") + data.count(b"{") < _MAX_OPENERS
            and _LONG_NUMBER not in data.translate(_DIGITS)):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the standard library decides (and words the error)
    try:
        return _decoder.decode(data.decode("utf-8"))
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


def dumps_bytes(doc: Any) -> bytes:
    """Compact JSON as UTF-8 for the scoring answers (orjson when installed).

    Callers pass only documents without non-finite floats (model outputs are
    checked before), because orjson would write those as ``null``.
    """
    if orjson is not None:
        try:
            return orjson.dumps(doc)
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return _encoder.encode(doc).encode()


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(doc), status=status, mimetype=JSON, headers=headers)


__all__ = ["JSON", "dumps", "dumps_bytes", "json_response", "loads", "loads_object"]
