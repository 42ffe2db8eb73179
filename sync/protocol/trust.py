"""edgerec's own trust data, carried inside TUF root metadata.

The root (signed offline by a threshold of admin keys) holds, besides the TUF
roles, an ``x-edgerec`` field with the trusted *publisher* keys (who may sign
packages) and the *assignment* keys (which online key signs a node's desired
versions). Nodes pin the root at enrollment and follow root rotations through
TUF, so publisher keys are rotated the way TUF rotates any key; a compromised
sync service cannot add a publisher.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tuf.api.metadata import Root

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.keys import key_id, public_key_from_pem, public_pem

from .errors import ConfigError

EXTENSION = "x-edgerec"


@dataclass(frozen=True)
class TrustInfo:
    """Publisher and assignment keys by key id (the SDK's id: SHA-256 of the raw key)."""

    publisher_keys: dict[str, Ed25519PublicKey]
    assignment_keys: dict[str, Ed25519PublicKey]

    @classmethod
    def build(
        cls, publishers: Iterable[Ed25519PublicKey], assignment: Iterable[Ed25519PublicKey]
    ) -> TrustInfo:
        return cls({key_id(k): k for k in publishers}, {key_id(k): k for k in assignment})

    def to_dict(self) -> dict[str, Any]:
        def pems(keys: dict[str, Ed25519PublicKey]) -> dict[str, str]:
            return {kid: public_pem(k).decode() for kid, k in sorted(keys.items())}

        return {"publisher_keys": pems(self.publisher_keys), "assignment_keys": pems(self.assignment_keys)}

    @classmethod
    def from_dict(cls, doc: Any) -> TrustInfo:
        try:
            return cls(_keys(doc["publisher_keys"]), _keys(doc["assignment_keys"]))
        except (KeyError, TypeError, AttributeError, KeyFileError) as exc:
            raise ConfigError(f"root metadata: malformed {EXTENSION} field ({exc})") from exc

    @classmethod
    def from_root(cls, root: Root) -> TrustInfo:
        doc = root.unrecognized_fields.get(EXTENSION)
        if doc is None:
            raise ConfigError(f"root metadata has no {EXTENSION} field")
        return cls.from_dict(doc)


def _keys(doc: dict[str, str]) -> dict[str, Ed25519PublicKey]:
    out: dict[str, Ed25519PublicKey] = {}
    for kid, pem in doc.items():
        key = public_key_from_pem(pem, "ed25519", source=f"{EXTENSION} key {kid[:12]}")
        assert isinstance(key, Ed25519PublicKey)
        if key_id(key) != kid:
            raise KeyFileError(f"{EXTENSION}: key id {kid[:12]} does not match its key")
        out[kid] = key
    return out
