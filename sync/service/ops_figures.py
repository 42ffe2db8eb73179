"""Operational figures of the fleet over its last windows: requests, error rate, latency percentiles.

Read from the nodes' stored operational windows (``ops_windows``), per node
and for the fleet, for each of the last N windows and over all of them. A
percentile is the upper edge of the latency-histogram bucket that holds it
(the histogram is all a node sends); ``null`` in JSON when there were no
requests, or when it lies past the last bucket (``latency_overflow_ms``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.releases import LATENCY_EDGES_MS, OpsFigures, parse_ops
from edgerec.sync.service.store.models import Node, OpsWindowRow

from .alerts import merge_figures, percentile_ms

MAX_WINDOWS = 288  # a day of 5-minute windows
MAX_NODES = 1000
QUANTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))


def _figures(figs: Iterable[OpsFigures]) -> dict[str, Any]:
    req, err, lat, _ = merge_figures(figs)
    doc: dict[str, Any] = {"requests": req, "errors": err, "error_rate": err / req if req else None}
    for name, q in QUANTILES:
        p = percentile_ms(lat, q)
        doc[name] = p if math.isfinite(p) else None
    return doc


def ops_summary(session: Session, windows: int, model: str | None = None, node: str | None = None,
                max_nodes: int = 100) -> dict[str, Any]:
    """The fleet's and each node's figures over the last ``windows`` window starts (the worst p99 first,
    at most ``max_nodes`` nodes; the fleet's figures count every node)."""
    W = OpsWindowRow  # noqa: N806 (table alias)
    starts_q = select(W.window_start).distinct().order_by(W.window_start.desc()).limit(windows)
    rows_q = select(W.node_id, W.body)
    if node is not None:
        starts_q = starts_q.where(W.node_id == node)
        rows_q = rows_q.where(W.node_id == node)
    starts = sorted(session.execute(starts_q).scalars())
    doc: dict[str, Any] = {"windows": starts, "model": model, "latency_edges_ms": list(LATENCY_EDGES_MS),
                           "latency_overflow_ms": LATENCY_EDGES_MS[-1]}
    # node -> window start -> figures; fleet: window start -> figures
    per_node: dict[str, dict[int, list[OpsFigures]]] = defaultdict(lambda: defaultdict(list))
    fleet: dict[int, list[OpsFigures]] = defaultdict(list)
    if starts:
        for node_id, body in session.execute(rows_q.where(W.window_start >= starts[0])):
            w = parse_ops(body)
            figs = [f for f in w.models if model is None or f.model == model]
            per_node[node_id][w.window_start].extend(figs)
            fleet[w.window_start].extend(figs)
    names = dict(session.execute(select(Node.id, Node.name).where(Node.id.in_(list(per_node)))).tuples().all())

    def view(series: dict[int, list[OpsFigures]]) -> dict[str, Any]:
        return {**_figures(f for s in series.values() for f in s),
                "series": [{"window_start": s, **_figures(series[s])} for s in sorted(series)]}

    nodes = [{"node": n, "name": names.get(n), **view(series)} for n, series in per_node.items()]
    nodes.sort(key=lambda d: (-(d["p99_ms"] if d["p99_ms"] is not None else
                                (math.inf if d["requests"] else -1.0)), d["node"]))
    doc.update(fleet=view(fleet), nodes=nodes[:max_nodes], nodes_total=len(nodes))
    return doc


__all__ = ["MAX_NODES", "MAX_WINDOWS", "ops_summary"]
