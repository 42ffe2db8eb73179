"""Keyed user fingerprints: a stable stand-in for a user id that only this node can compute.

The edge server spools each accepted event with the fingerprint of its user
(HMAC-SHA256 under a node-local key, cut to 96 bits), never the id itself:
the node bounds each user's contribution with it, and ``edgerec node
forget-user ID`` computes the same fingerprint to erase that user's spooled
events. Without the key (0600, in the node's state directory) the
fingerprint of an id cannot be computed, so a spool file names nobody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from .errors import ConfigurationError
from .files import write_atomic
from .keys import read_secret_text

KEY_BYTES = 32
_CONTEXT = b"edgerec/user-fingerprint/v1\0"


def user_fingerprint(key: bytes, user_id: str) -> str:
    """The user's fingerprint under ``key``: 16 URL-safe base64 characters."""
    digest = hmac.new(key, _CONTEXT + user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


def read_user_key(path: Path) -> bytes:
    """The key in ``path`` (hex); a one-line error when it is missing, malformed, or group or others may access it
    (whoever reads it can fingerprint any user id and so tell whose events a spool file holds)."""
    try:
        key = bytes.fromhex(read_secret_text(path, "user key"))
    except ValueError as exc:
        raise ConfigurationError(f"{path}: the user key is not hex") from exc
    if len(key) != KEY_BYTES:
        raise ConfigurationError(f"{path}: the user key must be {KEY_BYTES} bytes")
    return key


def ensure_user_key(path: Path) -> bytes:
    """The key in ``path``, made on first use (file 0600)."""
    if not path.exists():
        write_atomic(path, os.urandom(KEY_BYTES).hex().encode(), mode=0o600)
    return read_user_key(path)


__all__ = ["KEY_BYTES", "ensure_user_key", "read_user_key", "user_fingerprint"]
