"""Feature caches: in-process LRU with TTL (default) or Redis (``--cache-url``).

Both store JSON-able values per ``(kind, key)`` and know negative entries
(``None``: the source has no such id), so a flood of unknown ids does not reach
the source. ``get_many`` answers :data:`MISSING` where nothing is cached.
A Redis failure is a miss, never a failed request.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from time import monotonic
from typing import Any, Protocol

from .errors import ConfigError

log = logging.getLogger("edgerec.edge_server.cache")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Cache(Protocol):
    name: str

    def get_many(self, kind: str, keys: Sequence[str]) -> list[Any]:
        """Cached values in order; MISSING where absent or expired."""

    def set_many(self, kind: str, items: Mapping[str, Any], ttl_s: float) -> None:
        """Store values (None marks an id the source does not have)."""

    def delete(self, kind: str, keys: Sequence[str]) -> int:
        """Forget these entries (a user's erasure); how many there were."""

    def close(self) -> None: ...


class LocalCache:
    """A thread-safe LRU with a per-entry deadline (monotonic clock)."""

    name = "local"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, kind: str, keys: Sequence[str]) -> list[Any]:
        now = monotonic()
        out: list[Any] = []
        with self._lock:
            for key in keys:
                entry = self._data.get((kind, key))
                if entry is None:
                    out.append(MISSING)
                elif entry[0] < now:
                    del self._data[(kind, key)]
                    out.append(MISSING)
                else:
                    self._data.move_to_end((kind, key))
                    out.append(entry[1])
        return out

    def set_many(self, kind: str, items: Mapping[str, Any], ttl_s: float) -> None:
        deadline = monotonic() + ttl_s
        with self._lock:
            for key, value in items.items():
                self._data[(kind, key)] = (deadline, value)
                self._data.move_to_end((kind, key))
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def delete(self, kind: str, keys: Sequence[str]) -> int:
        with self._lock:
            return sum(self._data.pop((kind, k), None) is not None for k in keys)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        with self._lock:
            self._data.clear()


class RedisCache:
    """Values as JSON strings under ``edgerec:features:{kind}:{key}`` with Redis expiry."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "edgerec:features:") -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigError("needs the redis package (pip install 'edgerec[redis]')", field="cache_url") from exc
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        except ValueError as exc:
            raise ConfigError(f"not a Redis URL ({exc})", field="cache_url") from exc
        self._prefix = prefix

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    def get_many(self, kind: str, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        try:
            raw = self._client.mget([self._key(kind, k) for k in keys])
        except self._errors as exc:
            log.warning("redis cache unavailable, reading the source: %s", exc)
            return [MISSING] * len(keys)
        out: list[Any] = []
        for value in raw:
            if value is None:
                out.append(MISSING)
                continue
            try:
                out.append(json.loads(value))
            except ValueError:
                out.append(MISSING)  # a foreign or corrupt value: read the source again
        return out

    def set_many(self, kind: str, items: Mapping[str, Any], ttl_s: float) -> None:
        if not items:
            return
        ms = max(1, int(ttl_s * 1000))
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(self._key(kind, key), json.dumps(value, separators=(",", ":")), px=ms)
            pipe.execute()
        except self._errors as exc:
            log.warning("redis cache write failed: %s", exc)

    def delete(self, kind: str, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(self._client.delete(*[self._key(kind, k) for k in keys]))

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        self._client.close()


def open_cache(url: str | None, max_entries: int) -> Cache:
    """Redis for ``redis://`` / ``rediss://`` / ``unix://`` URLs, else the in-process LRU."""
    if not url:
        return LocalCache(max_entries)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("expected redis://, rediss:// or unix://", field="cache_url")
    return RedisCache(url)


__all__ = ["MISSING", "Cache", "LocalCache", "RedisCache", "open_cache"]
