"""At most one event per (response, type, item): a de-duplication table of fixed size in bytes.

The table is an open-addressing hash table of fixed-size slots (a 16-byte key
and the response's issue time) in one memory mapping: anonymous memory for
one process, or a file that every worker process of a server maps, so a
duplicate is caught whichever worker it reaches. Its size is the budget
given, whatever the events hold (keys are digests, never the client's text).

When a key has to be evicted to make room, the table remembers the newest
issue time it evicted (the *horizon*). Events for responses issued at or
before the horizon are answered as expired and not counted: the table can no
longer tell whether they were seen, so "at most once" holds even when it is
full. Slots older than the attribution window are free (those responses are
refused anyway) and evict nothing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

try:  # pragma: no cover - fcntl exists wherever the edge server runs (Linux, macOS)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]  # no file locks: one process only

Outcome = Literal["new", "duplicate", "expired"]
KEY_BYTES = 16
_SLOT = struct.Struct("<16sq")  # key, issue time (0: empty)
_HEADER = struct.Struct("<8sq")  # magic, horizon
_MAGIC = b"edgedup1"
_PROBES = 8
MIN_BYTES = _HEADER.size + _SLOT.size * _PROBES


class EventDedup:
    """A fixed-size table of seen event keys, in memory or shared through ``path``."""

    def __init__(self, max_bytes: int, window_s: float, path: Path | None = None) -> None:
        if max_bytes < MIN_BYTES:
            raise ValueError(f"the event de-duplication table needs at least {MIN_BYTES} bytes")
        self.slots = (max_bytes - _HEADER.size) // _SLOT.size
        self.size = _HEADER.size + self.slots * _SLOT.size  # bytes, fixed for the table's life
        self.window_s = window_s
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path is None or fcntl is None:
            self._map = mmap.mmap(-1, self.size)
            _HEADER.pack_into(self._map, 0, _MAGIC, 0)
        else:
            self._map = self._shared(path)

    def _shared(self, folder_or_file: Path) -> mmap.mmap:
        # The slot count is in the name: workers started with other budgets never share a file.
        path = folder_or_file / f"events-dedup-{self.slots}.bin" if folder_or_file.is_dir() else folder_or_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != self.size:
                    os.ftruncate(fd, self.size)  # zero-filled: every slot empty
                    os.pwrite(fd, _HEADER.pack(_MAGIC, 0), 0)
                elif os.pread(fd, 8, 0) != _MAGIC:
                    raise ValueError(f"{path}: not an event de-duplication table")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            table = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return table

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    @property
    def horizon(self) -> int:
        """The newest issue time evicted so far: older responses can no longer be de-duplicated."""
        return int(_HEADER.unpack_from(self._map, 0)[1])

    def admit(self, keys: Sequence[tuple[bytes, int]], now: float | None = None) -> list[Outcome]:
        """Record ``(key, issue time)`` pairs at once; each is new, a duplicate, or expired."""
        cutoff = int((time.time() if now is None else now) - self.window_s)
        with self._locked():
            return [self._admit_one(key, issued, cutoff) for key, issued in keys]

    def _admit_one(self, key: bytes, issued: int, cutoff: int) -> Outcome:
        table, horizon = self._map, self.horizon
        if issued <= horizon:
            return "expired"
        start = int.from_bytes(key[:8], "little") % self.slots
        free, oldest, oldest_at = -1, -1, 0
        for i in range(_PROBES):
            at = _HEADER.size + ((start + i) % self.slots) * _SLOT.size
            seen, seen_issued = _SLOT.unpack_from(table, at)
            if seen_issued == 0 or seen_issued < cutoff:
                if free < 0:
                    free = at
                continue
            if seen == key:
                return "duplicate"
            if oldest < 0 or seen_issued < oldest_at:
                oldest, oldest_at = at, seen_issued
        if free < 0:
            # Full around this key: evict the oldest response's key and never count that response again.
            free = oldest
            if oldest_at > horizon:
                _HEADER.pack_into(table, 0, _MAGIC, oldest_at)
            if issued <= oldest_at:
                return "expired"
        _SLOT.pack_into(table, free, key, issued)
        return "new"

    def close(self) -> None:
        with self._lock:
            self._map.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


__all__ = ["KEY_BYTES", "MIN_BYTES", "EventDedup", "Outcome"]
