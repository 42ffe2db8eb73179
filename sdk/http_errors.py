"""The one error format both HTTP services speak, and the errors that carry it.

Every refusal of the edge server and of the sync service is answered with
``{"error": code, "detail": text}`` plus ``"field"`` when one input is to
blame, with the status the error class names. This module imports no web
framework (unlike MLServer's ``errors.py``): the services' handlers call
:func:`classify` and write the document themselves, and clients turn an
answer back into :class:`~edgerec.sdk.errors.ServiceAnswerError` with
:func:`answer_error`.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from .errors import (
    DecryptionError,
    EdgeRecError,
    InvalidInputError,
    ModelClosedError,
    PackageError,
    RuntimeBackendError,
    ServiceAnswerError,
    UntrustedDataError,
)

# Details longer than this are cut: a refused 7 MB input name must not come back as a 7 MB answer.
MAX_DETAIL = 500
# JSON bodies nested deeper than this are refused on every route of both services (a model's
# tensor needs at most 8 levels plus the request around it).
MAX_JSON_DEPTH = 32


class RequestRefusedError(UntrustedDataError):
    """A request a service refuses; ``status`` and ``code`` go on the wire, ``field`` when known."""

    # Class attributes a subclass sets; an instance may override them (an error relayed from a peer).
    status: int = 400
    code: str = "bad_request"
    # A finer reason than ``code`` for a service's metrics (e.g. "replayed"), and whether the
    # refusal was logged already where it was raised.
    reason: str | None = None
    logged: bool = False
    # Seconds to wait before trying again, sent as ``Retry-After`` (a refusal that will pass later).
    retry_after_s: int | None = None

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.detail = detail
        self.field = field


class BadRequestError(RequestRefusedError):
    """Malformed or invalid request data (shape, type, missing field)."""


class MalformedBodyError(BadRequestError):
    """The body is not valid JSON (or not a valid binary tensor body)."""

    code = "malformed_body"


class UnauthorizedError(RequestRefusedError):
    """Missing, malformed or wrong credentials or request signature."""

    status = 401
    code = "unauthorized"


class ForbiddenError(RequestRefusedError):
    """Authenticated (or not needed), but not allowed."""

    status = 403
    code = "forbidden"


class NotFoundError(RequestRefusedError):
    """An unknown model, version, node, route..."""

    status = 404
    code = "not_found"


class ConflictError(RequestRefusedError):
    """The request contradicts the current state; nothing changed."""

    status = 409
    code = "conflict"


class RequestTimeoutError(RequestRefusedError):
    """A request body that did not arrive in time."""

    status = 408
    code = "request_timeout"


class PayloadTooLargeError(RequestRefusedError):
    """A body above the route's limit."""

    status = 413
    code = "payload_too_large"


class UnprocessableError(RequestRefusedError):
    """Well-formed, but the content is refused (an untrusted package, a model that will not load)."""

    status = 422
    code = "unprocessable"


class UnavailableError(RequestRefusedError):
    """The service cannot answer now; try again later."""

    status = 503
    code = "unavailable"


@dataclass(frozen=True)
class ErrorAnswer:
    """What a service answers for one error."""

    status: int
    code: str
    detail: str
    field: str | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"error": self.code, "detail": bounded(self.detail)}
        if self.field:
            doc["field"] = bounded(self.field)
        return doc

    def body(self) -> bytes:
        return json.dumps(self.document()).encode()


# How SDK errors that escape a view are answered, unless a service says otherwise.
SDK_ERRORS: Mapping[type[EdgeRecError], tuple[int, str]] = {
    PackageError: (422, "untrusted_package"),
    DecryptionError: (422, "untrusted_package"),
    RuntimeBackendError: (422, "inference_failed"),
    ModelClosedError: (503, "unavailable"),
}


