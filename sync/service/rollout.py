"""Staged rollouts: which nodes should run which version, and changes to it.

A rollout puts ``version`` of a model on ``percent`` of the (active) nodes
carrying all of ``tags``. Nodes are ordered by SHA-256 of model and node id,
so the choice is deterministic and the same nodes go first whatever the
percentage: growing a rollout from 10 to 50 % keeps the first 10 %. The share
is exact (rounded to one node) at the time of the rollout, and sticky: a node
once chosen stays chosen when more nodes enroll.

Desired versions are materialised per node in ``assignments`` with a fresh
``serial`` on every change; :mod:`.assignments` signs them for the node.
Each change also has the node's key envelopes for that version sealed (the
``sealer``): envelopes follow assignments, and nothing else seals them.
``pause`` holds back nodes that have not installed the version yet;
``rollback`` sends every node to an older version as a signed rollback.
A rollout with a failure threshold (``max_failures`` nodes, or
``max_failure_percent`` of the nodes it sent the version to) pauses itself
once more nodes than that report the version bad (failed its warm-up or its
health window and rolled back), and says so in ``paused_reason``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.errors import BadRequestError, ConflictError, NotFoundError
from edgerec.sync.service.store.models import (
    Assignment,
    ChannelTarget,
    Node,
    NodeFailure,
    NodeModel,
    PackageVersion,
    Rollout,
)

from .store import Database

ACTIVE, PAUSED, SUPERSEDED, ROLLED_BACK = "active", "paused", "superseded", "rolled_back"
# Seals a node's envelopes for a model version assigned to it; returns how many were sealed.
Sealer = Callable[[Session, str, str, int], int]
_SEALED = "edgerec_envelopes_sealed"  # per-transaction count, in Session.info


# -- the pure part ---------------------------------------------------------------


def bucket(model: str, node_id: str) -> bytes:
    """A node's place in a model's rollout order."""
    return hashlib.sha256(f"{model}\0{node_id}".encode()).digest()


def wanted(percent: float, eligible: int) -> int:
    """How many of ``eligible`` nodes ``percent`` means (half rounds up)."""
    return min(eligible, math.floor(percent / 100 * eligible + 0.5))


def choose(model: str, eligible: Sequence[str], already: Iterable[str], percent: float) -> set[str]:
    """The nodes that should run the rollout's version: those already on it, topped up in order."""
    pool = set(eligible)
    chosen = {n for n in already if n in pool}
    want = wanted(percent, len(pool))
    for node in sorted(pool - chosen, key=lambda n: bucket(model, n)):
        if len(chosen) >= want:
            break
        chosen.add(node)
    return chosen


def matches(node_tags: Iterable[str], rollout_tags: Iterable[str]) -> bool:
    return set(rollout_tags) <= set(node_tags)


# -- the database part -------------------------------------------------------------


@dataclass(frozen=True)
class RolloutSummary:
    id: int
    model: str
    version: int
    channel: str
    percent: float
    tags: list[str]
    state: str
    rollback: bool
    changed: int
    envelopes: int = 0  # node envelopes sealed by this change
    max_failures: int | None = None
    max_failure_percent: float | None = None
    paused_reason: str | None = None

    @classmethod
    def of(cls, r: Rollout, changed: int, session: Session | None = None) -> RolloutSummary:
        sealed = int(session.info.get(_SEALED, 0)) if session is not None else 0
        return cls(r.id, r.model, r.version, r.channel, r.percent, list(r.tags), r.state, r.rollback, changed,
                   sealed, r.max_failures, r.max_failure_percent, r.paused_reason)


