"""``/metrics`` gauges of the fleet: released business aggregates and open alerts, read from the database.

Computed when scraped, from the database (never from a process's memory), so
every granian worker and every replica over one database answers the same.

* Per (model, version, experiment, variant), its **latest released window**:
  impressions, clicks, conversions, CTR and the bounds of its interval (noise
  included, at ``metrics_alpha``), the window's start and the number of nodes
  summed. Only cells released under the k-node threshold are read (the
  threshold is applied inside the query), so a withheld figure never reaches
  ``/metrics``. Windows starting within ``metrics_export_lookback_s`` are
  looked at.
* Each **open alert**: ``edgerec_sync_alert_since_seconds{kind, scope,
  subject}`` (scope ``fleet`` or a node id), judged from the operational
  windows of the last ``metrics_export_ops_s`` (so "since" reaches back at
  most that far), and the number of open alerts per kind.

Bounded cost and cardinality: the database sums the releases (rows read are
windows x keys, not nodes); at most :data:`MAX_KEYS` keys (the ones with the
newest windows) and :data:`MAX_ALERTS` alerts (fleet-wide ones first) become
series, and what the caps leave out is counted in
``edgerec_sync_metrics_series_dropped{what}``. Label values are names the
protocol checked (model, experiment and variant names, node ids the service
issued), and a business key only appears once k nodes reported it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .aggregate import variant_ctr
from .alerts import ALERT_KINDS, AlertPolicy, open_alerts
from .blobs import Blobs
from .config import ServiceConfig
from .fleet_metrics import latest_released
from .store import Database

#: At most this many (model, version, experiment, variant) keys on /metrics (9 series each).
MAX_KEYS = 250
#: At most this many open alerts on /metrics (one series each); their counts per kind are never capped.
MAX_ALERTS = 500
_KEY_LABELS = ("model", "version", "experiment", "variant")
_ALERT_LABELS = ("kind", "scope", "subject")


def _families() -> dict[str, GaugeMetricFamily]:
    def fleet(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"edgerec_sync_fleet_{name}", doc + " (latest window released under the k-node "
                                 "threshold, per model, version, experiment and variant).", labels=_KEY_LABELS)

    return {
        "impressions": fleet("impressions", "Noisy impressions summed over the nodes"),
        "clicks": fleet("clicks", "Noisy clicks summed over the nodes"),
        "conversions": fleet("conversions", "Noisy conversions summed over the nodes"),
        "ctr": fleet("ctr", "Click-through rate"),
        "ctr_low": fleet("ctr_low", "Lower bound of the CTR interval, noise included"),
        "ctr_high": fleet("ctr_high", "Upper bound of the CTR interval, noise included"),
        "window_start": fleet("window_start_seconds", "UNIX start of the window"),
        "window_seconds": fleet("window_length_seconds", "Length of the window"),
        "nodes": fleet("nodes", "Nodes summed"),
        "alerts": GaugeMetricFamily("edgerec_sync_alerts", "Open alerts by kind.", labels=("kind",)),
        "since": GaugeMetricFamily("edgerec_sync_alert_since_seconds",
                                   "UNIX time since which an open alert holds, per kind, scope (fleet or a "
                                   "node id) and subject.", labels=_ALERT_LABELS),
        "dropped": GaugeMetricFamily("edgerec_sync_metrics_series_dropped",
                                     "Keys or alerts left off /metrics by its series caps (keys: at least).",
                                     labels=("what",)),
    }


class FleetGauges(Collector):
    """Released fleet aggregates and open alerts, from the database at each scrape."""

    def __init__(self, db: Database, blobs: Blobs, config: ServiceConfig) -> None:
        self.db = db
        self.blobs = blobs
        self.config = config

    def collect(self) -> Iterator[GaugeMetricFamily]:
        c, now = self.config, time.time()
        f = _families()
        with self.db.read() as session:
            cells, keys_dropped = latest_released(session, c.metrics_min_nodes, now - c.metrics_export_lookback_s,
                                                  MAX_KEYS)
            alerts = open_alerts(session, self.blobs, AlertPolicy.of(c), now, c.metrics_export_ops_s)
        for cell in cells:
            labels = (cell.key.model, str(cell.key.version), cell.key.experiment, cell.key.variant)
            for kind in ("impression", "click", "conversion"):
                if kind in cell.counts:
                    f[kind + "s"].add_metric(labels, cell.counts[kind])
            if "impression" in cell.counts and "click" in cell.counts:
                est = variant_ctr(cell.counts["impression"], cell.counts["click"], cell.noise_variance)
                low, high = est.interval(c.metrics_alpha)
                for name, value in (("ctr", est.value), ("ctr_low", low), ("ctr_high", high)):
                    if math.isfinite(value):  # noisy counts can leave no estimate (no impressions)
                        f[name].add_metric(labels, value)
            f["window_start"].add_metric(labels, cell.window_start)
            f["window_seconds"].add_metric(labels, cell.window_seconds)
            f["nodes"].add_metric(labels, cell.nodes)
        by_kind = dict.fromkeys(ALERT_KINDS, 0)
        for a in alerts:
            by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
        for kind, n in by_kind.items():
            f["alerts"].add_metric((kind,), n)
        alerts.sort(key=lambda a: (a.scope != "fleet", a.kind, a.scope, a.subject))
        for a in alerts[:MAX_ALERTS]:
            f["since"].add_metric((a.kind, a.scope, a.subject), a.since)
        f["dropped"].add_metric(("keys",), keys_dropped)
        f["dropped"].add_metric(("alerts",), max(0, len(alerts) - MAX_ALERTS))
        yield from f.values()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from _families().values()  # names only: registering must not query the database


__all__ = ["MAX_ALERTS", "MAX_KEYS", "FleetGauges"]
