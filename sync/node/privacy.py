"""Differentially private business counts on the node, and its privacy budget.

A node is the curator of its users' events. Per window it counts
impressions, clicks and conversions per (model, version, experiment,
variant) and releases them only as follows:

* **Contribution bound.** Each user adds at most ``L_kind`` events of each
  kind to the window, over all keys together (the first ones; the rest are
  dropped from the release and counted in :attr:`WindowCounts.dropped`, which
  stays on the node). Adding or removing one user therefore changes the
  released vector by at most Delta = sum L_kind in L1 norm, whatever models,
  versions or experiments that user saw.
* **Public key set.** Rows are released for the keys the caller declares
  (what the node serves: its models, versions and experiment variants), each
  one whether it had events or not, so which rows appear says nothing about
  users. Events for undeclared keys are dropped and counted.
* **Noise.** OpenDP's ``make_laplace`` over a vector of integers with the L1
  distance (the discrete Laplace mechanism, sampled exactly) at scale
  b = Delta / epsilon_w; OpenDP's own privacy map checks that the measurement costs epsilon_w.
* **Budget.** Each release spends epsilon_w from the node's daily budget (basic
  sequential composition). A :class:`BudgetLedger` records the spend and the
  released document in one transaction; a window released before is sent
  again as it was (no new noise, no new spend); a release that would pass the
  day's budget is not made, and the node says ``budget_exhausted`` instead.
* **Noise-free mode** (``mechanism="none"``) exists for tests; its releases
  say ``test_only`` and the service refuses them unless told to accept them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from edgerec.sdk.files import private_sqlite_file
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.releases import KINDS, Key, Noise, Release, discrete_laplace_variance, parse_release

_MICRO = 1_000_000  # the ledger counts epsilon in millionths, so sums are exact
_MAX_I64 = (1 << 63) - 1


@dataclass(frozen=True)
class PrivacyConfig:
    """What a node releases and at what privacy cost (one user is the unit of privacy)."""

    epsilon_per_window: float = 0.5
    daily_budget: float = 12.0
    #: L per kind: at most this many events of the kind per user and window; kinds left out are not released
    bounds: dict[str, int] = field(default_factory=lambda: {"impression": 20, "click": 5, "conversion": 2})
    window_seconds: int = 3600
    #: "discrete_laplace", or "none" for tests only (the service refuses it unless told otherwise)
    mechanism: str = "discrete_laplace"

    def __post_init__(self) -> None:
        if not 0 < self.epsilon_per_window <= 10:
            raise ConfigError("privacy.epsilon_per_window: expected a number in (0, 10], "
                              f"got {self.epsilon_per_window}")
        if not self.epsilon_per_window <= self.daily_budget <= 1000:
            raise ConfigError("privacy.daily_budget: expected a number from epsilon_per_window to 1000, "
                              f"got {self.daily_budget}")
        if not self.bounds or set(self.bounds) - set(KINDS):
            raise ConfigError(f"privacy.bounds: expected bounds for some of {', '.join(KINDS)}")
        for kind, bound in self.bounds.items():
            if isinstance(bound, bool) or not isinstance(bound, int) or not 1 <= bound <= 10_000:
                raise ConfigError(f"privacy.bounds.{kind}: expected an integer in [1, 10000], got {bound!r}")
        if not 60 <= self.window_seconds <= 86400 or 86400 % self.window_seconds:
            raise ConfigError("privacy.window_seconds: expected a divisor of a day of at least 60 seconds, "
                              f"got {self.window_seconds}")
        if self.mechanism not in ("discrete_laplace", "none"):
            raise ConfigError(f"privacy.mechanism: expected discrete_laplace or none, got {self.mechanism!r}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.bounds)

    @property
    def sensitivity(self) -> int:
        """L1 sensitivity of one window's vector under adding or removing one user."""
        return sum(self.bounds.values())

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon_per_window

    def noise(self) -> Noise:
        if self.mechanism == "none":
            return Noise("none")
        return Noise("discrete_laplace", self.epsilon_per_window, self.sensitivity, self.scale,
                     discrete_laplace_variance(self.scale))


# -- counting with contribution bounds ------------------------------------------------------------