class Rollouts:
    """Rollout operations; each runs inside the caller's write transaction."""

    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self.db = db
        self.sealer = sealer

    def _lock(self, session: Session) -> None:
        # One writer of assignments at a time across processes (PostgreSQL row lock).
        self.db.lock(session, "serial")

    def current(self, session: Session, model: str) -> Rollout | None:
        return session.execute(
            select(Rollout)
            .where(Rollout.model == model, Rollout.state.in_((ACTIVE, PAUSED)))
            .order_by(Rollout.id.desc())
            .limit(1)
        ).scalar_one_or_none()

    def start(
        self, session: Session, model: str, version: int, channel: str, percent: float, tags: list[str],
        max_failures: int | None = None, max_failure_percent: float | None = None,
    ) -> RolloutSummary:
        """Roll ``version`` out to ``percent`` of the nodes with ``tags`` (or grow a rollout).

        Growing a rollout keeps its failure threshold unless new ones are given.
        """
        if not 0 < percent <= 100:
            raise BadRequestError("percent: must be > 0 and <= 100")
        if max_failures is not None and max_failures < 0:
            raise BadRequestError("max_failures: must be >= 0")
        if max_failure_percent is not None and not 0 <= max_failure_percent < 100:
            raise BadRequestError("max_failure_percent: must be >= 0 and < 100")
        self._lock(session)
        self._published(session, model, version, channel)
        now = time.time()
        cur = self.current(session, model)
        if cur is not None and (cur.version, cur.channel, sorted(cur.tags)) == (version, channel, sorted(tags)):
            if cur.state == PAUSED:
                raise ConflictError(f"{model}: the rollout of version {version} is paused; resume it first")
            if percent < cur.percent:
                raise ConflictError(
                    f"{model}: version {version} is already at {cur.percent:g}%; a rollout only grows "
                    "(use pause or rollback)"
                )
            cur.percent, cur.updated = percent, now
            if max_failures is not None or max_failure_percent is not None:
                cur.max_failures, cur.max_failure_percent = max_failures, max_failure_percent
            rollout = cur
        else:
            if cur is not None:
                cur.state, cur.updated = SUPERSEDED, now
            rollout = Rollout(model=model, version=version, channel=channel, percent=percent, tags=sorted(tags),
                              state=ACTIVE, rollback=False, created=now, updated=now, max_failures=max_failures,
                              max_failure_percent=max_failure_percent)
            session.add(rollout)
            session.flush()
        return RolloutSummary.of(rollout, self._apply(session, rollout), session)

    def pause(self, session: Session, model: str, reason: str | None = None) -> RolloutSummary:
        """Stop a rollout: nodes that have not installed its version go back to what they had.

        "What they had" is the previous assignment, unless the node reported
        that version bad: then the version it runs.
        """
        self._lock(session)
        cur = self._require(session, model, ACTIVE)
        cur.state, cur.updated, cur.paused_reason = PAUSED, time.time(), reason or "paused by an admin"
        installed = self._installed(session, model)
        bad = {(n, v) for n, v in session.execute(
            select(NodeFailure.node_id, NodeFailure.version).where(NodeFailure.model == model,
                                                                   NodeFailure.bad.is_(True))
        )}
        changed = 0
        rows = session.execute(
            select(Assignment).where(Assignment.model == model, Assignment.rollout_id == cur.id)
        ).scalars()
        for a in list(rows):
            if a.version != cur.version or installed.get(a.node_id) == cur.version:
                continue
            back = a.previous_version
            if back is not None and (a.node_id, back) in bad:
                back = installed.get(a.node_id)
            if back is None:
                session.execute(delete(Assignment).where(Assignment.node_id == a.node_id, Assignment.model == model))
            else:
                self._set(session, a.node_id, model, back, a.channel, False, None)
            changed += 1
        return RolloutSummary.of(cur, changed, session)

    def resume(self, session: Session, model: str) -> RolloutSummary:
        self._lock(session)
        cur = self._require(session, model, PAUSED)
        cur.state, cur.updated, cur.paused_reason = ACTIVE, time.time(), None
        return RolloutSummary.of(cur, self._apply(session, cur), session)

    def check_failures(self, session: Session, model: str, version: int) -> RolloutSummary | None:
        """Pause the active rollout of ``model`` at ``version`` if its nodes' failures passed its threshold."""
        cur = self.current(session, model)
        if (cur is None or cur.state != ACTIVE or cur.rollback or cur.version != version
                or (cur.max_failures is None and cur.max_failure_percent is None)):
            return None
        failed = session.execute(
            select(func.count(func.distinct(NodeFailure.node_id)))
            .where(NodeFailure.model == model, NodeFailure.version == version, NodeFailure.bad.is_(True),
                   NodeFailure.received >= cur.created)
        ).scalar_one()
        sent = session.execute(
            select(func.count()).select_from(Assignment)
            .where(Assignment.model == model, Assignment.rollout_id == cur.id)
        ).scalar_one()
        sent = max(sent, failed)
        limits = []
        if cur.max_failures is not None and failed > cur.max_failures:
            limits.append(f"max {cur.max_failures}")
        if cur.max_failure_percent is not None and sent and failed * 100 / sent > cur.max_failure_percent:
            limits.append(f"{failed * 100 / sent:.0f}% > max {cur.max_failure_percent:g}%")
        if not limits:
            return None
        reason = (f"paused automatically: {failed} of {sent} node(s) failed v{version} and rolled back "
                  f"({', '.join(limits)})")
        return self.pause(session, model, reason)

    def rollback(self, session: Session, model: str, version: int, channel: str | None) -> RolloutSummary:
        """Send every node to ``version``; nodes above it get a signed rollback."""
        self._lock(session)
        channel = channel or self._channel_of(session, model, version)
        self._published(session, model, version, channel)
        now = time.time()
        for r in session.execute(select(Rollout).where(Rollout.model == model)).scalars():
            if r.version > version and r.state != ROLLED_BACK:
                r.state, r.updated = ROLLED_BACK, now
            elif r.state in (ACTIVE, PAUSED):
                r.state, r.updated = SUPERSEDED, now
        rollout = Rollout(model=model, version=version, channel=channel, percent=100.0, tags=[], state=ACTIVE,
                          rollback=True, created=now, updated=now)
        session.add(rollout)
        session.flush()
        desired = self._desired(session, model)
        installed = self._installed(session, model)
        changed = 0
        for node in self._nodes(session, []):
            have = desired.get(node.id)
            inst = installed.get(node.id)
            if have is not None and have.version == version and (inst is None or inst <= version):
                continue
            above = (have is not None and have.version > version) or (inst is not None and inst > version)
            self._set(session, node.id, model, version, channel, above, rollout.id)
            changed += 1
        return RolloutSummary.of(rollout, changed, session)

    def place_new_node(self, session: Session, node: Node) -> int:
        """Give a freshly enrolled node its share of every model's rollout (or the base version)."""
        self._lock(session)
        models = session.execute(
            select(Rollout.model).where(Rollout.state.in_((ACTIVE, PAUSED))).distinct()
        ).scalars()
        changed = 0
        for model in sorted(models):
            cur = self.current(session, model)
            if cur is None:
                continue
            if cur.state == ACTIVE and matches(node.tags, cur.tags):
                changed += self._apply(session, cur)
            elif session.get(Assignment, (node.id, model)) is None:
                base = self._base(session, cur, node.tags)
                if base is not None:
                    self._set(session, node.id, model, base.version, base.channel, False, base.id)
                    changed += 1
        return changed

    # -- helpers ---------------------------------------------------------------------

    def _apply(self, session: Session, r: Rollout) -> int:
        nodes = self._nodes(session, r.tags)
        desired = self._desired(session, r.model)
        installed = self._installed(session, r.model)

        def level(node_id: str) -> int:
            a, inst = desired.get(node_id), installed.get(node_id)
            return max(a.version if a else -1, inst if inst is not None else -1)

        # A rollout never moves a node down; that is what rollback is for.
        eligible = [n.id for n in nodes if level(n.id) <= r.version]
        already = [n for n in eligible if (a := desired.get(n)) is not None and a.version == r.version]
        chosen = choose(r.model, eligible, already, r.percent)
        changed = 0
        for node_id in sorted(chosen):
            a = desired.get(node_id)
            if a is None or a.version != r.version:
                self._set(session, node_id, r.model, r.version, r.channel, False, r.id)
                changed += 1
        by_id = {n.id: n for n in nodes}
        for node_id in eligible:
            if node_id in chosen or node_id in desired:
                continue
            base = self._base(session, r, by_id[node_id].tags)
            if base is not None:
                self._set(session, node_id, r.model, base.version, base.channel, False, base.id)
                changed += 1
        return changed

    def _base(self, session: Session, r: Rollout, node_tags: list[str]) -> Rollout | None:
        """The last full rollout before ``r`` that covers the node: what it runs if ``r`` skips it."""
        rows = session.execute(
            select(Rollout)
            .where(Rollout.model == r.model, Rollout.id < r.id, Rollout.percent >= 100,
                   Rollout.state != ROLLED_BACK, Rollout.version < r.version)
            .order_by(Rollout.id.desc())
        ).scalars()
        return next((b for b in rows if matches(node_tags, b.tags)), None)

    def _set(
        self, session: Session, node_id: str, model: str, version: int, channel: str, rollback: bool,
        rollout_id: int | None,
    ) -> None:
        serial = self.db.next_value(session, "serial")
        row = session.get(Assignment, (node_id, model))
        now = time.time()
        if row is None:
            session.add(Assignment(node_id=node_id, model=model, version=version, channel=channel, serial=serial,
                                   rollback=rollback, rollout_id=rollout_id, previous_version=None, updated=now))
        else:
            if row.version != version:
                row.previous_version = row.version
            row.version, row.channel, row.serial = version, channel, serial
            row.rollback, row.rollout_id, row.updated = rollback, rollout_id, now
        session.flush()
        if self.sealer is not None:
            session.info[_SEALED] = session.info.get(_SEALED, 0) + self.sealer(session, node_id, model, version)

    def _nodes(self, session: Session, tags: list[str]) -> list[Node]:
        nodes = session.execute(select(Node).where(Node.revoked_at.is_(None))).scalars()
        return [n for n in nodes if matches(n.tags, tags)]

    def _desired(self, session: Session, model: str) -> dict[str, Assignment]:
        rows = session.execute(select(Assignment).where(Assignment.model == model)).scalars()
        return {a.node_id: a for a in rows}

    def _installed(self, session: Session, model: str) -> dict[str, int | None]:
        rows = session.execute(
            select(NodeModel.node_id, NodeModel.installed_version).where(NodeModel.model == model)
        ).all()
        return {n: v for n, v in rows}

    def _require(self, session: Session, model: str, state: str) -> Rollout:
        cur = self.current(session, model)
        if cur is None:
            raise NotFoundError(f"{model}: no rollout in progress")
        if cur.state != state:
            raise ConflictError(f"{model}: the rollout of version {cur.version} is {cur.state}, not {state}")
        return cur

    def _published(self, session: Session, model: str, version: int, channel: str) -> None:
        found = session.execute(
            select(ChannelTarget.id)
            .join(PackageVersion, PackageVersion.id == ChannelTarget.package_id)
            .where(PackageVersion.name == model, PackageVersion.version == version,
                   ChannelTarget.channel == channel)
        ).first()
        if found is None:
            known = session.execute(select(PackageVersion.id).where(PackageVersion.name == model)).first()
            if known is None:
                raise NotFoundError(f"unknown model {model!r}")
            raise NotFoundError(f"{model} version {version} is not published on channel {channel!r}")

    def _channel_of(self, session: Session, model: str, version: int) -> str:
        rows = session.execute(
            select(Rollout.channel).where(Rollout.model == model, Rollout.version == version)
            .order_by(Rollout.id.desc())
        ).scalars().first()
        if rows is not None:
            return rows
        chan = session.execute(
            select(ChannelTarget.channel)
            .join(PackageVersion, PackageVersion.id == ChannelTarget.package_id)
            .where(PackageVersion.name == model, PackageVersion.version == version)
            .order_by(ChannelTarget.id)
        ).scalars().first()
        if chan is None:
            known = session.execute(select(PackageVersion.id).where(PackageVersion.name == model)).first()
            raise NotFoundError(f"unknown model {model!r}" if known is None
                                else f"{model} version {version} is not published")
        return chan
