"""The nodes' private releases and operational windows in the service's database, and reports over them.

A node's metrics report (``kind: metrics``) may carry ``releases`` (business
releases, :mod:`edgerec.sync.protocol.releases`) and ``ops`` (operational
windows). Each is checked, and stored once per node and window; a release
whose window has not ended yet is refused, and so is a noise-free release
unless the service was started to accept them (tests only).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.errors import BadRequestError
from edgerec.sync.protocol.releases import Key, Noise, OpsWindow, Release, parse_ops, parse_release
from edgerec.sync.service.store.models import MetricCount, MetricRelease, OpsWindowRow

from .aggregate import DEFAULT_K, ABReport, FleetWindows, Row, ab_report, sum_rows
from .config import ServiceConfig
from .store import Database

_COLUMNS = {"impression": "impressions", "click": "clicks", "conversion": "conversions"}
MAX_WINDOWS_PER_REPORT = 64
# latest_released reads at most this many grouped rows per key it may return.
_LATEST_ROWS_PER_KEY = 8


@dataclass(frozen=True)
class MetricsPolicy:
    """How the service treats releases: the k-node threshold, the test level, and noise-free releases."""

    k: int = DEFAULT_K
    alpha: float = 0.05
    accept_noise_free: bool = False
    clock_skew_s: float = 300.0


@dataclass(frozen=True)
class Stored:
    releases: int = 0
    ops: int = 0
    duplicates: int = 0


def store_metrics(db: Database, session: Session, node_id: str, doc: dict[str, Any], policy: MetricsPolicy,
                  now: float | None = None) -> Stored:
    """Store the ``releases`` and ``ops`` a report carries (all checked before any is written)."""
    now = time.time() if now is None else now
    raw_rel, raw_ops = doc.get("releases", []), doc.get("ops", [])
    for what, raw in (("releases", raw_rel), ("ops", raw_ops)):
        if not isinstance(raw, list) or len(raw) > MAX_WINDOWS_PER_REPORT:
            raise BadRequestError(f"{what}: expected a list of at most {MAX_WINDOWS_PER_REPORT}")
    releases = []
    for i, r in enumerate(raw_rel):
        try:
            rel = parse_release(r)
        except BadRequestError as exc:
            raise BadRequestError(f"releases[{i}].{exc}") from exc
        if rel.noise.mechanism == "none" and not policy.accept_noise_free:
            raise BadRequestError(f"releases[{i}].noise.mechanism: a noise-free (test only) release is refused; "
                                  "this service was not started to accept them")
        if rel.window_start + rel.window_seconds > now + policy.clock_skew_s:
            raise BadRequestError(f"releases[{i}].window: the window has not ended yet")
        releases.append(rel)
    ops = []
    for i, o in enumerate(raw_ops):
        try:
            ops.append(parse_ops(o))
        except BadRequestError as exc:
            raise BadRequestError(f"ops[{i}].{exc}") from exc
    conn = session.connection()
    stored = dup = 0
    for rel in releases:
        row = conn.execute(db.insert(MetricRelease).on_conflict_do_nothing().returning(MetricRelease.id), {
            "node_id": node_id, "window_start": rel.window_start, "window_seconds": rel.window_seconds,
            "status": rel.status, "mechanism": rel.noise.mechanism, "epsilon": rel.noise.epsilon,
            "sensitivity": rel.noise.sensitivity, "noise_variance": rel.noise.variance, "bounds": dict(rel.bounds),
            "budget_day": rel.budget_day, "budget_limit": rel.budget_limit, "budget_spent": rel.budget_spent,
            "received": now}).first()
        if row is None:
            dup += 1
            continue
        stored += 1
        if rel.counts:
            conn.execute(db.insert(MetricCount), [
                {"release_id": row[0], "model": k.model, "version": k.version, "experiment": k.experiment,
                 "variant": k.variant, **{col: c.get(kind) for kind, col in _COLUMNS.items()}}
                for k, c in rel.counts.items()])
    n_ops = 0
    for w in ops:
        row = conn.execute(db.insert(OpsWindowRow).on_conflict_do_nothing().returning(OpsWindowRow.node_id), {
            "node_id": node_id, "window_start": w.window_start, "window_seconds": w.window_seconds,
            "body": w.to_doc(), "received": now}).first()
        if row is None:
            dup += 1
        else:
            n_ops += 1
    return Stored(stored, n_ops, dup)


def load_releases(session: Session, experiment: str | None = None, model: str | None = None,
                  since: float = 0, until: float | None = None) -> list[tuple[str, Release]]:
    """Stored releases (with the counts matching ``experiment``/``model``) as (node, release) pairs."""
    q = select(MetricRelease).where(MetricRelease.window_start >= since)
    cq = select(MetricCount).join(MetricRelease, MetricCount.release_id == MetricRelease.id) \
        .where(MetricRelease.window_start >= since)
    if until is not None:
        q = q.where(MetricRelease.window_start < until)
        cq = cq.where(MetricRelease.window_start < until)
    heads = {r.id: r for r in session.execute(q).scalars()}
    if experiment is not None:
        cq = cq.where(MetricCount.experiment == experiment)
    if model is not None:
        cq = cq.where(MetricCount.model == model)
    counts: dict[int, dict[Key, dict[str, int]]] = defaultdict(dict)
    for c in session.execute(cq).scalars():
        if c.release_id in heads:
            counts[c.release_id][Key(c.model, c.version, c.experiment, c.variant)] = {
                kind: v for kind, col in _COLUMNS.items() if (v := getattr(c, col)) is not None}
    out = []
    for rid, h in sorted(heads.items(), key=lambda kv: (kv[1].window_start, kv[1].node_id)):
        noise = Noise(h.mechanism, h.epsilon, h.sensitivity, h.sensitivity / h.epsilon if h.epsilon else 0.0,
                      h.noise_variance)
        out.append((h.node_id, Release(h.window_start, h.window_seconds, h.status, noise, h.bounds, h.budget_day,
                                       h.budget_limit, h.budget_spent, counts.get(rid, {}))))
    return out


def fleet_windows(session: Session, policy: MetricsPolicy, experiment: str | None = None,
                  model: str | None = None, since: float = 0) -> FleetWindows:
    """Fleet totals per window and key from the database (one flat query, summed with the k threshold)."""
    R, C = MetricRelease, MetricCount  # noqa: N806 (table aliases)
    q = (select(R.node_id, R.window_start, R.window_seconds, C.model, C.version, C.experiment, C.variant,
                C.impressions, C.clicks, C.conversions, R.noise_variance, R.epsilon)
         .join(R, C.release_id == R.id).where(R.window_start >= since))
    if experiment is not None:
        q = q.where(C.experiment == experiment)
    if model is not None:
        q = q.where(C.model == model)
    rows: list[Row] = []
    for node, start, seconds, m, v, e, var, imp, clk, conv, nvar, eps in session.execute(q):
        counts = {kind: n for kind, n in (("impression", imp), ("click", clk), ("conversion", conv))
                  if n is not None}
        rows.append((node, start, seconds, Key(m, v, e, var), counts, nvar, eps))
    exhausted: dict[tuple[int, int], set[str]] = defaultdict(set)
    for node, start, seconds in session.execute(
            select(R.node_id, R.window_start, R.window_seconds)
            .where(R.window_start >= since, R.status != "released")):
        exhausted[(start, seconds)].add(node)
    return sum_rows(rows, dict(exhausted), policy.k)


@dataclass(frozen=True)
class LatestCell:
    """A key's latest released window: fleet totals over the >= k nodes that contributed."""

    key: Key
    window_start: int
    window_seconds: int
    nodes: int
    counts: dict[str, int]
    noise_variance: float