class WindowCounts:
    """One window's events, each user's contribution bounded per kind over the whole window.

    Per-user counts stay in memory on the node (so :meth:`forget` can take a
    user out); only :meth:`totals` of the declared keys are ever released.
    """

    def __init__(self, start: int, seconds: int, bounds: dict[str, int]) -> None:
        self.start, self.seconds = start, seconds
        self._bounds = dict(bounds)
        self._users: dict[str, dict[tuple[Key, str], int]] = {}
        self._per_kind: dict[tuple[str, str], int] = defaultdict(int)
        #: events left out of the release because their user was over the bound, per kind (local only)
        self.dropped: dict[str, int] = defaultdict(int)
        #: events of kinds this node does not release (local only)
        self.ignored = 0

    def add(self, user_id: str, key: Key, kind: str, n: int = 1) -> int:
        """Count ``n`` events of ``kind`` by ``user_id``; returns how many were kept under the bound."""
        bound = self._bounds.get(kind)
        if bound is None:
            self.ignored += n
            return 0
        used = self._per_kind[(user_id, kind)]
        kept = max(0, min(n, bound - used))
        if kept:
            self._per_kind[(user_id, kind)] = used + kept
            per_user = self._users.setdefault(user_id, {})
            per_user[(key, kind)] = per_user.get((key, kind), 0) + kept
        if n - kept:
            self.dropped[kind] += n - kept
        return kept

    def forget(self, user_id: str) -> int:
        """Take a user's events out of this window; returns how many there were."""
        gone = self._users.pop(user_id, {})
        for kind in self._bounds:
            self._per_kind.pop((user_id, kind), None)
        return sum(gone.values())

    def users(self) -> int:
        return len(self._users)

    def totals(self, keys: Iterable[Key]) -> tuple[dict[Key, dict[str, int]], int]:
        """Bounded totals of the declared keys (all of them, zeros too) and the events outside them."""
        out = {k: dict.fromkeys(self._bounds, 0) for k in keys}
        outside = 0
        for per_user in self._users.values():
            for (key, kind), n in per_user.items():
                row = out.get(key)
                if row is None:
                    outside += n
                else:
                    row[kind] += n
        return out, outside


# -- noise ---------------------------------------------------------------------------------------


class NoiseSource(Protocol):
    def __call__(self, values: Sequence[int], scale: float) -> list[int]: ...


_measurements: dict[float, Any] = {}
_lock = threading.Lock()


def _measurement(scale: float) -> Any:
    """OpenDP's discrete Laplace over integer vectors (L1 distance) at ``scale``, built once."""
    with _lock:
        meas = _measurements.get(scale)
        if meas is None:
            import opendp.prelude as dp

            dp.enable_features("contrib")
            space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
            meas = dp.m.make_laplace(*space, scale=scale)
            _measurements[scale] = meas
        return meas


_costs: dict[tuple[int, float], float] = {}


def opendp_epsilon(sensitivity: int, scale: float) -> float:
    """What OpenDP's privacy map says one release at ``scale`` costs for an L1 change of ``sensitivity``."""
    cost = _costs.get((sensitivity, scale))
    if cost is None:
        cost = _costs[(sensitivity, scale)] = float(_measurement(scale).map(sensitivity))
    return cost


def opendp_laplace(values: Sequence[int], scale: float) -> list[int]:
    """``values`` with independent discrete Laplace noise of ``scale``, sampled by OpenDP."""
    if not values:
        return []
    return [int(v) for v in _measurement(scale)(list(values))]


# -- the budget ledger ---------------------------------------------------------------------------


class BudgetLedger(Protocol):
    """Durable record of the epsilon spent per UTC day and of each window released.

    Kept behind this small interface so it can live in any durable store
    (its own SQLite file today; the node's state database later).
    """

    def spent(self, day: str) -> float: ...

    def released(self, window: str) -> dict[str, Any] | None: ...

    def spend(self, day: str, epsilon: float, limit: float, window: str, doc: dict[str, Any]) -> bool:
        """Record ``doc`` as ``window``'s release and spend ``epsilon`` on ``day``, in one step,
        only if the day's total stays within ``limit``; False (and nothing recorded) otherwise."""
        ...

    def prune(self, before_day: str) -> int: ...


class SqliteBudgetLedger:
    """The ledger in a SQLite file (WAL, synchronous=FULL): a spend is on disk before it is released."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # 0600 before SQLite opens it (its -wal and -shm files take the same mode): what the node released when.
        private_sqlite_file(str(self.path))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS privacy_ledger (window TEXT PRIMARY KEY, day TEXT NOT NULL, "
            "micro_epsilon INTEGER NOT NULL, released_at REAL NOT NULL, doc TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS ix_privacy_ledger_day ON privacy_ledger (day)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def spent(self, day: str) -> float:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(micro_epsilon), 0) FROM privacy_ledger WHERE day = ?",
                                   (day,)).fetchone()
        return int(row[0]) / _MICRO

    def released(self, window: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM privacy_ledger WHERE window = ?", (window,)).fetchone()
        if row is None:
            return None
        doc: dict[str, Any] = json.loads(row[0])
        return doc

    def spend(self, day: str, epsilon: float, limit: float, window: str, doc: dict[str, Any]) -> bool:
        micro, cap = round(epsilon * _MICRO), round(limit * _MICRO)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                total = int(self._db.execute("SELECT COALESCE(SUM(micro_epsilon), 0) FROM privacy_ledger "
                                             "WHERE day = ?", (day,)).fetchone()[0])
                seen = self._db.execute("SELECT 1 FROM privacy_ledger WHERE window = ?", (window,)).fetchone()
                if seen is not None or total + micro > cap:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute("INSERT INTO privacy_ledger VALUES (?, ?, ?, ?, ?)",
                                 (window, day, micro, time.time(), json.dumps(doc, sort_keys=True)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def prune(self, before_day: str) -> int:
        """Forget days before ``before_day`` (their budget can no longer be spent)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM privacy_ledger WHERE day < ?", (before_day,))
        return cur.rowcount


