"""Errors of the sync service, its admin client and the node daemon.

As in the SDK (and python-tuf), one branch is for untrusted input that is
refused and one for the machine or the network. :class:`RequestRefusedError`
subclasses carry the HTTP status and error code the service answers with;
this module imports no web framework.
"""

from __future__ import annotations

from typing import ClassVar

from edgerec.sdk.errors import EdgeRecError


class SyncError(EdgeRecError):
    """Root of every error raised by :mod:`edgerec.sync`."""


# -- requests the service refuses (4xx) ------------------------------------------


class RequestRefusedError(SyncError):
    """A request the service refuses; ``status`` and ``code`` go on the wire."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"


class BadRequestError(RequestRefusedError):
    """Malformed or invalid request data."""


class AuthenticationError(RequestRefusedError):
    """Missing, malformed or wrong credentials or request signature."""

    status = 401
    code = "unauthorized"


class ReplayError(AuthenticationError):
    """A signed request that was seen before or is outside the replay window."""

    code = "replayed"


class ForbiddenError(RequestRefusedError):
    """Authenticated, but not allowed (a revoked node)."""

    status = 403
    code = "forbidden"


class NotFoundError(RequestRefusedError):
    """An unknown node, model, version or enrollment token."""

    status = 404
    code = "not_found"


class ConflictError(RequestRefusedError):
    """The request conflicts with the state: a version already published, say."""

    status = 409
    code = "conflict"


class PayloadTooLargeError(RequestRefusedError):
    """An upload or report above the configured limit."""

    status = 413
    code = "too_large"


class UntrustedPackageError(RequestRefusedError):
    """A package with a bad, missing or untrusted publisher signature."""

    status = 422
    code = "untrusted_package"


# -- what the node daemon refuses -------------------------------------------------


class AssignmentError(SyncError):
    """A signed assignment the node refuses."""


class AssignmentSignatureError(AssignmentError):
    """The assignment is not signed by a trusted assignment key."""


class AssignmentReplayError(AssignmentError):
    """An assignment older than one already accepted (a replay)."""


class AssignmentExpiredError(AssignmentError):
    """The assignment's expiry has passed."""


class DowngradeError(AssignmentError):
    """A lower version than installed, without an explicit signed rollback."""


class InstallError(SyncError):
    """A model could not be fetched, verified, opened or installed."""


class EdgeServerError(InstallError):
    """The edge server refused to load a model or could not be reached."""


# -- configuration, the machine and the network -----------------------------------


class ConfigError(SyncError):
    """Missing or invalid configuration: data dir, keys, credentials."""


class ServerUnreachableError(SyncError):
    """The server could not be reached (connection refused, timeout, TLS)."""


class ApiError(SyncError):
    """The server answered with an error; ``status``, ``error`` and ``detail`` say which."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{detail} ({error}, HTTP {status})")
        self.status = status
        self.error = error
        self.detail = detail


__all__ = [
    "ApiError",
    "AssignmentError",
    "AssignmentExpiredError",
    "AssignmentReplayError",
    "AssignmentSignatureError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "DowngradeError",
    "EdgeServerError",
    "ForbiddenError",
    "InstallError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ReplayError",
    "RequestRefusedError",
    "ServerUnreachableError",
    "SyncError",
    "UntrustedPackageError",
]
