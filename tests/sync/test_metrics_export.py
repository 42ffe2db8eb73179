"""The fleet's released aggregates and open alerts on the service's /metrics, scraped over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgerec.sync.node.fleet_metrics import OpsRecorder, metrics_report
from edgerec.sync.node.privacy import PrivacyConfig
from edgerec.sync.node.simulator import Arm, make_fleet
from edgerec.sync.service.aggregate import sum_releases, variant_ctr
from edgerec.sync.service.server import RunningServer

from .helpers import node_client

HOUR = 3600
CFG = PrivacyConfig(epsilon_per_window=0.5, bounds={"impression": 1, "click": 1, "conversion": 1})


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def fleet_samples(samples: dict, name: str) -> dict[tuple[str, str], float]:
    """A fleet gauge by (version, variant)."""
    return {(dict(lb)["version"], dict(lb)["variant"]): v for (n, lb), v in samples.items()
            if n == f"edgerec_sync_fleet_{name}"}


def alert_since(samples: dict) -> dict[tuple[str, str], float]:
    return {(dict(lb)["kind"], dict(lb)["scope"]): v for (n, lb), v in samples.items()
            if n == "edgerec_sync_alert_since_seconds"}


def test_latest_released_window_is_exported_and_withheld_cells_are_not(sync_env):
    env = sync_env
    w0 = int(time.time()) // HOUR * HOUR - 3 * HOUR
    fleet = make_fleet(7, 5, [Arm("control", 1, 0.05), Arm("treatment", 2, 0.07)], users=20_000, config=CFG)
    fleet.window(w0)
    fleet.window(w0 + HOUR)
    # window 1 of the last node never arrives: window 1 has 4 nodes and is withheld (k = 5)
    sent = [(n, r) for n, r in fleet.releases if not (n == "node-0004" and r.window_start == w0 + HOUR)]
    for sim in fleet.nodes:
        state = env.enroll(sim.node_id)
        node_client(state).report(metrics_report([r for n, r in sent if n == sim.node_id]))

    expected = {(str(c.key.version), c.key.variant): c for c in sum_releases(sent, k=5).released()}
    assert {c.window_start for c in expected.values()} == {w0}
    got = scrape(env.url)
    imps, clicks, ctr = (fleet_samples(got, n) for n in ("impressions", "clicks", "ctr"))
    low, high = fleet_samples(got, "ctr_low"), fleet_samples(got, "ctr_high")
    assert set(imps) == set(expected) == {("1", "control"), ("2", "treatment")}
    for where, cell in expected.items():
        assert imps[where] == cell.counts["impression"] and clicks[where] == cell.counts["click"]
        assert fleet_samples(got, "conversions")[where] == cell.counts["conversion"]
        est = variant_ctr(cell.counts["impression"], cell.counts["click"], cell.noise_variance)
        lo, hi = est.interval(0.05)
        assert ctr[where] == pytest.approx(est.value) and low[where] == pytest.approx(lo)
        assert high[where] == pytest.approx(hi) and lo < est.value < hi
        assert fleet_samples(got, "window_start_seconds")[where] == w0  # not the withheld later window
        assert fleet_samples(got, "nodes")[where] == 5
    labels = dict(next(lb for (n, lb) in got if n == "edgerec_sync_fleet_ctr"))
    assert labels["model"] == "ctr" and labels["experiment"] == "exp"
    assert got[("edgerec_sync_metrics_series_dropped", (("what", "keys"),))] == 0

    # Another replica over the same database, with two granian workers: the same figures from any of them.
    other = RunningServer(env.service, maintenance=False, workers=2).start()
    try:
        for _ in range(4):
            assert fleet_samples(scrape(other.url), "impressions") == imps
    finally:
        other.stop()


def test_fewer_than_k_nodes_leave_no_fleet_series(sync_env):
    env = sync_env
    w0 = int(time.time()) // HOUR * HOUR - 2 * HOUR
    fleet = make_fleet(3, 4, [Arm("control", 1, 0.05)], users=5_000, config=CFG)
    fleet.window(w0)
    for sim in fleet.nodes:
        node_client(env.enroll(sim.node_id)).report(metrics_report([r for n, r in fleet.releases
                                                                    if n == sim.node_id]))
    assert env.admin().fleet_metrics()["cells"][0]["released"] is False  # stored, but withheld
    got = scrape(env.url)
    assert not [n for n, _ in got if n.startswith("edgerec_sync_fleet_")]


@pytest.mark.sync_config(alert_min_requests=10, metrics_export_ops_s=1800.0)
def test_an_open_alert_is_a_gauge_until_it_clears(sync_env):
    env = sync_env
    state = env.enroll("n0")
    node = state.identity().node_id
    start = int(time.time() // 300 * 300) - 900
    rec = OpsRecorder(window_seconds=300, grace_s=0)
    for i in range(50):  # 20 % errors: over the 1 % threshold
        rec.request(start + i, "ctr", 1, 5.0, [0.5], error="internal" if i < 10 else None)
    node_client(state).report(metrics_report([], rec.closed(start + 300)))
    got = scrape(env.url)
    assert alert_since(got) == {("error_rate", node): start, ("error_rate", "fleet"): start}
    assert got[("edgerec_sync_alerts", (("kind", "error_rate"),))] == 2
    assert got[("edgerec_sync_alerts", (("kind", "node_silent"),))] == 0
    subject = dict(next(lb for (n, lb) in got if n == "edgerec_sync_alert_since_seconds"))["subject"]
    assert subject == "ctr v1"

    for i in range(50):  # the next window is healthy: the alert clears
        rec.request(start + 300 + i, "ctr", 1, 5.0, [0.5])
    node_client(state).report(metrics_report([], rec.closed(start + 600)))
    got = scrape(env.url)
    assert alert_since(got) == {}
    assert got[("edgerec_sync_alerts", (("kind", "error_rate"),))] == 0
