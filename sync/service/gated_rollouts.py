"""Rollouts gated on outcomes, run by the service: each phase advances only when its gates pass.

``start_gated`` rolls ``version`` out to the first phase's share against the
version now rolled out (the base). The service's maintenance loop calls
``step_gated`` which, for each running gated rollout, sums the privatised
releases of windows that started after the phase began (new version =
canary, base version = control; released cells only, k-node threshold) and
the canary nodes' operational windows, and checks the gates with the
always-valid test of :mod:`.gates`:

* a gate fails: the rollout **halts** and every node goes back to the base
  version (a signed rollback), saying why;
* all gates pass: the next phase starts (its windows counted afresh); the
  last phase completes the rollout;
* ``max_windows`` windows without a decision: the rollout is **held** where it
  is, for the operator.

False halt and false advance are each at most ``alpha`` over the whole
rollout (``alpha`` split over the gated phases); rho is chosen for the
gate's target information (see :class:`.gates.OutcomeGate`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.errors import BadRequestError, ConfigError
from edgerec.sync.service.store.models import Assignment, GatedRollout

from .fleet_metrics import MetricsPolicy, fleet_windows, load_ops
from .gates import OutcomeGate, figures_from_cells, parse_gate
from .rollout import Rollouts

RUNNING = "running"


def _gate(row: GatedRollout) -> OutcomeGate:
    return OutcomeGate(tuple(parse_gate(g) for g in row.gates), row.alpha, max(len(row.phases) - 1, 1))


def gated_doc(row: GatedRollout) -> dict[str, Any]:
    gate = _gate(row)
    seq = gate.sequence
    return {"id": row.id, "model": row.model, "version": row.version, "base_version": row.base_version,
            "channel": row.channel, "tags": row.tags, "phases": row.phases, "phase": row.phase,
            "percent": row.phases[row.phase], "gates": row.gates, "state": row.state, "reasons": row.reasons,
            "alpha": row.alpha, "alpha_per_phase": gate.alpha_phase, "rho": seq.rho,
            "false_halt_rate_at_most": row.alpha, "false_advance_rate_at_most": row.alpha,
            "max_windows": row.max_windows, "phase_started": row.phase_started, "updated": row.updated}


def start_gated(session: Session, rollouts: Rollouts, model: str, version: int, channel: str,
                phases: Sequence[float], gates: Sequence[str], tags: list[str], alpha: float = 0.05,
                max_windows: int = 24, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    if not 2 <= len(phases) <= 10 or any(not 0 < p <= 100 for p in phases) or list(phases) != sorted(set(phases)):
        raise BadRequestError("phases: expected 2 to 10 increasing percentages in (0, 100], e.g. 5,25,100")
    if not gates:
        raise BadRequestError("gates: expected at least one gate, e.g. ctr>=-1%")
    try:
        for g in gates:
            parse_gate(g)
    except ConfigError as exc:
        raise BadRequestError(str(exc)) from exc
    if not 0 < alpha < 1:
        raise BadRequestError("alpha: expected a number in (0, 1)")
    if not 1 <= max_windows <= 1000:
        raise BadRequestError("max_windows: expected an integer in [1, 1000]")
    cur = rollouts.current(session, model)
    if cur is None or cur.version == version:
        raise BadRequestError(f"version: a gated rollout compares {model} v{version} against the version now rolled "
                              "out; roll a base version out first")
    for old in session.execute(select(GatedRollout).where(GatedRollout.model == model,
                                                          GatedRollout.state == RUNNING)).scalars():
        old.state, old.updated = "superseded", now
    rollouts.start(session, model, version, channel, float(phases[0]), tags)
    row = GatedRollout(model=model, version=version, base_version=cur.version, channel=channel, tags=sorted(tags),
                       phases=[float(p) for p in phases], gates=list(gates), alpha=alpha, max_windows=max_windows,
                       phase=0, phase_started=now, state=RUNNING, reasons=[], created=now, updated=now)
    session.add(row)
    session.flush()
    return gated_doc(row)


def list_gated(session: Session) -> list[dict[str, Any]]:
    return [gated_doc(r) for r in session.execute(select(GatedRollout).order_by(GatedRollout.id)).scalars()]


def step_gated(session: Session, rollouts: Rollouts, policy: MetricsPolicy, now: float | None = None) -> int:
    """Check every running gated rollout once; returns how many changed state or phase."""
    now = time.time() if now is None else now
    changed = 0
    rows = session.execute(select(GatedRollout).where(GatedRollout.state == RUNNING)).scalars().all()
    for row in rows:
        cells = [c for c in fleet_windows(session, policy, model=row.model, since=row.phase_started).cells
                 if c.window_start + c.window_seconds <= now]
        windows = {(c.window_start, c.window_seconds) for c in cells if c.key.version == row.version}
        canary = set(session.execute(select(Assignment.node_id).where(
            Assignment.model == row.model, Assignment.version == row.version)).scalars())
        ops = [(n, w) for n, w in load_ops(session, since=row.phase_started)
               if w.window_start + w.window_seconds <= now]
        checks = _gate(row).check(figures_from_cells(cells, ops, canary, row.model, row.version, row.base_version))
        label = f"phase {row.phase + 1} ({row.phases[row.phase]:g}%)"
        row.reasons = [f"{label}: " + c.reason() for c in checks]
        if any(c.state == "fail" for c in checks):
            rollouts.rollback(session, row.model, row.base_version, None)
            row.state = "halted"
            row.reasons = [f"{label}: halted, canaries rolled back to v{row.base_version}: " + c.reason()
                           for c in checks if c.state == "fail"]
        elif all(c.state == "pass" for c in checks):
            row.phase += 1
            rollouts.start(session, row.model, row.version, row.channel, row.phases[row.phase], list(row.tags))
            row.phase_started = now
            if row.phase == len(row.phases) - 1:
                row.state = "completed"
        elif len(windows) >= row.max_windows:
            row.state = "held"
            row.reasons = [f"{label}: held, undecided after {len(windows)} windows: " + c.reason() for c in checks]
        else:
            continue
        row.updated = now
        changed += 1
    return changed


__all__ = ["gated_doc", "list_gated", "start_gated", "step_gated"]
