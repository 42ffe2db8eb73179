"""Response ids that carry who served a ranking, so events can be attributed.

A response id is ``r1.<payload>.<tag>``: the payload names model, version,
experiment and variant (plus issue time and a nonce), the tag is an HMAC under
the server's key. Any worker process (they share the key) can attribute an
event without shared state, and a client cannot forge an id to inflate a
variant's clicks. Ids older than the attribution window are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from .errors import BadRequestError
from .random_hex import random_hex

_TAG = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Served:
    """What a response id says about the response it names."""

    model: str
    version: int
    experiment: str
    variant: str
    issued: int


class ResponseIds:
    """Issues and checks signed response ids."""

    def __init__(self, key: bytes, window_s: float) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once; copied per id
        self._window = window_s
        self._prefixes: dict[tuple[str, int, str, str], str] = {}

    def issue(self, model: str, version: int, experiment: str, variant: str) -> str:
        # The payload is the JSON array [model, version, experiment, variant, issued, nonce]; its
        # first four members repeat, so their JSON is made once.
        key = (model, version, experiment, variant)
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = json.dumps(list(key), separators=(",", ":"))[:-1] + ","
            if len(self._prefixes) < 10_000:  # label values come from loaded models and the settings
                self._prefixes[key] = prefix
        payload = f'{prefix}{int(time.time())},"{random_hex(6)}"]'.encode()
        return f"r1.{_b64(payload)}.{_b64(self._tag(payload))}"

    def _tag(self, payload: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(payload)
        return mac.digest()[:_TAG]

    def parse(self, rid: object, field: str = "response_id") -> Served:
        """The serving facts of a genuine, recent response id (BadRequestError otherwise)."""
        if not isinstance(rid, str) or len(rid) > 512:
            raise BadRequestError("expected a response id string", field=field)
        parts = rid.split(".")
        try:
            if len(parts) != 3 or parts[0] != "r1":
                raise ValueError("format")
            payload, tag = _unb64(parts[1]), _unb64(parts[2])
        except ValueError as exc:
            raise BadRequestError("not a response id issued by this server", field=field) from exc
        good = self._tag(payload)
        if not hmac.compare_digest(tag, good):
            raise BadRequestError("not a response id issued by this server", field=field)
        model, version, experiment, variant, issued, _ = json.loads(payload)
        if time.time() - issued > self._window:
            raise BadRequestError("the response is older than the attribution window", field=field)
        return Served(model, version, experiment, variant, issued)


__all__ = ["ResponseIds", "Served"]