def latest_released(session: Session, k: int, since: float, limit: int) -> tuple[list[LatestCell], int]:
    """Per key, its latest window released under the k-node threshold (windows starting at ``since`` or
    later); the ``limit`` keys with the newest windows, and how many keys were left out.

    The database sums (one GROUP BY over the windows since ``since``, only cells with >= k nodes), so
    the rows read here are windows x keys, not nodes; a withheld cell never leaves the query.
    """
    R, C = MetricRelease, MetricCount  # noqa: N806 (table aliases)
    nodes = func.count()
    group = (C.model, C.version, C.experiment, C.variant, R.window_start, R.window_seconds)
    q = (select(*group, nodes, func.sum(C.impressions), func.sum(C.clicks), func.sum(C.conversions),
                func.sum(R.noise_variance))
         .join(R, C.release_id == R.id).where(R.window_start >= since, R.status == "released")
         .group_by(*group).having(nodes >= k)
         .order_by(R.window_start.desc(), C.model, C.version, C.experiment, C.variant)
         .limit(_LATEST_ROWS_PER_KEY * limit))  # newest first: a key's first row is its latest window
    latest: dict[Key, LatestCell] = {}
    for m, v, e, var, start, seconds, n, imp, clk, conv, nvar in session.execute(q):
        key = Key(m, int(v), e, var)
        if key in latest:
            continue
        counts = {kind: int(x) for kind, x in (("impression", imp), ("click", clk), ("conversion", conv))
                  if x is not None}  # SUM of BIGINT is NUMERIC (Decimal) on PostgreSQL
        latest[key] = LatestCell(key, int(start), int(seconds), int(n), counts, float(nvar or 0.0))
    ordered = sorted(latest.values(), key=lambda c: (-c.window_start, c.key))
    return ordered[:limit], max(0, len(ordered) - limit)


def experiment_report(session: Session, name: str, policy: MetricsPolicy, variants: Sequence[str] | None = None,
                      control: str | None = None, since: float = 0) -> ABReport:
    """The A/B report of experiment ``name`` over the stored releases."""
    return ab_report(fleet_windows(session, policy, experiment=name, since=since), name, variants, control,
                     policy.alpha)


def load_ops(session: Session, since: float = 0) -> list[tuple[str, OpsWindow]]:
    rows = session.execute(select(OpsWindowRow).where(OpsWindowRow.window_start >= since)
                           .order_by(OpsWindowRow.window_start, OpsWindowRow.node_id)).scalars()
    return [(r.node_id, parse_ops(r.body)) for r in rows]


def policy_of(config: ServiceConfig) -> MetricsPolicy:
    """The metrics policy the service was started with."""
    return MetricsPolicy(k=config.metrics_min_nodes, alpha=config.metrics_alpha,
                         accept_noise_free=config.metrics_accept_noise_free, clock_skew_s=config.clock_skew_s)


__all__ = ["LatestCell", "MetricsPolicy", "Stored", "experiment_report", "fleet_windows", "latest_released",
           "load_ops", "load_releases",
           "policy_of", "store_metrics"]
