"""The durable, byte-bounded event spool the node daemon reads: accepted events and operational figures.

Each worker process appends to its own files under the spool folder, named
``<segment start>-<pid>-<n>.jsonl`` (one file per minute-long segment; ``n``
grows when the worker rotates, see :meth:`EventSpool.rotate`), through one
``os.write`` on an ``O_APPEND`` descriptor per batch of lines: no lock is
shared between processes, and a reader sees whole lines or a cut-off tail it
leaves for later. The line format is :mod:`edgerec.sdk.event_spool`.

Past ``max_bytes`` in the folder, lines are dropped and counted
(``edgerec_events_spool_dropped``): the node daemon drains and deletes
files as it releases their windows, so the spool fills only while it does
not run. Operational figures (requests, errors, latency, prediction scores
per model version) are tallied in memory and written every ``flush_s``
seconds; a worker killed in between loses at most that much of them.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgerec.sdk.event_spool import LATENCY_EDGES_MS, SCORE_EDGES, SpooledEvent, SpooledOps, event_line, ops_line
from edgerec.sdk.user_keys import user_fingerprint

from .metrics import Metrics

log = logging.getLogger("edgerec.edge_server.spool")
SEGMENT_S = 60
_RESCAN_S = 1.0


@dataclass
class _Tally:
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    scores: list[int] = field(default_factory=lambda: [0] * (len(SCORE_EDGES) + 1))


class EventSpool:
    """This process's writer into the spool folder."""

    def __init__(self, folder: Path, max_bytes: int, user_key: bytes, metrics: Metrics | None = None,
                 flush_s: float = 5.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self._key = user_key
        self._metrics = metrics
        self.flush_s = flush_s
        self.dropped = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment = -1
        self._rotation = itertools.count()
        self._n = next(self._rotation)
        self._used, self._scanned_at = 0, 0.0
        self._tally: dict[tuple[str, int], _Tally] = {}
        self._tally_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fingerprint(self, user_id: str) -> str:
        return user_fingerprint(self._key, user_id)

    # -- business events -------------------------------------------------------------

    def events(self, events: Iterable[SpooledEvent]) -> int:
        """Append accepted events (one write); returns how many were dropped for the byte cap."""
        data = b"".join(event_line(e) for e in events)
        return 0 if not data else self._append(data, data.count(b"\n"))

    # -- operational figures -------------------------------------------------------------

    def request(self, model: str, version: int, code: int, seconds: float) -> None:
        """One answered request of a model version: its latency and, for a 4xx/5xx, its error class."""
        with self._tally_lock:
            t = self._tally.get((model, version))
            if t is None:
                t = self._tally[(model, version)] = _Tally()
            t.requests += 1
            t.latency[bisect.bisect_left(LATENCY_EDGES_MS, seconds * 1000.0)] += 1
            if code >= 400:
                kind = f"{code // 100}xx"
                t.errors[kind] = t.errors.get(kind, 0) + 1

    def scores(self, model: str, version: int, scores: Sequence[float]) -> None:
        """The prediction scores an answer returned (clipped to [0, 1])."""
        with self._tally_lock:
            t = self._tally.get((model, version))
            if t is None:
                t = self._tally[(model, version)] = _Tally()
            for s in scores:
                t.scores[bisect.bisect_left(SCORE_EDGES, min(max(s, 0.0), 1.0))] += 1

    def flush(self) -> None:
        """Write the tallied operational figures (one line per model version) and start over."""
        with self._tally_lock:
            tally, self._tally = self._tally, {}
        now = time.time()
        data = b"".join(ops_line(SpooledOps(now, m, v, t.requests, t.errors, tuple(t.latency), tuple(t.scores)))
                        for (m, v), t in sorted(tally.items()))
        if data:
            self._append(data, data.count(b"\n"))

    def start(self) -> None:
        """Flush the operational figures every ``flush_s`` seconds in a thread."""
        self._thread = threading.Thread(target=self._run, name="edgerec-spool-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except OSError as exc:  # a full or read-only disk: keep serving, say why
                log.error("event spool: %s", exc)

    # -- files ------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Write later lines to a new file: the files written so far are final (erasure rewrites them)."""
        with self._lock:
            self._close_fd()
            self._n = next(self._rotation)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._segment = -1

    def _append(self, data: bytes, lines: int) -> int:
        with self._lock:
            now = time.time()
            segment = int(now // SEGMENT_S) * SEGMENT_S
            if segment != self._segment or self._fd is None:
                self._close_fd()
                self._rescan(now)
                path = self.folder / f"{segment}-{os.getpid()}-{self._n}.jsonl"
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._segment = segment
            elif self._used + len(data) > self.max_bytes and now - self._scanned_at >= _RESCAN_S:
                self._rescan(now)  # the daemon may have drained files since
            if self._used + len(data) > self.max_bytes:
                self.dropped += lines
                if self._metrics is not None:
                    self._metrics.spool_dropped.inc(lines)
                return lines
            written = os.write(self._fd, data)
            self._used += written
        return 0

    def _rescan(self, now: float) -> None:
        used = 0
        with os.scandir(self.folder) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    used += entry.stat().st_size
        self._used, self._scanned_at = used, now

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self.flush()
        with self._lock:
            self._close_fd()


__all__ = ["SEGMENT_S", "EventSpool"]
