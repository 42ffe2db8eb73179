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

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
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


class RequestRefusedError(UntrustedDataError):
    """A request a service refuses; ``status`` and ``code`` go on the wire, ``field`` when known."""

    # Class attributes a subclass sets; an instance may override them (an error relayed from a peer).
    status: int = 400
    code: str = "bad_request"

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


def bounded(text: str) -> str:
    """``text`` cut to :data:`MAX_DETAIL` characters, for answers and log lines."""
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


__all__ = [
    "BadRequestError",
    "ConflictError",
    "ErrorAnswer",
    "ForbiddenError",
    "MAX_DETAIL",
    "MalformedBodyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestRefusedError",
    "SDK_ERRORS",
    "UnauthorizedError",
    "UnavailableError",
    "UnprocessableError",
    "answer_error",
    "bounded",
    "classify",
    "http_status_error",
]