class MemoryBudgetLedger:
    """An in-memory ledger, for simulations (not durable)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self._days: dict[str, int] = defaultdict(int)

    def spent(self, day: str) -> float:
        return self._days.get(day, 0) / _MICRO

    def released(self, window: str) -> dict[str, Any] | None:
        row = self._rows.get(window)
        return None if row is None else row[2]

    def spend(self, day: str, epsilon: float, limit: float, window: str, doc: dict[str, Any]) -> bool:
        micro = round(epsilon * _MICRO)
        if window in self._rows or self._days.get(day, 0) + micro > round(limit * _MICRO):
            return False
        self._rows[window] = (day, micro, doc)
        self._days[day] += micro
        return True

    def prune(self, before_day: str) -> int:
        old = [w for w, (d, _, _) in self._rows.items() if d < before_day]
        for w in old:
            day, micro, _ = self._rows.pop(w)
            self._days[day] -= micro
        return len(old)


# -- releasing -----------------------------------------------------------------------------------


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def window_id(start: int, seconds: int) -> str:
    return f"{start}/{seconds}"


class Releaser:
    """Turns closed windows into releases, spending the node's budget through its ledger."""

    def __init__(self, config: PrivacyConfig, ledger: BudgetLedger, noise: NoiseSource = opendp_laplace) -> None:
        self.config = config
        self.ledger = ledger
        self._noise = noise
        if config.mechanism != "none":
            cost = opendp_epsilon(config.sensitivity, config.scale)
            if cost > config.epsilon_per_window * (1 + 1e-9):
                raise ConfigError(f"privacy: OpenDP says a release costs epsilon {cost}, "
                                  f"more than epsilon_per_window {config.epsilon_per_window}")

    def release(self, counts: WindowCounts, keys: Iterable[Key]) -> Release:
        """The release of a closed window over the declared ``keys``."""
        totals, _ = counts.totals(keys)
        return self.release_totals(counts.start, counts.seconds, totals)

    def release_totals(self, start: int, seconds: int, totals: dict[Key, dict[str, int]]) -> Release:
        """The release of already bounded ``totals`` (every count at most L_kind per user)."""
        cfg = self.config
        if seconds != cfg.window_seconds or start % seconds:
            raise ConfigError(f"window {start}/{seconds}: expected a window of {cfg.window_seconds} s")
        window, day = window_id(start, seconds), utc_day(start)
        before = self.ledger.released(window)
        if before is not None:
            return parse_release(before)
        epsilon = 0.0 if cfg.mechanism == "none" else cfg.epsilon_per_window
        if round((self.ledger.spent(day) + epsilon) * _MICRO) > round(cfg.daily_budget * _MICRO):
            return self._exhausted(start, seconds, day)
        keys = sorted(totals)
        kinds = cfg.kinds
        flat = [int(totals[k].get(kind, 0)) for k in keys for kind in kinds]
        if any(not 0 <= v <= _MAX_I64 for v in flat):
            raise ConfigError("privacy: a count is negative or too large to release")
        noisy = flat if cfg.mechanism == "none" else self._noise(flat, cfg.scale)
        spent = self.ledger.spent(day)
        counts = {k: dict(zip(kinds, noisy[i * len(kinds):(i + 1) * len(kinds)], strict=True))
                  for i, k in enumerate(keys)}
        rel = Release(start, seconds, "released", cfg.noise(), dict(cfg.bounds), day, cfg.daily_budget,
                      round(spent + epsilon, 6), counts)
        if self.ledger.spend(day, epsilon, cfg.daily_budget, window, rel.to_doc()):
            return rel
        # Over budget (or released concurrently): no figure leaves; the noisy vector is discarded unseen.
        again = self.ledger.released(window)
        if again is not None:
            return parse_release(again)
        return self._exhausted(start, seconds, day)

    def _exhausted(self, start: int, seconds: int, day: str) -> Release:
        cfg = self.config
        return Release(start, seconds, "budget_exhausted", cfg.noise(), dict(cfg.bounds), day, cfg.daily_budget,
                       self.ledger.spent(day), {})


__all__ = [
    "BudgetLedger", "MemoryBudgetLedger", "NoiseSource", "PrivacyConfig", "Releaser", "SqliteBudgetLedger",
    "WindowCounts", "opendp_epsilon", "opendp_laplace", "utc_day", "window_id",
]
