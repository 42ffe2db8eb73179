"""From the edge server's event spool to queued metrics reports: the daemon's part of fleet metrics.

Each cycle the daemon (:class:`MetricsFeed`):

1. reads the lines the edge server's workers appended to the spool since the
   last cycle (:mod:`.event_spool`) into the open windows: business events
   into :class:`~.fleet_metrics.EventWindows` (bounded per user fingerprint),
   operational figures into :class:`~.fleet_metrics.OpsRecorder`;
2. releases every window that closed (its end plus the grace period), in
   order, through :class:`~.privacy.Releaser` (noise, budget, ledger), over
   the keys the node declared for it (what it served, not what users did);
3. queues one metrics report with the releases and operational windows
   *and* moves the cursors past them, in one transaction of ``node.db``;
4. deletes spool files whose windows are all behind both cursors.

Durability without saving the open windows: the spool is their durable
record. After a kill the daemon reads every spool file again and skips lines
before the cursors, so an event of a window already queued is not counted
again and one of a window not yet queued is counted once. The ledger makes
a release that was made but not queued come out the same again (no new
noise, no new spend).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgerec.sync.protocol.releases import Key, OpsWindow, Release

from .event_spool import SEGMENT_S, SpoolReader
from .fleet_metrics import EventWindows, OpsRecorder, metrics_report
from .privacy import PrivacyConfig, Releaser, SqliteBudgetLedger, WindowCounts
from .state import NodeState

log = logging.getLogger("edgerec.sync.node.metrics")
BUSINESS_CURSOR = "metrics.business_before"  # windows starting before this are released and queued
OPS_CURSOR = "metrics.ops_before"
KEYS = "metrics.keys"  # the keys declared for the open business windows (JSON)
#: At most this many windows of each kind per cycle (a node back after days catches up over cycles).
MAX_WINDOWS_PER_CYCLE = 48


@dataclass(frozen=True)
class MetricsConfig:
    """What the node measures and releases; ``grace_s`` waits for late lines before a window closes."""

    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    ops_window_s: int = 300
    grace_s: float = 60.0

    def __post_init__(self) -> None:
        from edgerec.sync.protocol.errors import ConfigError

        if not 60 <= self.ops_window_s <= 86400 or self.ops_window_s % SEGMENT_S:
            raise ConfigError(f"metrics.ops_window_s: expected a multiple of {SEGMENT_S} s up to a day, "
                              f"got {self.ops_window_s}")
        if not 0 <= self.grace_s <= 3600:
            raise ConfigError(f"metrics.grace_s: expected 0 to 3600 seconds, got {self.grace_s}")


@dataclass
class FeedResult:
    releases: list[Release] = field(default_factory=list)
    ops: list[OpsWindow] = field(default_factory=list)
    events: int = 0
    erased: int = 0


class MetricsFeed:
    """Spool -> windows -> releases -> the report queue, for one node."""

    def __init__(self, state: NodeState, config: MetricsConfig, releaser: Releaser | None = None) -> None:
        self.state, self.db, self.config = state, state.db, config
        p = config.privacy
        self.windows = EventWindows(p, config.grace_s)
        self.ops = OpsRecorder(config.ops_window_s, config.grace_s)
        self.ledger: SqliteBudgetLedger | None = None
        if releaser is None:
            self.ledger = SqliteBudgetLedger(state.ledger_file)
            releaser = Releaser(p, self.ledger)
        self.releaser = releaser
        self.reader = SpoolReader(state.spool_dir)
        now = time.time()
        self.business_before = self._cursor(BUSINESS_CURSOR, p.window_seconds, now)
        self.ops_before = self._cursor(OPS_CURSOR, config.ops_window_s, now)
        raw = self.db.setting(KEYS)
        self.keys: set[Key] = {Key(*k) for k in json.loads(raw)} if raw else set()
        self._serving: set[Key] = set()

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()

    def _cursor(self, name: str, seconds: int, now: float) -> int:
        raw = self.db.setting(name)
        if raw is not None:
            return int(raw)
        start = int(now // seconds) * seconds  # first run: from the window under way
        self.db.set_setting(name, str(start))
        return start

    def declare(self, keys: Iterable[Key]) -> None:
        """Keys the node serves now (model versions, experiment variants): released for the open windows."""
        self._serving = set(keys)
        new = self._serving - self.keys
        if new:
            self.keys |= new
            self.db.set_setting(KEYS, json.dumps(sorted(self.keys)))

    def erase(self, user: str, files: list[str]) -> int:
        """Take a user (by fingerprint) out of the open windows and of the spool files named."""
        return self.windows.forget(user) + self.reader.erase(user, files)

    def run(self, now: float | None = None) -> FeedResult:
        """One cycle: drain the spool, release closed windows, queue them, delete drained files."""
        now = time.time() if now is None else now
        out = FeedResult()
        drained = self.reader.read()
        for e in drained.events:
            if e.t >= self.business_before:
                self.windows.add(e.t, e.user, Key(e.model, e.version, e.experiment, e.variant), e.kind)
                out.events += 1
        for o in drained.ops:
            if o.t >= self.ops_before:
                self.ops.add(o.t, o.model, o.version, o.requests, o.errors, o.latency, o.scores)
        out.releases = self._releases(now)
        ops_before = self._due(self.ops_before, self.config.ops_window_s, now)
        out.ops = self.ops.closed(ops_before + self.config.grace_s)
        if out.releases or ops_before != self.ops_before:
            business_before = (out.releases[-1].window_start + out.releases[-1].window_seconds
                               if out.releases else self.business_before)
            settings = {BUSINESS_CURSOR: str(business_before), OPS_CURSOR: str(ops_before)}
            if out.releases:
                # The open windows declare what serves from now on (what served before is released).
                self.keys = set(self._serving) or self.keys
                settings[KEYS] = json.dumps(sorted(self.keys))
            if out.releases or out.ops:
                self.db.enqueue(metrics_report(out.releases, out.ops), settings)
            else:
                for key, value in settings.items():
                    self.db.set_setting(key, value)
            self.business_before, self.ops_before = business_before, ops_before
        self.reader.remove_before(min(self.business_before, self.ops_before), now)
        return out

    def _due(self, before: int, seconds: int, now: float) -> int:
        """The cursor after every window from ``before`` that closed by ``now`` (bounded per cycle)."""
        n = 0
        while before + seconds + self.config.grace_s <= now and n < MAX_WINDOWS_PER_CYCLE:
            before += seconds
            n += 1
        return before

    def _releases(self, now: float) -> list[Release]:
        seconds = self.config.privacy.window_seconds
        start = self.business_before
        end = self._due(start, seconds, now)
        closed = {w.start: w for w in self.windows.closed(end + self.config.grace_s)}
        out = []
        while start < end:
            counts = closed.pop(start, None) or WindowCounts(start, seconds, self.config.privacy.bounds)
            rel = self.releaser.release(counts, self.keys)
            if not rel.released:
                log.warning("window %d: the day's privacy budget is spent; nothing released", start)
            out.append(rel)
            start += seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"business_before": self.business_before, "ops_before": self.ops_before,
                "keys": [list(k) for k in sorted(self.keys)], "dropped_by_bound": self.windows.dropped(),
                "late": self.windows.late, "bad_lines": self.reader.bad_lines}


__all__ = ["MetricsConfig", "MetricsFeed"]
