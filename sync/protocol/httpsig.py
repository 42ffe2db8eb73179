"""HTTP Message Signatures (RFC 9421) for node requests, with a replay window.

A node signs ``@method``, ``@path`` and ``@query`` (and ``content-digest``
when there is a body) with its Ed25519 key, under the tag
``edgerec-node``, with a fresh nonce and its creation time. The service
checks the signature against the node's enrolled key, refuses signatures
older than the window, and refuses any nonce seen before (the caller records
nonces; see :func:`remember_nonce`).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from .errors import AuthenticationError

TAG = "edgerec-node"
LABEL = "node"
COVERED = ("@method", "@path", "@query")


@dataclass
class Message:
    """The request shape ``http_message_signatures`` reads: method, absolute URL, headers."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class _Keys(HTTPSignatureKeyResolver):
    def __init__(
        self,
        private: Ed25519PrivateKey | None = None,
        lookup: Callable[[str], Ed25519PublicKey | None] | None = None,
    ) -> None:
        self._private = private
        self._lookup = lookup

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        assert self._private is not None
        return self._private

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return None if self._lookup is None else self._lookup(key_id)


class RequestSigner:
    """Signs requests as one node."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self._signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private_key))

    def sign(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        nonce: str | None = None,
        created: dt.datetime | None = None,
    ) -> dict[str, str]:
        """Headers for the request, the signature headers (and Content-Digest) added."""
        msg = Message(method.upper(), url, dict(headers or {}))
        self._signer.sign(
            msg,
            key_id=self.key_id,
            created=created or dt.datetime.now(dt.UTC),
            nonce=nonce or secrets.token_urlsafe(16),
            label=LABEL,
            tag=TAG,
            covered_component_ids=COVERED,
            body=body if body else None,
        )
        return msg.headers


@dataclass(frozen=True)
class VerifiedRequest:
    key_id: str
    nonce: str
    created: int


class RequestVerifier:
    """Checks node request signatures; ``max_age_s`` is the replay window."""

    def __init__(self, max_age_s: int, clock_skew_s: int) -> None:
        self.max_age = dt.timedelta(seconds=max_age_s)
        self.skew = dt.timedelta(seconds=clock_skew_s)

    def verify(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | Any,
        body: bytes,
        lookup: Callable[[str], Ed25519PublicKey | None],
    ) -> VerifiedRequest:
        """The verified key id and nonce; AuthenticationError for anything else."""
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(lookup=lookup))
        verifier.max_clock_skew = self.skew
        msg = Message(method.upper(), url, {k: v for k, v in headers.items()})
        if "signature" not in {k.lower() for k in msg.headers}:
            raise AuthenticationError("the request is not signed (no Signature header)")
        try:
            results = verifier.verify(
                msg, max_age=self.max_age, expect_tag=TAG, require_components=COVERED, body=body
            )
        except (InvalidSignature, HTTPMessageSignaturesException) as exc:
            reason = str(exc) or "the signature does not verify"
            raise AuthenticationError(f"bad request signature: {reason}") from exc
        if len(results) != 1:
            raise AuthenticationError("bad request signature: expected exactly one signature")
        params = results[0].parameters
        nonce = results[0].nonce
        if not nonce or len(nonce) > 64:
            raise AuthenticationError("bad request signature: a nonce (at most 64 characters) is required")
        return VerifiedRequest(str(params["keyid"]), nonce, int(params["created"]))
