"""Prometheus metrics of the sync service: requests, latency, refusals by reason, nodes by state.

Request counters and latency are recorded per process. With several worker
processes, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder, the same for
every worker, before they start): prometheus_client then keeps each
process's values in files there and ``/metrics`` sums every worker's (its
multiprocess mode, as the edge server uses). Nodes by state, the fleet's
released aggregates and its open alerts (:mod:`.fleet_gauges`) come from the
database at scrape time, so any worker answers the same.

Label values come from route names and fixed vocabularies (error codes,
refusal reasons, node states), never from what a client sent; the fleet
gauges' names (models, experiments, variants, node ids) were checked by the
protocol, and their number is capped there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from edgerec.sync.service.store.models import Node

from .blobs import Blobs
from .config import ServiceConfig
from .fleet_gauges import FleetGauges
from .store import Database

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0, 60.0)
NODE_STATES = ("ok", "degraded", "unknown", "revoked")
# Why a signed node request was refused (beside the error codes of other refusals).
SIGNED_REASONS = ("unsigned", "bad_signature", "unknown_node", "replayed", "revoked")


class NodeStates(Collector):
    """``edgerec_sync_nodes{state}``: enrolled nodes by state, counted in the database when scraped.

    ``ok`` and ``degraded`` are what a node's last status report said (any
    health other than "ok" is degraded), ``unknown`` has not reported yet,
    ``revoked`` is revoked whatever it said.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = case(
            (Node.revoked_at.is_not(None), "revoked"),
            (Node.health.is_(None), "unknown"),
            (Node.health == "ok", "ok"),
            else_="degraded",
        )
        with self.db.read() as session:
            counts = {str(s): int(n) for s, n in session.execute(select(state, func.count()).group_by(state))}
        family = GaugeMetricFamily("edgerec_sync_nodes", "Enrolled nodes by state.", labels=("state",))
        for name in NODE_STATES:
            family.add_metric((name,), counts.get(name, 0))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("edgerec_sync_nodes", "Enrolled nodes by state.", labels=("state",))


class SyncMetrics:
    """The service's collectors (one registry per service, so tests can run several)."""

    def __init__(self, db: Database) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgerec_sync_requests", "HTTP requests answered.", ("endpoint", "method", "code"),
                                registry=r)
        self.latency = Histogram("edgerec_sync_request_duration_seconds", "Time to answer a request.",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=r)
        self.refusals = Counter("edgerec_sync_refusals",
                                "Refused requests by reason: the error code, or for signed node requests "
                                f"one of {', '.join(SIGNED_REASONS)}.", ("endpoint", "reason"), registry=r)
        self.nodes = NodeStates(db)
        r.register(self.nodes)
        self.scraped: list[Collector] = [self.nodes]  # read from the database at each scrape

    def export_fleet(self, blobs: Blobs, config: ServiceConfig) -> None:
        """Add the fleet's released aggregates and open alerts (once; :mod:`.fleet_gauges`)."""
        if not any(isinstance(c, FleetGauges) for c in self.scraped):
            gauges = FleetGauges(self.nodes.db, blobs, config)
            self.registry.register(gauges)
            self.scraped.append(gauges)

    def request(self, endpoint: str, method: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def refusal(self, endpoint: str, reason: str) -> None:
        self.refusals.labels(endpoint, reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition format; every worker's values in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            for collector in self.scraped:
                registry.register(collector)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["NODE_STATES", "SIGNED_REASONS", "NodeStates", "SyncMetrics"]
