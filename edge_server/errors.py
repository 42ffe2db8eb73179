"""Errors the edge server answers with, on the wire format every edgerec service speaks.

Each is one of :mod:`edgerec.sdk.http_errors`' refusals (status, code, field)
with the edge server's own code, and an :class:`EdgeServerError` for callers
that catch by package. No web framework is imported here: the one error
handler (:func:`.fastpath.error_parts`) turns them into ``{"error", "detail",
"field"}``.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgerec.sdk import http_errors as http
from edgerec.sdk.errors import (
    ConfigurationError,
    DecryptionError,
    EdgeRecError,
    ModelClosedError,
    PackageError,
    RuntimeBackendError,
)
from edgerec.sdk.http_errors import ErrorAnswer


class EdgeServerError(EdgeRecError):
    """Root of the edge server's own errors (a mixin beside their branch in the SDK tree)."""


class BadRequestError(EdgeServerError, http.BadRequestError):
    """The request is not what the endpoint accepts (shape, type, missing field)."""

    code = "invalid_request"


class MalformedBodyError(BadRequestError):
    """The body is not valid JSON (or not a valid binary tensor body)."""

    code = "malformed_body"


class UnauthorizedError(EdgeServerError, http.UnauthorizedError):
    """No or a wrong control token."""


class ForbiddenError(EdgeServerError, http.ForbiddenError):
    """The control API refuses this caller (not loopback, or disabled)."""


class NotFoundError(EdgeServerError, http.NotFoundError):
    """An unknown model, version, experiment or route."""


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class VersionNotFoundError(NotFoundError):
    code = "version_not_found"


class ConflictError(EdgeServerError, http.ConflictError):
    """A control operation that contradicts the current state; nothing changed."""


class PayloadTooLargeError(EdgeServerError, http.PayloadTooLargeError):
    """A body above the route's limit."""


class LoadRefusedError(EdgeServerError, http.UnprocessableError):
    """A version failed to verify, load or warm up; the old one keeps serving."""

    code = "load_refused"


class InferenceFailedError(EdgeServerError, http.UnprocessableError):
    """The runtime could not score these (validated) inputs."""

    code = "inference_failed"


class UnavailableError(EdgeServerError, http.UnavailableError):
    """The server cannot answer now: a variant's version is not loaded, a timeout."""


class ModelLoadingError(UnavailableError):
    """The worker is still loading its models (it has just started or been replaced): 503 with Retry-After.

    Raised only on the scoring path; with several workers a client may reach one
    that is not ready yet, and "not found" would be wrong for a model that will be.
    """

    code = "model_loading"
    retry_after_s = 1


class ConfigError(EdgeServerError, ConfigurationError):
    """A bad configuration file or option (raised at start-up, never to a client; ``field``: the setting)."""


# SDK errors that escape a view: loading a package is where they come from here.
SDK_ERRORS: Mapping[type[EdgeRecError], tuple[int, str]] = {
    PackageError: (422, LoadRefusedError.code),
    DecryptionError: (422, LoadRefusedError.code),
    RuntimeBackendError: (422, InferenceFailedError.code),
    ModelClosedError: (503, UnavailableError.code),
}


def classify(exc: BaseException) -> ErrorAnswer:
    """The answer to any error raised while serving."""
    return http.classify(exc, SDK_ERRORS)


__all__ = [
    "SDK_ERRORS",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "EdgeServerError",
    "ForbiddenError",
    "InferenceFailedError",
    "LoadRefusedError",
    "MalformedBodyError",
    "ModelLoadingError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnauthorizedError",
    "UnavailableError",
    "VersionNotFoundError",
    "classify",
]
