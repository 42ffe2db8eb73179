"""HTTP Message Signatures (RFC 9421) for node requests, with a replay window.

A node signs ``@method``, ``@path`` and ``@query`` (and ``content-digest``
when there is a body) with its Ed25519 key, under the tag
``edgerec-node``, with a fresh nonce and its creation time. The service
checks the signature against the node's enrolled key, refuses signatures
older than the window, and refuses any nonce seen before (the caller records
nonces; see :func:`remember_nonce`).

Verifying through ``http_message_signatures`` parses both signature headers
as structured fields, which costs several times the Ed25519 check itself
(measured: bench/sync_checkin.py). A request in the exact form
:class:`RequestSigner` writes (one ``node`` signature, these components and
parameters in this order, each value in its canonical serialization) is
verified here directly: the signature base is built as RFC 9421 says,
from the same text the signer signed, with the same checks (age, clock
skew, content digest, algorithm, tag, nonce). Anything else goes through
the library unchanged, so every request that verified before still does;
tests/sync/test_httpsig_fast.py checks that both paths decide alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature as InvalidEd25519Signature
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

# The canonical form RequestSigner writes: sf-integers without leading zeros, strings that need no escaping,
# a 64-byte signature in padded base64, a SHA-256 content digest.
_FAST_INPUT = re.compile(
    r'node=(\("@method" "@path" "@query"( "content-digest")?\);created=(0|[1-9][0-9]{0,11});'
    r'keyid="([a-z0-9]{1,32})";alg="ed25519";nonce="([A-Za-z0-9_-]{1,64})";tag="edgerec-node")'
)
_FAST_SIGNATURE = re.compile(r"node=:([A-Za-z0-9+/]{86}==):")
_FAST_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/]{43}=):")
# @path and @query values that are printable ASCII without spaces (no escaping, nothing to trim)
_PLAIN = re.compile(r"[!-~]*")


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
        fields = {k.lower(): v for k, v in headers.items()}
        fast = self.verify_canonical(method, url, fields, body, lookup)
        if fast is not None:
            return fast
        return self.verify_general(method, url, fields, body, lookup)

    def verify_canonical(
        self,
        method: str,
        url: str,
        fields: Mapping[str, str],
        body: bytes,
        lookup: Callable[[str], Ed25519PublicKey | None],
    ) -> VerifiedRequest | None:
        """A request in RequestSigner's exact form, verified; None for any other form (left to the library).

        ``fields``: the request's header fields, names in lower case.
        """
        sig_input = _FAST_INPUT.fullmatch(fields.get("signature-input", ""))
        signature = _FAST_SIGNATURE.fullmatch(fields.get("signature", ""))
        if sig_input is None or signature is None:
            return None
        params, digest_covered, created_s, key_id, nonce = sig_input.groups()
        digest_field = fields.get("content-digest")
        digest = _FAST_DIGEST.fullmatch(digest_field or "")
        if digest_covered and digest is None:
            return None
        if not digest_covered and (body or digest_field is not None):
            return None  # a body (or a digest) with no signed digest: the library says why it is refused
        parts = urlsplit(url)
        path, query = parts.path or "/", "?" + parts.query
        if not _PLAIN.fullmatch(path) or not _PLAIN.fullmatch(query) or method != method.upper():
            return None
        created = int(created_s)
        now = time.time()
        skew, max_age = self.skew.total_seconds(), self.max_age.total_seconds()
        if created > now + skew:
            raise AuthenticationError("bad request signature: Signature \"created\" parameter is set to a time "
                                      "in the future")
        if created + max_age < now - skew:
            raise AuthenticationError(f"bad request signature: Signature age exceeds maximum allowable age "
                                      f"{self.max_age}")
        key = lookup(key_id)
        if key is None:
            raise AuthenticationError("bad request signature: Unable to resolve verification key")
        lines = [f'"@method": {method}', f'"@path": {path}', f'"@query": {query}']
        if digest_covered:
            lines.append(f'"content-digest": {digest_field}')
        lines.append(f'"@signature-params": {params}')
        try:
            key.verify(base64.b64decode(signature[1]), "\n".join(lines).encode())
        except InvalidEd25519Signature as exc:
            raise AuthenticationError("bad request signature: the signature does not verify") from exc
        if digest is not None and base64.b64decode(digest[1]) != hashlib.sha256(body).digest():
            raise AuthenticationError("bad request signature: the Content-Digest does not match the body")
        return VerifiedRequest(key_id, nonce, created)

    def verify_general(
        self,
        method: str,
        url: str,
        fields: Mapping[str, str],
        body: bytes,
        lookup: Callable[[str], Ed25519PublicKey | None],
    ) -> VerifiedRequest:
        """Any RFC 9421 form, through ``http_message_signatures`` (``fields``: names in lower case)."""
        verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(lookup=lookup))
        verifier.max_clock_skew = self.skew
        msg = Message(method.upper(), url, dict(fields))
        if "signature" not in fields:
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