def classify(exc: BaseException, sdk_errors: Mapping[type[EdgeRecError], tuple[int, str]] = SDK_ERRORS) -> ErrorAnswer:
    """The answer to ``exc``: refusals as they say, SDK errors by ``sdk_errors``, anything else a 500."""
    if isinstance(exc, RequestRefusedError):
        return ErrorAnswer(exc.status, exc.code, str(exc), exc.field)
    if isinstance(exc, InvalidInputError):
        return ErrorAnswer(400, "invalid_input", f"{exc.field}: {exc.problem}", exc.field)
    if isinstance(exc, EdgeRecError):
        for kind, (status, code) in sdk_errors.items():
            if isinstance(exc, kind):
                return ErrorAnswer(status, code, str(exc))
        return ErrorAnswer(422, "unprocessable", str(exc))
    return ErrorAnswer(500, "internal", f"unexpected {type(exc).__name__}; see the server log")


def http_status_error(status: int, name: str | None, description: str | None) -> ErrorAnswer:
    """The answer for a status the web framework raised itself (404 route, 405 method, 413 body)."""
    if status == 413:
        return ErrorAnswer(413, PayloadTooLargeError.code, description or "request body too large", "body")
    code = re.sub(r"[^a-z]+", "_", (name or "error").lower()).strip("_") or "error"
    return ErrorAnswer(status, code, description or name or code)


def answer_error(status: int, body: bytes | str, reason: str = "") -> ServiceAnswerError:
    """A client's view of an error answer: the service's code, detail and field, or the raw status."""
    try:
        doc = json.loads(body)
        field = doc.get("field")
        return ServiceAnswerError(status, str(doc["error"]), str(doc["detail"]),
                                  str(field) if field is not None else None)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return ServiceAnswerError(status, "http_error", bounded(text.strip()) or reason or f"HTTP {status}")


# A Retry-After longer than this is not read (an HTTP-date is 29 characters, delta-seconds a few digits).
MAX_RETRY_AFTER_CHARS = 64
# Statuses whose Retry-After says when to come back after overload (RFC 9110 15.6.4, RFC 6585 4).
OVERLOAD_STATUSES = (429, 503)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (default: the clock): delta-seconds or an HTTP-date
    (one in the past gives 0); None when absent or unreadable, so that garbage changes nothing. Not capped:
    the caller bounds the wait by its own limit."""
    if value is None or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {bounded(text)} does not fit a double")
    return value


# The standard library's parser, made strict: no NaN or Infinity, no number that overflows a double.
STRICT_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def json_depth_within(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``doc`` nests lists and objects at most ``limit`` deep (level by level, no recursion)."""
    level, depth = [doc], 0
    containers = (list, dict)
    while level:
        nested = [v for v in level if type(v) in containers]
        if not nested:
            return True
        depth += 1
        if depth > limit:
            return False
        level = [x for v in nested for x in (v.values() if type(v) is dict else v)]
    return True


def parse_json(data: bytes | str, what: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON document from a request, strictly: MalformedBodyError naming ``what`` otherwise.

    Refused: invalid UTF-8 or JSON, ``NaN``/``Infinity``, numbers that overflow a
    double or have more digits than Python converts, and nesting deeper than
    ``max_depth``. Nothing refused here is ever stored or answered.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = STRICT_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedBodyError(f"not valid JSON ({bounded(str(exc))})", field=what) from exc
    if (text.count("[") + text.count("{") > max_depth) and not json_depth_within(doc, max_depth):
        raise MalformedBodyError(f"nested deeper than {max_depth} levels", field=what)
    return doc


def bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_DETAIL` characters, for answers and log lines."""
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


__all__ = [
    "BadRequestError",
    "ConflictError",
    "ErrorAnswer",
    "ForbiddenError",
    "MAX_DETAIL",
    "MAX_JSON_DEPTH",
    "MAX_RETRY_AFTER_CHARS",
    "OVERLOAD_STATUSES",
    "STRICT_DECODER",
    "MalformedBodyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestRefusedError",
    "RequestTimeoutError",
    "SDK_ERRORS",
    "UnauthorizedError",
    "UnavailableError",
    "UnprocessableError",
    "answer_error",
    "bounded",
    "classify",
    "http_status_error",
    "json_depth_within",
    "parse_json",
    "retry_after_seconds",
]
