"""Admin API of the fleet metrics: the A/B report of an experiment and the fleet's released windows.

Kept apart from :mod:`.api_admin` (same admin token check) so the metrics
views grow without touching the fleet and rollout views.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Blueprint, jsonify, request

from edgerec.sync.protocol.errors import BadRequestError

from .alerts import AlertPolicy, open_alerts
from .api_node import json_body, read_body
from .app import service
from .core import name_arg
from .experiments import create_experiment, get_experiment, list_experiments, stop_experiment
from .fleet_metrics import experiment_report, fleet_windows, policy_of
from .gated_rollouts import list_gated, start_gated
from .ops_figures import MAX_NODES, MAX_WINDOWS, ops_summary

bp = Blueprint("admin_metrics", __name__, url_prefix="/api/v1/admin")
# The admin view of alerts judges a day of operational windows (/metrics, scraped often, judges
# ServiceConfig.metrics_export_ops_s of them).
ALERTS_LOOKBACK_S = 86400.0


@bp.before_request
def _admin_only() -> None:
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    service().check_admin(token)


def _since() -> float:
    try:
        since = float(request.args.get("since", 0))
    except ValueError as exc:
        raise BadRequestError("expected a UNIX time in seconds", field="since") from exc
    if not math.isfinite(since):  # nan compares false with every window start: refused, as /admin/reports does
        raise BadRequestError("expected a finite UNIX time in seconds", field="since")
    return since


@bp.get("/experiments/<name>/report")
def ab_report(name: str) -> Any:
    """Per variant totals, CTR with interval, lift and p-value against the control, verdict."""
    svc = service()
    name = name_arg(name, "experiment")
    raw = request.args.get("variants")
    variants = [name_arg(v, "variants") for v in raw.split(",")] if raw else None
    control = request.args.get("control")
    with svc.db.read() as session:
        defined = get_experiment(session, name)
        if defined is not None and variants is None:
            variants = [v["name"] for v in defined["variants"]]  # the first is the control
        report = experiment_report(session, name, policy_of(svc.config), variants,
                                   None if control is None else name_arg(control, "control"), _since())
    return jsonify(report.to_doc())


@bp.get("/fleet-metrics")
def windows() -> Any:
    """Every (window, key) cell: its fleet totals when released (>= k nodes), else only that it was withheld."""
    svc = service()
    model = request.args.get("model")
    with svc.db.read() as session:
        fw = fleet_windows(session, policy_of(svc.config), model=None if model is None else name_arg(model, "model"),
                           since=_since())
    cells = [{"window_start": c.window_start, "window_seconds": c.window_seconds, "model": c.key.model,
              "version": c.key.version, "experiment": c.key.experiment, "variant": c.key.variant,
              "released": c.released, "nodes": len(c.nodes) if c.released else None,
              "counts": dict(c.counts) if c.released else None,
              "noise_variance": c.noise_variance if c.released else None} for c in fw.cells]
    exhausted = [{"window_start": w[0], "window_seconds": w[1], "nodes": len(n)}
                 for w, n in sorted(fw.exhausted.items())]
    return jsonify(k=fw.k, cells=cells, budget_exhausted=exhausted)


@bp.post("/experiments")
def create() -> Any:
    svc = service()
    doc = json_body(read_body(svc.config.max_json_bytes))
    with svc.db.write() as session:
        return jsonify(create_experiment(session, doc)), 201


@bp.get("/experiments")
def listing() -> Any:
    with service().db.read() as session:
        return jsonify(experiments=list_experiments(session))


@bp.post("/experiments/<name>/stop")
def stop(name: str) -> Any:
    with service().db.write() as session:
        return jsonify(stop_experiment(session, name_arg(name, "experiment")))


@bp.get("/alerts")
def alerts() -> Any:
    """Open alerts, per node and for the fleet, with since-when (thresholds from the service configuration)."""
    svc = service()
    policy = AlertPolicy.of(svc.config)
    with svc.db.read() as session:
        found = open_alerts(session, svc.blobs, policy, time.time(), ALERTS_LOOKBACK_S)
    return jsonify(alerts=[a.to_doc() for a in found], thresholds=policy.__dict__)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequestError(f"expected an integer from {low} to {high}", field=name)
    return value


@bp.get("/ops-metrics")
def ops_metrics() -> Any:
    """Requests, error rate and latency percentiles per node and for the fleet over the last windows."""
    model, node = request.args.get("model"), request.args.get("node")
    windows = _int_arg("windows", 12, 1, MAX_WINDOWS)
    max_nodes = _int_arg("max_nodes", 100, 1, MAX_NODES)
    with service().db.read() as session:
        doc = ops_summary(session, windows, None if model is None else name_arg(model, "model"),
                          None if node is None else name_arg(node, "node"), max_nodes)
    return jsonify(doc)


@bp.post("/gated-rollouts")
def gated_rollout() -> Any:
    """Start a rollout whose phases advance only when the outcome gates pass (checked by the maintenance loop)."""
    svc = service()
    doc = json_body(read_body(svc.config.max_json_bytes))
    phases, gates, tags = doc.get("phases"), doc.get("gates"), doc.get("tags") or []
    if not isinstance(phases, list) or not all(isinstance(p, int | float) and not isinstance(p, bool)
                                                for p in phases):
        raise BadRequestError("phases: expected a list of percentages")
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise BadRequestError("gates: expected a list of gates such as ctr>=-1%")
    if not isinstance(tags, list):
        raise BadRequestError("tags: expected a list of names")
    version, alpha, max_windows = doc.get("version"), doc.get("alpha", 0.05), doc.get("max_windows", 24)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise BadRequestError("version: expected an integer >= 0")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise BadRequestError("alpha: expected a number in (0, 1)")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int):
        raise BadRequestError("max_windows: expected an integer in [1, 1000]")
    with svc.db.write() as session:
        out = start_gated(session, svc.rollouts, name_arg(doc.get("model"), "model"), version,
                          name_arg(doc.get("channel"), "channel"), phases, gates,
                          [name_arg(t, "tags") for t in tags], float(alpha), max_windows)
    return jsonify(out), 201


@bp.get("/gated-rollouts")
def gated_rollouts() -> Any:
    with service().db.read() as session:
        return jsonify(gated_rollouts=list_gated(session))
