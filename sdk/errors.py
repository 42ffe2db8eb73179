"""The edgerec exception hierarchy: one tree for every package.

Every error edgerec raises on purpose derives from :class:`EdgeRecError`, so a
caller (or the CLI) can catch one type. Below it, three branches a caller can
act on differently (as python-tuf separates untrusted data from transport):

- :class:`UntrustedDataError`: data from outside that is refused (a package,
  its signature, a ciphertext, a request's input). Do not retry with the same
  data; report it.
- :class:`LocalEnvironmentError`: this machine or its setup (a runtime, an
  accelerator, a key file, configuration). Fix the setup or fall back.
- :class:`RemoteError`: a remote party (the sync service, an edge server) or
  the network in between. Retry later, or report.

The converter, the edge server and the sync packages hang their own errors
under these branches (their own roots are mixins for ``except`` by package).
Names end in ``Error``; the two older names without it stay as aliases for
one release.
"""

from __future__ import annotations


class EdgeRecError(Exception):
    """Root of every error edgerec raises on purpose."""


# -- untrusted data -------------------------------------------------------------


class UntrustedDataError(EdgeRecError):
    """Data from outside that edgerec refuses: a package, a signature, a ciphertext, an input."""


class PackageError(UntrustedDataError):
    """A package is malformed: not a zip, truncated, bad manifest."""


class UnsafeEntryError(PackageError):
    """A zip entry whose path escapes the package or is not listed in the manifest."""


class DuplicateEntryError(UnsafeEntryError):
    """The same entry name appears twice in a package."""


class OversizedEntryError(UnsafeEntryError):
    """An entry (or the whole package) exceeds the configured size limits."""


class MissingEntryError(PackageError):
    """A file or artifact the caller asked for is not in the package's manifest."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path}: not in the package")
        self.path = path


class SignatureError(PackageError):
    """The package signature is missing, malformed or does not verify."""


class UntrustedSignerError(SignatureError):
    """The package is signed, but by no key the reader trusts."""


class IntegrityError(PackageError):
    """A file's bytes do not match the hash or size the signed manifest records."""


class DecryptionError(UntrustedDataError):
    """An encrypted artifact could not be opened with the keys at hand."""


class InvalidInputError(UntrustedDataError):
    """Request data does not fit the model signature or feature spec.

    ``field`` names the offending input so servers can report it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# -- this machine and its setup ---------------------------------------------------


class LocalEnvironmentError(EdgeRecError):
    """This machine or its setup: a runtime, an accelerator, a key file, configuration."""


class ConfigurationError(LocalEnvironmentError):
    """Missing or invalid configuration: an option, a file, a data directory.

    ``field``: the setting at fault, as its source names it (a variable, an option, a file's key), when one is;
    the message then starts with it.
    """

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.detail = detail
        self.field = field


class KeyFileError(ConfigurationError):
    """A key file is missing, unreadable, too widely readable or of the wrong kind."""


class RuntimeBackendError(LocalEnvironmentError):
    """A runtime (LiteRT, ONNX Runtime) failed to load or run a model."""


class AcceleratorUnavailableError(RuntimeBackendError):
    """A requested accelerator cannot run the model here."""


class ModelClosedError(LocalEnvironmentError):
    """The model was closed; load it again to use it."""


# -- remote parties and the network ------------------------------------------------


class RemoteError(EdgeRecError):
    """A remote party (the sync service, an edge server) or the network in between."""


class ServiceUnreachableError(RemoteError):
    """The remote could not be reached: connection refused, timeout, TLS failure."""


class ServiceAnswerError(RemoteError):
    """The remote answered with an error; ``status``, ``error``, ``detail`` and ``field`` say which."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{detail} ({error}, HTTP {status})")
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field


class ProtocolError(RemoteError):
    """A remote's message breaks the protocol: a bad signature, a replay, an expired or malformed answer."""


# Old names, kept for one release.
InvalidInput = InvalidInputError
AcceleratorUnavailable = AcceleratorUnavailableError


__all__ = [
    "AcceleratorUnavailable",
    "AcceleratorUnavailableError",
    "ConfigurationError",
    "DecryptionError",
    "DuplicateEntryError",
    "EdgeRecError",
    "IntegrityError",
    "InvalidInput",
    "InvalidInputError",
    "KeyFileError",
    "LocalEnvironmentError",
    "MissingEntryError",
    "ModelClosedError",
    "OversizedEntryError",
    "PackageError",
    "ProtocolError",
    "RemoteError",
    "RuntimeBackendError",
    "ServiceAnswerError",
    "ServiceUnreachableError",
    "SignatureError",
    "UnsafeEntryError",
    "UntrustedDataError",
    "UntrustedSignerError",
]
