"""User profile and item feature lookups: a source behind a cache.

The source is what the node was given (today a SQLite snapshot the node
daemon keeps up to date, ``sqlite:///abs/path.db``, with tables
``user_features`` and ``item_features`` of ``id TEXT PRIMARY KEY, features
TEXT`` holding a JSON object). Lookups go to the cache first; what it lacks is
read from the source in one query and cached, unknown ids included.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .cache import MISSING, Cache
from .errors import ConfigError
from .metrics import Metrics

KINDS = {"user": "user_features", "item": "item_features"}
_CHUNK = 500  # SQLite's default limit on host parameters is 999


class FeatureSource(Protocol):
    def fetch(self, kind: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Features of the ids the source has (``kind``: "user" or "item")."""

    def close(self) -> None: ...


class SqliteSource:
    """Read-only SQLite tables; one connection per thread (sqlite3 objects are per thread)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"{path} is not a file", field="feature_source")
        self._uri = f"file:{path}?mode=ro"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn()  # fail at start-up, not on the first request

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def fetch(self, kind: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        table = KINDS[kind]
        out: dict[str, dict[str, Any]] = {}
        conn = self._conn()
        for i in range(0, len(ids), _CHUNK):
            part = list(ids[i : i + _CHUNK])
            marks = ",".join("?" * len(part))
            rows = conn.execute(f"SELECT id, features FROM {table} WHERE id IN ({marks})", part)  # noqa: S608 - table from KINDS
            for key, features in rows:
                value = json.loads(features)
                if isinstance(value, dict):
                    out[str(key)] = value
        return out

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def open_source(url: str | None) -> FeatureSource | None:
    if not url:
        return None
    if url.startswith("sqlite:///"):
        return SqliteSource(Path(url[len("sqlite://"):]))
    raise ConfigError("expected sqlite:///absolute/path.db", field="feature_source")


class FeatureStore:
    """Cached lookups of user and item features, counted as cache hits and misses."""

    def __init__(self, source: FeatureSource, cache: Cache, metrics: Metrics, ttl_s: float,
                 negative_ttl_s: float) -> None:
        self.source, self.cache, self.metrics = source, cache, metrics
        self._ttl, self._negative_ttl = ttl_s, negative_ttl_s

    def lookup(self, kind: str, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Features per id in order; None for ids the source does not know."""
        cached = self.cache.get_many(kind, ids)
        missing = [k for k, v in zip(ids, cached, strict=True) if v is MISSING]
        self.metrics.cache(kind, self.cache.name, len(ids) - len(missing), len(missing))
        if not missing:
            return cached
        found = self.source.fetch(kind, list(dict.fromkeys(missing)))
        self.cache.set_many(kind, found, self._ttl)
        unknown = {k: None for k in missing if k not in found}
        if unknown and self._negative_ttl > 0:
            self.cache.set_many(kind, unknown, self._negative_ttl)
        return [found.get(k) if v is MISSING else v for k, v in zip(ids, cached, strict=True)]

    def forget(self, user_id: str) -> int:
        """Drop the user's cached profile (the source is the operator's store, not a cache)."""
        return self.cache.delete("user", [user_id])

    def close(self) -> None:
        self.cache.close()
        self.source.close()


__all__ = ["FeatureSource", "FeatureStore", "SqliteSource", "open_source"]
