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

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sdk.manifest import NAME_RE
from edgerec.sync.protocol.errors import BadRequestError, ConflictError, NotFoundError
from edgerec.sync.service.store.models import ExperimentRow

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


__all__ = ["check_variants", "create_experiment", "get_experiment", "list_experiments", "stop_experiment"]
