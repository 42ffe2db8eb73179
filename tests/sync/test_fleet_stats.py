"""Fleet statistics over simulated nodes: k-threshold, A/B verdicts, A/A error rate, always-valid gates.

numpy draws the simulated users from fixed seeds; the privacy noise comes
from OpenDP (no seed), so each rate is checked against an interval whose
tail probability is at most 1e-4 under the stated rate (the bound comes
from the binomial distribution, not from a run).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from edgerec.sync.node.privacy import MemoryBudgetLedger, PrivacyConfig, Releaser
from edgerec.sync.node.simulator import Arm, PrefetchedNoise, make_fleet
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.releases import Key
from edgerec.sync.service.aggregate import ab_report, sum_releases
from edgerec.sync.service.gates import OutcomeGate, parse_gate, run_gated_rollout
from edgerec.sync.service.stats import (
    ConfidenceSequence,
    Estimate,
    ctr,
    difference,
    rho_for,
    z_test,
)

HOUR = 3600
DAY0 = 1_767_225_600
ONE_EACH = {"impression": 1, "click": 1, "conversion": 1}


def binom_interval(n: int, p: float, tail: float = 1e-4) -> tuple[int, int]:
    """The smallest [lo, hi] with P(X < lo) <= tail/2 and P(X > hi) <= tail/2 for X ~ Bin(n, p)."""
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) + x * math.log(p)
                    + (n - x) * math.log1p(-p)) for x in range(n + 1)]
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= tail / 2:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= tail / 2:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


@pytest.mark.parametrize(("nodes", "k", "released"), [(4, 5, False), (5, 5, True), (2, 2, True), (9, 10, False)])
def test_a_figure_needs_k_nodes(nodes, k, released):
    cfg = PrivacyConfig(bounds=ONE_EACH)
    fleet = make_fleet(1, nodes, [Arm("control", 1, 0.05)], users=100, config=cfg)
    fw = sum_releases(fleet.window(DAY0), k=k)
    [cell] = fw.cells
    assert cell.released is released and len(cell.nodes) == nodes
    assert len(fw.released()) == (1 if released else 0)
    report = ab_report(fw, "exp")
    assert (report.windows_released, report.windows_withheld) == ((1, 0) if released else (0, 1))
    if not released:
        assert report.rows[0].impressions == 0 and math.isnan(report.rows[0].ctr.value)


def test_budget_exhausted_nodes_are_listed_and_contribute_nothing():
    cfg = PrivacyConfig(epsilon_per_window=1.0, daily_budget=1.0, bounds={"click": 1})
    fleet = make_fleet(2, 5, [Arm("a", 1, 0.5)], users=10, config=cfg)
    fleet.window(DAY0)
    fw = sum_releases(fleet.window(DAY0 + HOUR))
    assert fw.cells == [] and fw.exhausted == {(DAY0 + HOUR, HOUR): {n.node_id for n in fleet.nodes}}


def test_noise_variance_is_summed_over_nodes():
    cfg = PrivacyConfig(epsilon_per_window=0.5, bounds=ONE_EACH)
    fleet = make_fleet(3, 7, [Arm("control", 1, 0.05)], users=100, config=cfg)
    [cell] = sum_releases(fleet.window(DAY0)).cells
    assert cell.noise_variance == pytest.approx(7 * cfg.noise().variance)
    assert cell.epsilon == {n.node_id: 0.5 for n in fleet.nodes}


def test_ctr_variance_follows_the_delta_method():
    e = ctr(50, 1000, clicks_noise_var=72.0, impressions_noise_var=72.0)
    assert e.value == 0.05
    assert e.variance == pytest.approx((1000 * 0.05 * 0.95 + 72 + 0.05**2 * 72) / 1000**2)
    d = difference(e, Estimate(0.06, e.variance))
    assert d.variance == 2 * e.variance and z_test(d) == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(
        0.01 / math.sqrt(2 * e.variance) / math.sqrt(2)))))


@pytest.mark.parametrize(("treatment_ctr", "expected"), [(0.055, "better"), (0.045, "worse")])
def test_a_planted_ten_percent_lift_is_called(treatment_ctr, expected):
    """20 nodes, 20,000 users each per window split evenly: sd of the lift ~ 1.5 %, so a 10 % lift is ~6.5 sd."""
    cfg = PrivacyConfig(epsilon_per_window=0.5, bounds=ONE_EACH)
    fleet = make_fleet(10, 20, [Arm("control", 1, 0.05), Arm("treatment", 2, treatment_ctr)], users=20_000,
                       config=cfg)
    report = ab_report(sum_releases(fleet.window(DAY0)), "exp", variants=["control", "treatment"], alpha=0.05)
    control, treatment = report.rows
    assert (control.verdict, treatment.verdict) == (None, expected)
    assert treatment.p_value is not None and treatment.p_value < 1e-4
    assert treatment.lift is not None
    lo, hi = treatment.lift.interval(1e-4)  # a wide interval: the (unseeded) noise must not make this flaky
    planted = treatment_ctr / 0.05 - 1
    assert lo < planted < hi
    assert report.epsilon_per_user == 0.5 and treatment.nodes == 20 and treatment.versions == (2,)
    doc = report.to_doc()
    assert doc["variants"][1]["verdict"] == expected and doc["series"][0]["variant"] == "control"


def test_an_a_a_experiment_is_significant_at_about_alpha():
    """200 seeds of an A/A test on 20 small nodes, where the noise is most of the variance.

    With the noise in the variance, significant results follow Bin(200, 0.05);
    without it (the naive test) far more come out significant, which shows the
    noise term is what keeps the level."""
    cfg = PrivacyConfig(epsilon_per_window=0.5, bounds=ONE_EACH)
    noise, alpha = PrefetchedNoise(), 0.05
    significant = naive = 0
    for seed in range(200):
        fleet = make_fleet(seed, 20, [Arm("control", 1, 0.05), Arm("treatment", 2, 0.05)], users=500, config=cfg,
                           noise=noise)
        fw = sum_releases(fleet.window(DAY0))
        report = ab_report(fw, "exp", variants=["control", "treatment"], alpha=alpha)
        row = report.rows[1]
        assert row.p_value is not None and row.diff is not None
        significant += row.p_value < alpha
        a, b = (next(c for c in fw.cells if c.key.variant == v) for v in ("control", "treatment"))
        naive_d = difference(ctr(a.counts["click"], a.counts["impression"], 0, 0),
                             ctr(b.counts["click"], b.counts["impression"], 0, 0))
        naive += z_test(naive_d) < alpha
    lo, hi = binom_interval(200, alpha)
    assert lo <= significant <= hi, (significant, (lo, hi))
    assert naive > hi, naive


def test_confidence_sequence_stays_valid_under_continuous_looking():
    """Gaussian increments, 100 looks: a z-test at every look errs far above alpha; the sequence does not."""
    rng = np.random.default_rng(5)
    alpha, paths, looks = 0.05, 2000, 100
    cs = ConfidenceSequence(alpha, rho_for(alpha, 50.0))
    sums = np.cumsum(rng.standard_normal((paths, looks)), axis=1)  # S_t with V_t = t, true mean 0
    t = np.arange(1, looks + 1)
    est = sums / t
    half = np.array([cs.half_width(1.0 / v) for v in t])
    cs_miss = int(np.any(np.abs(est) > half, axis=1).sum())
    peeking = int(np.any(np.abs(sums) / np.sqrt(t) > 1.959964, axis=1).sum())
    _, hi = binom_interval(paths, alpha)
    assert cs_miss <= hi, cs_miss
    assert peeking > binom_interval(paths, 3 * alpha)[1], peeking  # well over 3 alpha when peeking


def test_rho_for_makes_the_boundary_tightest_at_the_target():
    from edgerec.sync.service.stats import mixture_boundary

    rho = rho_for(0.05, 1000.0)
    best = mixture_boundary(1000.0, rho, 0.05)
    for other in (rho / 2, rho * 2):
        assert mixture_boundary(1000.0, other, 0.05) > best


# -- outcome-gated rollouts on 100 simulated nodes ----------------------------------------------

GATE_CFG = PrivacyConfig(epsilon_per_window=0.5, bounds={"impression": 1, "click": 1})


def _rollout(seed: int, canary_ctr: float, noise: PrefetchedNoise, gate: str = "ctr>=-1%"):
    old, new = Arm("", 1, 0.05), Arm("", 2, canary_ctr)
    fleet = make_fleet(seed, 100, [old], users=200_000, config=GATE_CFG, experiment="", noise=noise)
    order = [n.node_id for n in fleet.nodes]

    def source(canary: set[str], index: int):
        for n in fleet.nodes:
            n.arms = [new] if n.node_id in canary else [old]
        return fleet.window(DAY0 + index * HOUR), []

    outcome_gate = OutcomeGate((parse_gate(gate),), alpha=0.05, gated_phases=2, target_information=1e5)
    return run_gated_rollout(order, (5, 25, 100), outcome_gate, source, "ctr", 2, 1, max_windows=12)


def test_a_planted_five_percent_drop_halts_in_the_first_phase():
    out = _rollout(1, 0.0475, PrefetchedNoise())
    assert out.state == "halted" and out.phase == 0
    assert out.rolled_back == [f"node-{i:04d}" for i in range(5)]  # the 5 % canaries go back
    assert "ctr>=-1%" in out.reasons[0] and "fail" in out.reasons[0]


def test_with_no_effect_the_false_halt_rate_is_within_the_stated_rate():
    noise = PrefetchedNoise()
    states = Counter(_rollout(seed, 0.05, noise).state for seed in range(200))
    _, hi = binom_interval(200, 0.05)  # stated: false halt <= alpha = 0.05 over the whole rollout
    assert states["halted"] <= hi, states
    assert states["completed"] >= 150, states  # and with no effect it does go through


@pytest.mark.parametrize(("text", "metric", "op", "threshold"), [
    ("ctr>=-1%", "ctr", ">=", -0.01), ("errors<=1%", "errors", "<=", 0.01), (" ctr >= 0.5 % ", "ctr", ">=", 0.005),
])
def test_parse_gate(text, metric, op, threshold):
    g = parse_gate(text)
    assert (g.metric, g.op) == (metric, op) and g.threshold == pytest.approx(threshold)


@pytest.mark.parametrize("text", ["ctr>-1%", "latency<=5%", "errors<=120%", "ctr>=-1"])
def test_parse_gate_refuses(text):
    with pytest.raises(ConfigError, match="^gate: "):
        parse_gate(text)


def test_errors_gate_reads_the_canaries_operational_figures():
    from edgerec.sync.protocol.releases import LATENCY_EDGES_MS, SCORE_EDGES, Histogram, OpsFigures, OpsWindow
    from edgerec.sync.service.gates import phase_figures

    def ops(node: str, errors: int) -> tuple[str, OpsWindow]:
        h = Histogram(LATENCY_EDGES_MS, (0,) * (len(LATENCY_EDGES_MS) + 1))
        s = Histogram(SCORE_EDGES, (0,) * (len(SCORE_EDGES) + 1))
        return node, OpsWindow(DAY0, 300, [OpsFigures("ctr", 2, 10_000, {"timeout": errors}, h, s)])

    gate = OutcomeGate((parse_gate("errors<=1%"),))
    bad = phase_figures([], [ops("a", 500), ops("b", 20)], {"a"}, "ctr", 2, 1, k=5)
    good = phase_figures([], [ops("a", 10), ops("b", 900)], {"a"}, "ctr", 2, 1, k=5)
    assert (bad.canary_requests, bad.canary_errors) == (10_000, 500)
    assert [c.state for c in gate.check(bad)] == ["fail"]
    assert [c.state for c in gate.check(good)] == ["pass"]


def test_releaser_keys_are_public_and_fixed():
    """Every declared key is released, with or without events, so rows reveal nothing."""
    cfg = PrivacyConfig(bounds={"click": 1})
    rel = Releaser(cfg, MemoryBudgetLedger()).release_totals(DAY0, HOUR, {Key("ctr", 1, "", ""): {"click": 0}})
    assert list(rel.counts) == [Key("ctr", 1, "", "")]
