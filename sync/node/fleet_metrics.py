"""Per-window collection on the node: business events (for private releases) and operational figures.

:class:`EventWindows` routes each business event to its window (default one
hour) and hands closed windows to :class:`~.privacy.Releaser`; user ids stay
in its memory and never reach a release. :class:`OpsRecorder` keeps per model
version, per window (default five minutes) a latency histogram, error counts
and a prediction-score histogram: figures about the model and the machine,
released without noise and without user ids.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgerec.sync.protocol.releases import (
    LATENCY_EDGES_MS,
    SCORE_EDGES,
    Histogram,
    Key,
    OpsFigures,
    OpsWindow,
    Release,
)

from .privacy import PrivacyConfig, WindowCounts


class EventWindows:
    """Open business windows; a window closes ``grace_s`` after its end (late events are counted, not kept)."""

    def __init__(self, config: PrivacyConfig, grace_s: float = 60.0) -> None:
        self.config = config
        self.grace_s = grace_s
        self._open: dict[int, WindowCounts] = {}
        self._closed_before = 0  # windows starting before this were handed out
        #: events that arrived after their window closed (local only)
        self.late = 0

    def add(self, ts: float, user_id: str, key: Key, kind: str, n: int = 1) -> int:
        """Count an event at time ``ts``; returns how many were kept under the contribution bound."""
        seconds = self.config.window_seconds
        start = int(ts // seconds) * seconds
        if start < self._closed_before:
            self.late += n
            return 0
        win = self._open.get(start)
        if win is None:
            win = self._open[start] = WindowCounts(start, seconds, self.config.bounds)
        return win.add(user_id, key, kind, n)

    def forget(self, user_id: str) -> int:
        """Take a user out of every open window (data subject erasure)."""
        return sum(w.forget(user_id) for w in self._open.values())

    def dropped(self) -> dict[str, int]:
        """Events over the contribution bound in the open windows, per kind."""
        out: dict[str, int] = defaultdict(int)
        for w in self._open.values():
            for kind, n in w.dropped.items():
                out[kind] += n
        return dict(out)

    def closed(self, now: float) -> list[WindowCounts]:
        """Windows whose end plus the grace period has passed, oldest first, removed from memory."""
        seconds = self.config.window_seconds
        due = sorted(s for s in self._open if s + seconds + self.grace_s <= now)
        if due:
            self._closed_before = max(self._closed_before, due[-1] + seconds)
        return [self._open.pop(s) for s in due]


@dataclass
class _Figures:
    requests: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    scores: list[int] = field(default_factory=lambda: [0] * (len(SCORE_EDGES) + 1))


class OpsRecorder:
    """Operational figures per model version and window: no noise, no user ids."""

    def __init__(self, window_seconds: int = 300, grace_s: float = 10.0) -> None:
        self.window_seconds = window_seconds
        self.grace_s = grace_s
        self._open: dict[int, dict[tuple[str, int], _Figures]] = {}

    def _figures(self, ts: float, model: str, version: int) -> _Figures:
        start = int(ts // self.window_seconds) * self.window_seconds
        return self._open.setdefault(start, {}).setdefault((model, version), _Figures())

    def request(self, ts: float, model: str, version: int, latency_ms: float,
                scores: list[float] | tuple[float, ...] = (), error: str | None = None) -> None:
        """One served request: its latency, the scores it returned, and its error kind if it failed."""
        f = self._figures(ts, model, version)
        f.requests += 1
        f.latency[bisect.bisect_left(LATENCY_EDGES_MS, latency_ms)] += 1
        for s in scores:
            f.scores[bisect.bisect_left(SCORE_EDGES, min(max(s, 0.0), 1.0))] += 1
        if error is not None:
            f.errors[error] += 1

    def add(self, ts: float, model: str, version: int, requests: int, errors: dict[str, int],
            latency: Sequence[int], scores: Sequence[int]) -> None:
        """Figures already tallied over a few seconds (the edge server's spool lines), added to ``ts``'s window."""
        f = self._figures(ts, model, version)
        f.requests += requests
        for kind, n in errors.items():
            f.errors[kind] += n
        f.latency = [a + b for a, b in zip(f.latency, latency, strict=True)]
        f.scores = [a + b for a, b in zip(f.scores, scores, strict=True)]

    def closed(self, now: float) -> list[OpsWindow]:
        due = sorted(s for s in self._open if s + self.window_seconds + self.grace_s <= now)
        out = []
        for start in due:
            figs = self._open.pop(start)
            out.append(OpsWindow(start, self.window_seconds, [
                OpsFigures(model, version, f.requests, dict(f.errors), Histogram(LATENCY_EDGES_MS, tuple(f.latency)),
                           Histogram(SCORE_EDGES, tuple(f.scores)))
                for (model, version), f in sorted(figs.items())]))
        return out


def metrics_report(releases: Sequence[Release], ops: Sequence[OpsWindow] = ()) -> dict[str, Any]:
    """The metrics report that carries releases and operational windows to the service
    (``POST /api/v1/node/reports``); nothing in it names a user."""
    return {"report_id": f"m-{int(time.time())}-{secrets.token_hex(6)}", "kind": "metrics",
            "releases": [r.to_doc() for r in releases], "ops": [w.to_doc() for w in ops]}


__all__ = ["EventWindows", "OpsRecorder", "metrics_report"]
