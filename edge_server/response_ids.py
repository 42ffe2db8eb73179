"""Response ids that carry who served a ranking and what it returned, so events can be attributed.

A response id is ``r2.<payload>.<items>.<tag>``: the payload names model,
version, experiment and variant (plus issue time, a nonce and, when the
server spools events for its node, the keyed fingerprint of the user it
ranked for, so each event can be charged to its user without the id); ``items`` is a
4-byte keyed fingerprint of each item the answer returned; the tag is an HMAC
under the server's key over both. Any worker process (they share the key) can
attribute an event, and check that its item was returned, without shared
state; a client can neither forge an id nor add an item to one. Ids older
than the attribution window are refused.

Why fingerprints in the id rather than a memory of recent answers: several
worker processes answer on one port, and an event may reach any of them, so
a per-process memory would refuse honest events; a shared one would put a
lock on the ranking path. The fingerprints are keyed (BLAKE2b under a key
derived from the server's, salted with the response's nonce), so a client
cannot search offline for another id that matches: a made-up item passes
with probability (items returned) / 2**32. They cost about a microsecond
per returned item and 5.4 characters of id each (``top_k`` keeps both small).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edgerec.sdk.random_hex import random_hex

from .errors import BadRequestError

_TAG = 16
FINGERPRINT = 4
_PREFIX = "r2"


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # base64.urlsafe_b64encode's steps without its two Python-level calls (three per response id)
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def item_bytes(item: object) -> bytes:
    """The bytes an item id is fingerprinted and de-duplicated by (``2`` and ``"2"`` are one item)."""
    return str(item).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Served:
    """What a response id says about the response it names."""

    model: str
    version: int
    experiment: str
    variant: str
    issued: int
    nonce: str = ""
    items: bytes = b""  # the returned items' fingerprints, FINGERPRINT bytes each
    tag: bytes = b""  # unique to the response
    user: str = ""  # the keyed fingerprint of the user (sdk.user_keys), "" when not spooling


class ResponseIds:
    """Issues and checks signed response ids."""

    def __init__(self, key: bytes, window_s: float, max_items: int = 2048) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once; copied per id
        fp_key = hmac.new(key, b"edgerec/item-fingerprint/v1", hashlib.sha256).digest()
        self._fp = hashlib.blake2b(key=fp_key, digest_size=FINGERPRINT)
        self._window = window_s
        self._prefixes: dict[tuple[str, int, str, str], str] = {}
        # payload (bounded by the names in it) and the fingerprints, in base64
        self.max_length = 600 + (max_items * FINGERPRINT * 4 + 2) // 3

    def issue(self, model: str, version: int, experiment: str, variant: str, items: Iterable[object] = (),
              user: str = "") -> str:
        # The payload is the JSON array [model, version, experiment, variant, issued, nonce, user]; its
        # first four members repeat, so their JSON is made once (user is base64, needs no escaping).
        key = (model, version, experiment, variant)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = json.dumps(list(key), separators=(",", ":"))[:-1] + ","
            if len(self._prefixes) < 10_000:  # label values come from loaded models and the settings
                self._prefixes[key] = prefix
        nonce = random_hex(6)
        payload = f'{prefix}{int(time.time())},"{nonce}","{user}"]'.encode()
        fingerprints = b"".join(map(self._fingerprinter(nonce), items))
        return f"{_PREFIX}.{_b64(payload)}.{_b64(fingerprints)}.{_b64(self._tag(payload, fingerprints))}"

    def _salted(self, nonce: str) -> hashlib.blake2b:
        h = self._fp.copy()
        h.update(nonce.encode())
        return h

    def _fingerprinter(self, nonce: str) -> Callable[[object], bytes]:
        """Item -> its fingerprint under ``nonce`` (what :meth:`_fingerprint` gives, a call less per item)."""
        copy = self._salted(nonce).copy

        def fingerprint(item: object) -> bytes:
            h = copy()
            h.update(str(item).encode("utf-8", "surrogatepass"))  # item_bytes, inlined
            return h.digest()

        return fingerprint

    @staticmethod
    def _fingerprint(salted: hashlib.blake2b, item: bytes) -> bytes:
        h = salted.copy()
        h.update(item)
        return h.digest()

    def _tag(self, payload: bytes, fingerprints: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(payload)
        mac.update(b".")
        mac.update(fingerprints)
        return mac.digest()[:_TAG]

    def parse(self, rid: object, field: str = "response_id") -> Served:
        """The serving facts of a genuine, recent response id (BadRequestError otherwise)."""
        if not isinstance(rid, str) or len(rid) > self.max_length:
            raise BadRequestError("expected a response id string", field=field)
        parts = rid.split(".")
        try:
            if len(parts) != 4 or parts[0] != _PREFIX:
                raise ValueError("format")
            payload, fingerprints, tag = _unb64(parts[1]), _unb64(parts[2]), _unb64(parts[3])
        except ValueError as exc:
            raise BadRequestError("not a response id issued by this server", field=field) from exc
        if not hmac.compare_digest(tag, self._tag(payload, fingerprints)):
            raise BadRequestError("not a response id issued by this server", field=field)
        model, version, experiment, variant, issued, nonce, user = json.loads(payload)
        if time.time() - issued > self._window:
            raise BadRequestError("the response is older than the attribution window", field=field)
        return Served(model, version, experiment, variant, issued, nonce, fingerprints, tag, user)

    def returned(self, served: Served, item: object) -> bool:
        """Whether the response ``served`` names returned ``item``."""
        fp = self._fingerprint(self._salted(served.nonce), item_bytes(item))
        found = served.items.find(fp)
        while found >= 0:
            if found % FINGERPRINT == 0:
                return True
            found = served.items.find(fp, found + 1)
        return False


__all__ = ["FINGERPRINT", "ResponseIds", "Served", "item_bytes"]
