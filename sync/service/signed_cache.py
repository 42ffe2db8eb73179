"""Signed assignment documents, reused for a short while instead of signed on every poll.

A node polls every few seconds and its assignments rarely change, so
signing each one again (canonical JSON twice, an Ed25519 signature) is most
of what answering a check-in costs after the signature check. This cache is
keyed by everything a document says except its times (node, model, version,
channel, target, serial, rollback), and those come from the database on
every request: a changed assignment (a rollout, a pause, a rollback: the
serial or version moves) is a different key, so an entry never says
something the database no longer does, in this process or any other. What
reuse changes is only the times: ``issued`` is at most ``reuse_s`` old and
``expires`` as much earlier than a fresh signature's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Key = tuple[Any, ...]  # everything the signed document says (see SyncService.signed_assignments)


class SignedAssignmentCache:
    """Signed documents by content, each reused while younger than ``reuse_s``; at most ``max_entries``."""

    def __init__(self, reuse_s: float, max_entries: int = 16384) -> None:
        self.reuse_s = reuse_s
        self.max_entries = max_entries
        self._docs: dict[Key, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def get(self, key: Key, now: int, sign: Callable[[int], str]) -> str:
        """The document for ``key``: a cached one signed at most ``reuse_s`` ago, else ``sign(now)``."""
        hit = self._docs.get(key)
        if hit is not None and 0 <= now - hit[0] <= self.reuse_s:
            return hit[1]
        doc = sign(now)
        with self._lock:
            self._docs.pop(key, None)  # re-inserted last: the dict's order is the order of signing
            self._docs[key] = (now, doc)
            while len(self._docs) > self.max_entries:
                del self._docs[next(iter(self._docs))]
        return doc

    def __len__(self) -> int:
        return len(self._docs)
