"""Errors of the sync service, its admin client and the node daemon.

Each hangs under its branch of the SDK's tree (untrusted data, local
environment, remote) and under :class:`SyncError`. Refusals are
:mod:`edgerec.sdk.http_errors` classes: status, code and field on the one
wire format both services speak. No web framework is imported here.
"""

from __future__ import annotations

import re

from edgerec.sdk import http_errors as http
from edgerec.sdk.errors import (
    ConfigurationError,
    EdgeRecError,
    ProtocolError,
    ServiceAnswerError,
    ServiceUnreachableError,
)
from edgerec.sdk.http_errors import RequestRefusedError


class SyncError(EdgeRecError):
    """Root of every error raised by :mod:`edgerec.sync` (a mixin beside its branch in the SDK tree)."""


# -- requests the service refuses (4xx), on the wire format of edgerec.sdk.http_errors ---------


# A field path at the start of a refusal's text ("max_failure_percent: ...", "releases[0].format: ...").
_FIELD_PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\]|\.[A-Za-z_][A-Za-z0-9_]*)*): ")


class BadRequestError(SyncError, http.BadRequestError):
    """Malformed or invalid request data.

    Without ``field``, a text that starts with a field path and ": " names that field: the answer's
    ``field`` is the path and ``detail`` the rest, so the message (and the answer's text) is as written.
    """

    def __init__(self, detail: str, field: str | None = None) -> None:
        if field is None and (m := _FIELD_PATH.match(detail)):
            field, detail = m.group(1), detail[m.end():]
        super().__init__(detail, field)


class AuthenticationError(SyncError, http.UnauthorizedError):
    """Missing, malformed or wrong credentials or request signature."""


class ReplayError(AuthenticationError):
    """A signed request that was seen before or is outside the replay window."""

    code = "replayed"


class ForbiddenError(SyncError, http.ForbiddenError):
    """Authenticated, but not allowed (a revoked node)."""


class NotFoundError(SyncError, http.NotFoundError):
    """An unknown node, model, version or enrollment token."""


class ConflictError(SyncError, http.ConflictError):
    """The request conflicts with the state: a version already published, say."""


class PayloadTooLargeError(SyncError, http.PayloadTooLargeError):
    """An upload or report above the configured limit."""


class UntrustedPackageError(SyncError, http.UnprocessableError):
    """A package with a bad, missing or untrusted publisher signature."""

    code = "untrusted_package"


class UnavailableError(SyncError, http.UnavailableError):
    """The service cannot answer this now (503); the request may succeed later."""


class BlobUnavailableError(UnavailableError, OSError):
    """A stored package's bytes cannot be read here now: the object store is unreachable, or this replica
    has none configured. An OSError too, because it is raised by file-like readers, whose callers (zipfile,
    the alerts' manifest reads) handle a failed read as the OSError the io contract names."""

    reason = "blob_unavailable"


class DatabaseUnavailableError(UnavailableError):
    """The service's database connection was lost (a restart, a failover); the next request reconnects."""

    reason = "database_unavailable"
    retry_after_s = 1


# -- what the node daemon refuses -------------------------------------------------


class AssignmentError(SyncError, ProtocolError):
    """A signed assignment the node refuses."""


class AssignmentSignatureError(AssignmentError):
    """The assignment is not signed by a trusted assignment key."""


class AssignmentReplayError(AssignmentError):
    """An assignment older than one already accepted (a replay)."""


class AssignmentExpiredError(AssignmentError):
    """The assignment's expiry has passed."""


class DowngradeError(AssignmentError):
    """A lower version than installed, without an explicit signed rollback."""


class OriginRefusedError(SyncError, ProtocolError):
    """A repository origin the node will not switch to: it serves no valid repository, or an older one."""


class InstallError(SyncError):
    """A model could not be fetched, verified, opened or installed."""


class EdgeControlError(InstallError):
    """The node's edge server refused to load a model or could not be reached."""


# The old name, kept for one release (it clashed with edgerec.edge_server.errors.EdgeServerError).
EdgeServerError = EdgeControlError


# -- configuration, the machine and the network -----------------------------------


class ConfigError(SyncError, ConfigurationError):
    """Missing or invalid configuration: data dir, keys, credentials (``field``: the setting at fault)."""


class ServerUnreachableError(SyncError, ServiceUnreachableError):
    """The server could not be reached (connection refused, timeout, TLS)."""


class ApiError(SyncError, ServiceAnswerError):
    """The server answered with an error; ``status``, ``error``, ``detail`` and ``field`` say which."""


class OverloadedError(ApiError):
    """The service (or a proxy before it) refused for overload (503 or 429): it is up, and asks to come back
    later. ``retry_after_s``: its ``Retry-After`` in seconds, None when absent or unreadable."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status, error, detail, field)
        self.retry_after_s = retry_after_s


__all__ = [
    "ApiError",
    "AssignmentError",
    "AssignmentExpiredError",
    "AssignmentReplayError",
    "AssignmentSignatureError",
    "AuthenticationError",
    "BadRequestError",
    "BlobUnavailableError",
    "ConfigError",
    "ConflictError",
    "DatabaseUnavailableError",
    "DowngradeError",
    "EdgeControlError",
    "EdgeServerError",
    "ForbiddenError",
    "InstallError",
    "NotFoundError",
    "OriginRefusedError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ReplayError",
    "RequestRefusedError",
    "ServerUnreachableError",
    "SyncError",
    "UnavailableError",
    "UntrustedPackageError",
]
