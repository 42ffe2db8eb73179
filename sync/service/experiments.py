"""Centrally managed A/B experiments: create, list, stop.

An experiment splits the users of one model between versions (variants)
with relative weights; the first variant is the control the A/B report
compares against. The salt makes the sticky per-user assignment independent
between experiments (the edge server hashes salt and user id).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from edgerec.sdk.manifest import NAME_RE
from edgerec.sync.protocol.assignments import Extra
from edgerec.sync.protocol.errors import BadRequestError, ConflictError, NotFoundError
from edgerec.sync.service.store.models import ChannelTarget, ExperimentRow, Node, PackageVersion

MAX_VARIANTS = 16


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise BadRequestError(f"{what}: expected a lower-case name")
    return value


def check_variants(raw: Any) -> list[dict[str, Any]]:
    """Variants as ``[{"name", "version", "weight"}]``: 2 to 16, unique names, versions >= 0, weights > 0."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIANTS:
        raise BadRequestError(f"variants: expected a list of 2 to {MAX_VARIANTS}")
    out = []
    for i, v in enumerate(raw):
        if not isinstance(v, dict) or set(v) - {"name", "version", "weight"}:
            raise BadRequestError(f"variants[{i}]: expected an object of name, version, weight")
        version, weight = v.get("version"), v.get("weight", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise BadRequestError(f"variants[{i}].version: expected an integer >= 0")
        # Bounded both ways: a denormal weight made the split (and the report's shares) divide by ~0.
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 1e-6 <= weight <= 1e6:
            raise BadRequestError(f"variants[{i}].weight: expected a number from 0.000001 to 1000000")
        out.append({"name": _name(v.get("name", f"v{version}"), f"variants[{i}].name"), "version": version,
                    "weight": float(weight)})
    if len({v["name"] for v in out}) != len(out):
        raise BadRequestError("variants: names must be unique")
    return out


def _doc(row: ExperimentRow) -> dict[str, Any]:
    return {"name": row.name, "model": row.model, "variants": row.variants, "control": row.variants[0]["name"],
            "tags": row.tags, "salt": row.salt, "state": row.state, "created": row.created, "stopped": row.stopped}


def create_experiment(session: Session, doc: dict[str, Any]) -> dict[str, Any]:
    name, model = _name(doc.get("name"), "name"), _name(doc.get("model"), "model")
    variants = check_variants(doc.get("variants"))
    tags = doc.get("tags") or []
    if not isinstance(tags, list):
        raise BadRequestError("tags: expected a list of names")
    tags = [_name(t, "tags") for t in tags]
    salt = doc.get("salt") or secrets.token_hex(8)
    if not isinstance(salt, str) or len(salt) > 128:
        raise BadRequestError("salt: expected a string of at most 128 characters")
    if session.get(ExperimentRow, name) is not None:
        raise ConflictError(f"experiment {name} exists already (stop it and pick a new name)")
    row = ExperimentRow(name=name, model=model, variants=variants, tags=tags, salt=salt, state="running",
                        created=time.time(), stopped=None)
    session.add(row)
    session.flush()
    return _doc(row)


def list_experiments(session: Session) -> list[dict[str, Any]]:
    return [_doc(r) for r in session.execute(select(ExperimentRow).order_by(ExperimentRow.created)).scalars()]


def get_experiment(session: Session, name: str) -> dict[str, Any] | None:
    row = session.get(ExperimentRow, name)
    return None if row is None else _doc(row)


def stop_experiment(session: Session, name: str) -> dict[str, Any]:
    row = session.get(ExperimentRow, name)
    if row is None:
        raise NotFoundError(f"no experiment {name!r}")
    if row.state != "stopped":
        row.state, row.stopped = "stopped", time.time()
    return _doc(row)


# -- delivery to nodes (inside their signed assignments) -------------------------------------------


# How many experiments run, as a column of the check-in's first read: when none does (the usual case), the
# check-in makes no query of its own for them.
RUNNING_COLUMN = (
    select(func.count()).select_from(ExperimentRow).where(ExperimentRow.state == "running")
    .scalar_subquery().label("running_experiments")
)


def _running_for(session: Session | Connection, node_id: str) -> list[Any]:
    """Running experiments whose tags the node carries (all of them; no tags: every node).

    Column selects, not entities: the check-in runs on a bare connection (one query when none runs)."""
    rows = list(session.execute(
        select(ExperimentRow.name, ExperimentRow.model, ExperimentRow.variants, ExperimentRow.tags,
               ExperimentRow.salt).where(ExperimentRow.state == "running")).all())
    if not rows:
        return []
    node_tags = session.execute(select(Node.tags).where(Node.id == node_id)).scalar_one_or_none()
    tags = set(node_tags or ())
    return [r for r in rows if set(r.tags) <= tags]


def _targets(session: Session | Connection, model: str, versions: set[int], channel: str) -> dict[int, str]:
    """A TUF target per published version (the assignment's channel preferred)."""
    rows = session.execute(select(PackageVersion.version, ChannelTarget.channel, ChannelTarget.target_path)
                           .join(ChannelTarget, ChannelTarget.package_id == PackageVersion.id)
                           .where(PackageVersion.name == model, PackageVersion.version.in_(versions))).all()
    out: dict[int, str] = {}
    for version, _ch, path in sorted(rows, key=lambda r: r[1] != channel, reverse=True):  # preferred last: wins
        out[int(version)] = str(path)
    return out


def node_experiments(session: Session | Connection, node_id: str, model: str, version: int,
                     channel: str) -> tuple[list[dict[str, Any]], list[Extra]]:
    """What a node's assignment of ``model`` carries: the experiments it runs and the other versions they need.

    An experiment with a variant whose version is not published is left out (the node could not run it)."""
    rows = [r for r in _running_for(session, node_id) if r.model == model]
    if not rows:
        return [], []
    wanted = {int(v["version"]) for r in rows for v in r.variants}
    targets = _targets(session, model, wanted, channel)
    docs, extras = [], set()
    for r in sorted(rows, key=lambda r: r.name):
        versions = {int(v["version"]) for v in r.variants}
        if not versions <= set(targets):
            continue
        docs.append({"name": r.name, "salt": r.salt, "variants": [
            {"name": v["name"], "version": int(v["version"]), "weight": float(v["weight"])} for v in r.variants]})
        extras |= versions - {version}
    return docs, [Extra(v, targets[v]) for v in sorted(extras)]


def experiment_versions(session: Session, node_id: str, model: str) -> set[int]:
    """Versions of ``model`` the node's running experiments need (their key envelopes may be fetched)."""
    return {int(v["version"]) for r in _running_for(session, node_id) if r.model == model for v in r.variants}


__all__ = ["check_variants", "create_experiment", "experiment_versions", "get_experiment", "list_experiments",
           "node_experiments", "stop_experiment"]
