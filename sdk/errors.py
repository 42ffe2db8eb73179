"""The edgerec exception hierarchy.

Every error edgerec raises on purpose derives from :class:`EdgeRecError`, so a
caller (or the CLI) can catch one type. As in python-tuf, one branch is for
untrusted data that must be refused (a package, a request) and one for the
machine or the network (something to retry, report or fall back from).
"""

from __future__ import annotations


class EdgeRecError(Exception):
    """Root of every error edgerec raises on purpose."""


# -- untrusted data -------------------------------------------------------------


class PackageError(EdgeRecError):
    """A package is malformed: not a zip, truncated, bad manifest."""


class UnsafeEntryError(PackageError):
    """A zip entry whose path escapes the package or is not listed in the manifest."""


class DuplicateEntryError(UnsafeEntryError):
    """The same entry name appears twice in a package."""


class OversizedEntryError(UnsafeEntryError):
    """An entry (or the whole package) exceeds the configured size limits."""


class SignatureError(PackageError):
    """The package signature is missing, malformed or does not verify."""


class UntrustedSignerError(SignatureError):
    """The package is signed, but by no key the reader trusts."""


class IntegrityError(PackageError):
    """A file's bytes do not match the hash or size the signed manifest records."""


class DecryptionError(EdgeRecError):
    """An encrypted artifact could not be opened with the keys at hand."""


class InvalidInput(EdgeRecError):  # noqa: N818 - the name the API promises
    """Request data does not fit the model signature or feature spec.

    ``field`` names the offending input so servers can report it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class KeyFileError(EdgeRecError):
    """A key file is missing, unreadable or of the wrong kind."""


# -- the machine ---------------------------------------------------------------


class RuntimeBackendError(EdgeRecError):
    """A runtime (LiteRT, ONNX Runtime) failed to load or run a model."""


class AcceleratorUnavailable(RuntimeBackendError):  # noqa: N818 - public name
    """A requested accelerator cannot run the model here."""


class ModelClosedError(EdgeRecError):
    """The model was closed; load it again to use it."""


__all__ = [
    "AcceleratorUnavailable",
    "DecryptionError",
    "DuplicateEntryError",
    "EdgeRecError",
    "IntegrityError",
    "InvalidInput",
    "KeyFileError",
    "ModelClosedError",
    "OversizedEntryError",
    "PackageError",
    "RuntimeBackendError",
    "SignatureError",
    "UnsafeEntryError",
    "UntrustedSignerError",
]
