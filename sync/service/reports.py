"""Node reports: status (current and served versions, health, failures) and metrics.

Reports are stored as sent, keyed by the node's report id, so a retried
report is accepted once and a duplicate answers "already have it". A status
report also updates the per-node, per-model view the admin commands show:
what the node's edge server serves, whether it is up, and the model's
failure while it is current (a report without one clears it); every failure
also lands once in the history (``node_failures``). A status that repeats
the last stored one (a heartbeat) only marks the node seen. The metrics
service reads the stored ``metrics`` reports.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from edgerec.sdk.errors import PackageError
from edgerec.sdk.manifest import canonical_json, check_name
from edgerec.sync.protocol.errors import BadRequestError
from edgerec.sync.service.store.models import MAX_BIGINT, Node, NodeFailure, NodeModel, Report

from .store import Database

KINDS = ("status", "metrics")
EDGE_STATES = ("up", "down", "none")
_MAX_MODELS = 256


@dataclass(frozen=True)
class ReportResult:
    report_id: str
    duplicate: bool
    stored: bool = True
    # (model, version) of failures first reported here that marked the version bad on the node
    new_bad: tuple[tuple[str, int], ...] = ()


def _short(value: Any, limit: int, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError("expected a string", field=what)
    return value[:limit]


def _version(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BIGINT:
        raise BadRequestError(f"expected an integer from 0 to {MAX_BIGINT}", field=what)
    return value


def _time(value: Any) -> float:
    """A reported time, or now for anything that is not a plausible UNIX time."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11:
        return float(value)
    return time.time()


def check_report(doc: Any) -> tuple[str, str]:
    """Validate the envelope of a report; returns (report id, kind)."""
    if not isinstance(doc, dict):
        raise BadRequestError("expected a JSON object", field="body")
    rid, kind = doc.get("report_id"), doc.get("kind")
    if not isinstance(rid, str) or not 8 <= len(rid) <= 64 or not rid.replace("-", "").isalnum():
        raise BadRequestError("expected 8 to 64 letters, digits or '-'", field="report_id")
    if kind not in KINDS:
        raise BadRequestError(f"expected one of {', '.join(KINDS)}", field="kind")
    models = doc.get("models", [])
    if not isinstance(models, list) or len(models) > _MAX_MODELS:
        raise BadRequestError(f"expected a list of at most {_MAX_MODELS}", field="models")
    return rid, kind


def status_digest(doc: dict[str, Any]) -> str:
    """What a status report says (not its id or time), hashed."""
    said = {k: doc.get(k) for k in ("health", "accelerator", "agent", "models", "edge", "interval_s")}
    return hashlib.sha256(canonical_json(said)).hexdigest()


def store_report(
    db: Database, session: Session | Connection, node_id: str, last_digest: str | None, doc: dict[str, Any]
) -> ReportResult:
    """Store a report once (the node's request nonce already marks it seen).

    A status report updates the per-model view; one that says the same as the
    last stored status (a heartbeat) is accepted but not stored again, so a
    fleet polling every few seconds does not grow the table with copies.
    Metrics reports are always stored (once per report id).
    """
    rid, kind = check_report(doc)
    rows = _status_rows(doc) if kind == "status" else []
    now = time.time()
    conn = session if isinstance(session, Connection) else session.connection()
    digest = status_digest(doc) if kind == "status" else None
    if digest is not None and digest == last_digest:
        return ReportResult(rid, False, stored=False)
    added = conn.execute(db.insert(Report).on_conflict_do_nothing().returning(Report.id),
                         {"node_id": node_id, "report_id": rid, "kind": kind, "body": doc, "received": now})
    if added.first() is None:
        return ReportResult(rid, True, stored=False)
    if kind != "status":
        return ReportResult(rid, False, stored=True)
    node: dict[str, Any] = {k: v for k, v in (("accelerator", _short(doc.get("accelerator"), 32, "accelerator")),
                                              ("health", _short(doc.get("health"), 32, "health")),
                                              ("agent", _short(doc.get("agent"), 64, "agent")),
                                              ("edge", _edge(doc.get("edge"))),
                                              ("poll_interval_s", _interval(doc.get("interval_s"))))
                            if v is not None}
    node["status_digest"] = digest
    conn.execute(update(Node).where(Node.id == node_id).values(**node))
    new_bad: list[tuple[str, int]] = []
    for name, values in rows:
        values["updated"] = now
        conn.execute(
            db.insert(NodeModel).values(node_id=node_id, model=name, **values)
            .on_conflict_do_update(index_elements=["node_id", "model"], set_=values)
        )
        if values["failure_reason"] is None:
            continue
        added = conn.execute(
            db.insert(NodeFailure).on_conflict_do_nothing().returning(NodeFailure.id),
            {"node_id": node_id, "model": name, "version": values["failure_version"],
             "reason": values["failure_reason"], "at": values["failure_at"], "bad": bool(values["failure_bad"]),
             "received": now},
        )
        if added.first() is not None and values["failure_bad"] and values["failure_version"] is not None:
            new_bad.append((name, values["failure_version"]))
    return ReportResult(rid, False, stored=True, new_bad=tuple(new_bad))


def _edge(value: Any) -> str | None:
    if value is None:
        return None
    if value not in EDGE_STATES:
        raise BadRequestError(f"edge: expected one of {', '.join(EDGE_STATES)}")
    return str(value)


def _interval(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 7 * 86400:
        raise BadRequestError("interval_s: expected a number of seconds > 0 and <= 604800")
    return float(value)


def _status_rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Checked per-model columns of a status report (the last failure only when one is given)."""
    out = []
    for i, m in enumerate(doc.get("models", [])):
        if not isinstance(m, dict):
            raise BadRequestError("expected an object", field=f"models[{i}]")
        try:
            name = check_name(m.get("name"), f"models[{i}].name")
        except PackageError as exc:
            raise BadRequestError("expected a model name (lower-case letters, digits, '.', '_', '-')",
                                  field=f"models[{i}].name") from exc
        values: dict[str, Any] = {
            "installed_version": _version(m.get("installed_version"), f"models[{i}].installed_version"),
            "serving_version": _version(m.get("serving_version"), f"models[{i}].serving_version"),
            "state": _short(m.get("state"), 32, f"models[{i}].state"),
            "accelerator": _short(m.get("accelerator"), 32, f"models[{i}].accelerator"),
            "health": _short(m.get("health"), 32, f"models[{i}].health"),
            # A failure is shown while the node reports it; a report without one clears it.
            "failure_version": None, "failure_reason": None, "failure_at": None, "failure_bad": None,
        }
        failure = m.get("failure")
        if isinstance(failure, dict):
            at, bad = failure.get("at"), failure.get("bad", False)
            if not isinstance(bad, bool):
                raise BadRequestError(f"models[{i}].failure.bad: expected true or false")
            reason = _short(failure.get("reason"), 2000, f"models[{i}].failure.reason")
            values.update(
                failure_version=_version(failure.get("version"), f"models[{i}].failure.version"),
                failure_reason=reason or "(no reason given)",
                failure_at=_time(at),
                failure_bad=bad,
            )
        elif failure is not None:
            raise BadRequestError("expected an object or null", field=f"models[{i}].failure")
        out.append((name, values))
    return out
