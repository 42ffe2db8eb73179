"""Errors the edge server answers with: each knows its HTTP status and kind.

Rooted in :class:`edgerec.sdk.errors.EdgeRecError` and free of any web
framework import (unlike MLServer's ``errors.py``): :mod:`.app` turns them into
``{"error": kind, "detail": message, "field": name}`` in one handler.
"""

from __future__ import annotations

from edgerec.sdk.errors import (
    DecryptionError,
    EdgeRecError,
    InvalidInput,
    ModelClosedError,
    PackageError,
    RuntimeBackendError,
)


class EdgeServerError(EdgeRecError):
    """Root of the server's own errors; ``status`` and ``kind`` go on the wire."""

    status = 500
    kind = "internal"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.detail = detail
        self.field = field


class BadRequestError(EdgeServerError):
    """The request is not what the endpoint accepts (shape, type, missing field)."""

    status = 400
    kind = "invalid_request"


class MalformedBodyError(BadRequestError):
    """The body is not valid JSON (or not a valid binary tensor body)."""

    kind = "malformed_body"


class UnauthorizedError(EdgeServerError):
    """No or a wrong control token."""

    status = 401
    kind = "unauthorized"


class ForbiddenError(EdgeServerError):
    """The control API refuses this caller (not loopback, or disabled)."""

    status = 403
    kind = "forbidden"


class NotFoundError(EdgeServerError):
    """An unknown model, version, experiment or route."""

    status = 404
    kind = "not_found"


class ModelNotFoundError(NotFoundError):
    kind = "model_not_found"


class VersionNotFoundError(NotFoundError):
    kind = "version_not_found"


class ConflictError(EdgeServerError):
    """A control operation that contradicts the current state; nothing changed."""

    status = 409
    kind = "conflict"


class PayloadTooLargeError(EdgeServerError):
    status = 413
    kind = "payload_too_large"


class LoadRefusedError(EdgeServerError):
    """A version failed to verify, load or warm up; the old one keeps serving."""

    status = 422
    kind = "load_refused"


class InferenceFailedError(EdgeServerError):
    """The runtime could not score these (validated) inputs."""

    status = 422
    kind = "inference_failed"


class UnavailableError(EdgeServerError):
    """The server cannot answer now: a variant's version is not loaded, a timeout."""

    status = 503
    kind = "unavailable"


class ConfigError(EdgeServerError):
    """A bad configuration file or option (raised at start-up, never to a client)."""

    kind = "config"


def classify(exc: EdgeRecError) -> tuple[int, str, str, str | None]:
    """(status, kind, detail, field) for any edgerec error raised while serving."""
    if isinstance(exc, EdgeServerError):
        return exc.status, exc.kind, str(exc), exc.field
    if isinstance(exc, InvalidInput):
        return 400, "invalid_input", f"{exc.field}: {exc.problem}", exc.field
    if isinstance(exc, PackageError | DecryptionError):
        return 422, "load_refused", str(exc), None
    if isinstance(exc, RuntimeBackendError):
        return 422, "inference_failed", str(exc), None
    if isinstance(exc, ModelClosedError):
        return 503, "unavailable", str(exc), None
    return 422, "unprocessable", str(exc), None


__all__ = [
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "EdgeServerError",
    "ForbiddenError",
    "InferenceFailedError",
    "LoadRefusedError",
    "MalformedBodyError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnauthorizedError",
    "UnavailableError",
    "VersionNotFoundError",
    "classify",
]
