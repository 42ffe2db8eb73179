"""Retention: the service forgets what the nodes sent once it is older than the configured age.

What goes, by the time the service received it (``ServiceConfig``):

* ``retention_reports_s``: the raw reports (status and metrics, ``reports``)
  and the failure history they filled (``node_failures``);
* ``retention_releases_s``: the nodes' private releases (``metric_releases``
  and their ``metric_counts``), which the A/B reports and gates read;
* ``retention_ops_s``: the operational windows (``ops_windows``), which
  alerts, ``admin metrics`` and ``/metrics`` read.

Alerts are not stored: they are judged from the current state whenever they
are asked for, so a closed alert leaves nothing behind to keep.

Every maintenance round calls :func:`prune_due`, which runs at most once per
``retention_interval_s`` over all workers and replicas of one database: the
run is claimed by moving a counter row's timestamp under its row lock (the
database's write lock on SQLite). Deletes go in batches of short
transactions, so check-ins are not held up, and are idempotent (by age), so
an interrupted run is finished by the next one. ``edgerec admin prune`` runs
:func:`prune` once, now.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import InstrumentedAttribute

from edgerec.sync.service.store.models import Counter, MetricCount, MetricRelease, NodeFailure, OpsWindowRow, Report

from .config import ServiceConfig
from .reports import KINDS
from .store import Database

log = logging.getLogger("edgerec.sync")
BATCH = 1000
_CLAIM = "retention"  # the counter row whose value is the last run's UNIX time


@dataclass(frozen=True)
class Pruned:
    """Rows removed by one retention run, per table."""

    reports: int = 0
    node_failures: int = 0
    metric_releases: int = 0
    ops_windows: int = 0

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


def _batched(db: Database, column: InstrumentedAttribute[float], before: float,
             where: ColumnElement[bool] | None = None, release_counts: bool = False) -> int:
    """Delete the rows of ``column``'s table with ``column < before``, oldest first, BATCH at a time."""
    table = column.class_
    n = 0
    while True:
        with db.write() as session:
            q = select(column).where(column < before)
            if where is not None:
                q = q.where(where)
            edge = session.execute(q.order_by(column).offset(BATCH - 1).limit(1)).scalar_one_or_none()
            cut = column < before if edge is None else column <= edge
            scope = cut if where is None else cut & where
            if release_counts:  # counts first: no cascade is relied on (SQLite needs foreign_keys on for one)
                session.execute(delete(MetricCount).where(
                    MetricCount.release_id.in_(select(MetricRelease.id).where(scope))))
            n += session.connection().execute(delete(table).where(scope)).rowcount
        if edge is None:
            return n


def prune_reports(db: Database, before: float) -> tuple[int, int]:
    """Forget reports (each kind on its index) and reported failures received before ``before``."""
    reports = sum(_batched(db, Report.received, before, Report.kind == kind) for kind in KINDS)
    return reports, _batched(db, NodeFailure.received, before)


def prune_releases(db: Database, before: float) -> int:
    """Forget the private releases (and their counts) received before ``before``."""
    return _batched(db, MetricRelease.received, before, release_counts=True)


def prune_ops(db: Database, before: float) -> int:
    """Forget the operational windows received before ``before``."""
    return _batched(db, OpsWindowRow.received, before)


def prune(db: Database, config: ServiceConfig, now: float | None = None) -> Pruned:
    """One retention run, now (whatever the interval says)."""
    now = time.time() if now is None else now
    reports, failures = prune_reports(db, now - config.retention_reports_s)
    out = Pruned(reports, failures, prune_releases(db, now - config.retention_releases_s),
                 prune_ops(db, now - config.retention_ops_s))
    if any(out.to_doc().values()):
        log.info("retention: removed %s", ", ".join(f"{v} {k}" for k, v in out.to_doc().items() if v))
    return out


def prune_due(db: Database, config: ServiceConfig, now: float | None = None) -> Pruned | None:
    """A retention run if none ran within ``retention_interval_s`` on this database (any replica); else None."""
    now = time.time() if now is None else now
    with db.write() as session:
        session.execute(db.insert(Counter).on_conflict_do_nothing(), {"name": _CLAIM, "value": 0})
        last = db.lock(session, _CLAIM)
        if now - last < config.retention_interval_s:
            return None
        session.execute(update(Counter).where(Counter.name == _CLAIM).values(value=int(now)))
    return prune(db, config, now)


__all__ = ["Pruned", "prune", "prune_due", "prune_ops", "prune_releases", "prune_reports"]
