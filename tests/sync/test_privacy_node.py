"""The node's private releases: noise scale, contribution bounds, the budget ledger, noise-free mode.

Noise comes from OpenDP, which takes no seed, so every statistical bound here
is set from the distribution's own moments far enough out (six standard
errors) that a correct implementation fails about once in 10^8 runs.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgerec.sync.node.fleet_metrics import EventWindows, OpsRecorder
from edgerec.sync.node.privacy import (
    MemoryBudgetLedger,
    PrivacyConfig,
    Releaser,
    SqliteBudgetLedger,
    WindowCounts,
    opendp_epsilon,
    utc_day,
)
from edgerec.sync.node.simulator import Arm, user_events
from edgerec.sync.protocol.errors import BadRequestError, ConfigError
from edgerec.sync.protocol.releases import (
    LATENCY_EDGES_MS,
    Key,
    discrete_laplace_variance,
    parse_ops,
    parse_release,
)

HOUR = 3600
DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
K1 = Key("ctr", 1, "exp", "control")
K2 = Key("ctr", 2, "exp", "treatment")


def _keys(n: int) -> list[Key]:
    return [Key("m", i, "", "") for i in range(n)]


@pytest.mark.parametrize(("epsilon", "bounds"), [
    (0.5, {"impression": 1, "click": 1, "conversion": 1}),   # Delta = 3, b = 6
    (1.0, {"impression": 4, "click": 2}),                    # Delta = 6, b = 6 (two kinds)
    (2.0, {"click": 1}),                                     # Delta = 1, b = 0.5 (far from 2b²)
])
def test_released_noise_has_the_configured_scale(epsilon, bounds):
    cfg = PrivacyConfig(epsilon_per_window=epsilon, daily_budget=24 * epsilon, bounds=bounds)
    rel = Releaser(cfg, MemoryBudgetLedger())
    assert cfg.scale == sum(bounds.values()) / epsilon
    assert opendp_epsilon(cfg.sensitivity, cfg.scale) == pytest.approx(epsilon)  # OpenDP's own privacy map
    keys, samples = _keys(1000 // len(bounds)), []
    truth = 7
    for w in range(20):
        counts = WindowCounts(DAY0 + w * HOUR, HOUR, bounds)
        for k in keys:
            for kind in bounds:
                counts.add(f"u-{k.version}", k, kind, 7)  # 7 events, kept up to each user's bound
        r = rel.release(counts, keys)
        assert r.released and r.noise.scale == cfg.scale and r.noise.epsilon == epsilon
        samples += [c[kind] - min(truth, bounds[kind]) for c in r.counts.values() for kind in bounds]
    x = np.asarray(samples, dtype=float)
    n, var = len(x), discrete_laplace_variance(cfg.scale)
    q = math.exp(-1 / cfg.scale)
    # fourth central moment of the discrete Laplace: 2q(1 + 10q + q²) / (1 - q)^4
    mu4 = 2 * q * (1 + 10 * q + q * q) / (1 - q) ** 4
    se_var = math.sqrt((mu4 - var**2) / n)
    assert abs(x.mean()) < 6 * math.sqrt(var / n)
    assert abs(x.var(ddof=1) - var) < 6 * se_var, (x.var(ddof=1), var, se_var)


def test_discrete_laplace_variance_formula():
    for b in (0.5, 1, 6, 60):
        q = math.exp(-1 / b)
        ks = np.arange(-4000, 4001)
        p = (1 - q) / (1 + q) * q ** np.abs(ks)
        assert discrete_laplace_variance(b) == pytest.approx(float((p * ks**2).sum()), rel=1e-9)
    assert discrete_laplace_variance(60) == pytest.approx(2 * 60**2 - 1 / 6, rel=1e-6)


@pytest.mark.parametrize(("events", "bounds", "kept", "dropped"), [
    # one user, 5 clicks on one key, bound 2: 2 kept, 3 dropped
    ([("a", K1, "click")] * 5, {"click": 2}, {K1: {"click": 2}}, {"click": 3}),
    # the bound is per user and kind over all keys of the window, not per key
    ([("a", K1, "impression")] * 3 + [("a", K2, "impression")] * 3, {"impression": 4},
     {K1: {"impression": 3}, K2: {"impression": 1}}, {"impression": 2}),
    # different users each get their own bound
    ([("a", K1, "click")] * 3 + [("b", K1, "click")] * 3, {"click": 2}, {K1: {"click": 4}}, {"click": 2}),
    # kinds the node does not release are ignored, not counted against anything
    ([("a", K1, "conversion")] * 2, {"click": 1}, {K1: {"click": 0}}, {}),
])
def test_contribution_bounding(events, bounds, kept, dropped):
    w = WindowCounts(DAY0, HOUR, bounds)
    for user, key, kind in events:
        w.add(user, key, kind)
    totals, outside = w.totals(kept)
    assert totals == kept and outside == 0
    assert dict(w.dropped) == dropped


def test_bounding_holds_for_simulated_users_and_noise_free_release_is_exact():
    bounds = {"impression": 3, "click": 1, "conversion": 1}
    cfg = PrivacyConfig(bounds=bounds, mechanism="none")
    windows = EventWindows(cfg)
    rng = np.random.default_rng(7)
    arms = [Arm("control", 1, 0.3, conversion_rate=0.5), Arm("treatment", 2, 0.3, conversion_rate=0.5)]
    raw: dict[str, dict[str, int]] = {}
    for user, key, kind in user_events(rng, "ctr", "exp", arms, users=300, impressions_per_user=6):
        raw.setdefault(user, {}).setdefault(kind, 0)
        raw[user][kind] += 1
        windows.add(DAY0 + 10, user, key, kind)
    [win] = windows.closed(DAY0 + HOUR + 61)
    r = Releaser(cfg, MemoryBudgetLedger()).release(win, [K1, K2])
    expect = {kind: sum(min(u.get(kind, 0), bounds[kind]) for u in raw.values()) for kind in bounds}
    got = {kind: sum(c[kind] for c in r.counts.values()) for kind in bounds}
    assert got == expect  # the noise-free (test only) release is the bounded truth
    assert got["impression"] == 300 * 3 and win.dropped["impression"] == 300 * 3
    assert r.to_doc()["noise"] == {"mechanism": "none", "test_only": True}
    assert r.noise.epsilon == 0 and r.budget_spent == 0


def test_events_outside_the_declared_keys_and_late_events_are_not_released():
    cfg = PrivacyConfig(bounds={"click": 5})
    windows = EventWindows(cfg, grace_s=0)
    windows.add(DAY0 + 1, "a", K1, "click")
    windows.add(DAY0 + 2, "a", Key("other", 1, "", ""), "click")
    [win] = windows.closed(DAY0 + HOUR)
    totals, outside = win.totals([K1])
    assert totals == {K1: {"click": 1}} and outside == 1
    assert windows.add(DAY0 + 5, "a", K1, "click") == 0 and windows.late == 1


def test_forget_user_takes_them_out_of_open_windows():
    windows = EventWindows(PrivacyConfig(bounds={"click": 5}))
    for user in ("a", "b"):
        windows.add(DAY0 + 1, user, K1, "click", 3)
    assert windows.forget("a") == 3
    [win] = windows.closed(DAY0 + 2 * HOUR)
    assert win.totals([K1])[0] == {K1: {"click": 3}} and win.users() == 1


def _release(rel: Releaser, w: int) -> dict:
    counts = WindowCounts(DAY0 + w * HOUR, HOUR, rel.config.bounds)
    counts.add("a", K1, "click")
    return rel.release(counts, [K1]).to_doc()


def test_budget_exhaustion_stops_releases_and_survives_a_restart(tmp_path):
    path = tmp_path / "state" / "privacy.sqlite"
    cfg = PrivacyConfig(epsilon_per_window=0.5, daily_budget=1.0, bounds={"click": 1})
    ledger = SqliteBudgetLedger(path)
    rel = Releaser(cfg, ledger)
    first, second = _release(rel, 0), _release(rel, 1)
    assert first["status"] == second["status"] == "released"
    assert second["budget"] == {"day": "2026-01-01", "limit": 1.0, "spent": 1.0}
    third = _release(rel, 2)
    assert third["status"] == "budget_exhausted" and third["counts"] == []
    assert parse_release(third).released is False
    assert _release(rel, 0) == first  # a window released before is sent again as it was: no new noise or spend
    ledger.close()

    # A new process opens the same ledger file: the day's budget is still spent.
    code = textwrap.dedent(f"""
        import json
        from edgerec.sync.node.privacy import PrivacyConfig, Releaser, SqliteBudgetLedger, WindowCounts
        from edgerec.sync.protocol.releases import Key
        cfg = PrivacyConfig(epsilon_per_window=0.5, daily_budget=1.0, bounds={{"click": 1}})
        ledger = SqliteBudgetLedger({str(path)!r})
        rel = Releaser(cfg, ledger)
        out = []
        for w in (3, 0, 24):
            c = WindowCounts({DAY0} + w * 3600, 3600, cfg.bounds)
            c.add("a", Key("ctr", 1, "exp", "control"), "click")
            out.append(rel.release(c, [Key("ctr", 1, "exp", "control")]).to_doc())
        print(json.dumps([out, ledger.spent("2026-01-01"), ledger.spent("2026-01-02")]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    (later, again, next_day), spent, spent_next = json.loads(done.stdout)
    assert later["status"] == "budget_exhausted" and later["budget"]["spent"] == 1.0
    assert again == first
    assert next_day["status"] == "released" and next_day["budget"]["day"] == "2026-01-02"
    assert (spent, spent_next) == (1.0, 0.5)
    reopened = SqliteBudgetLedger(path)
    assert reopened.prune("2026-01-02") == 2 and reopened.spent("2026-01-01") == 0.0
    reopened.close()


def test_epsilon_sums_exactly_in_the_ledger():
    cfg = PrivacyConfig(epsilon_per_window=0.1, daily_budget=1.0, bounds={"click": 1})
    rel = Releaser(cfg, MemoryBudgetLedger())
    states = [_release(rel, w)["status"] for w in range(11)]
    assert states == ["released"] * 10 + ["budget_exhausted"]  # ten times 0.1 is exactly 1.0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"epsilon_per_window": 0}, "privacy.epsilon_per_window"),
    ({"epsilon_per_window": 2.0, "daily_budget": 1.0}, "privacy.daily_budget"),
    ({"bounds": {"view": 1}}, "privacy.bounds"),
    ({"bounds": {"click": 0}}, "privacy.bounds.click"),
    ({"window_seconds": 7}, "privacy.window_seconds"),
    ({"mechanism": "gaussian"}, "privacy.mechanism"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PrivacyConfig(**kwargs)


@pytest.mark.parametrize(("patch", "field"), [
    ({"format": "x"}, "format"),
    ({"window": {"start": 7, "seconds": HOUR}}, "window.start"),
    ({"status": "maybe"}, "status"),
    ({"noise": {"mechanism": "none"}}, "noise.test_only"),
    ({"noise": {"mechanism": "discrete_laplace", "epsilon": 0.5, "sensitivity": 1, "scale": 1.0,
                "variance": 1.0}}, "noise.scale"),
    ({"bounds": {"click": 2}}, "noise.sensitivity"),
    ({"counts": [{"model": "ctr", "version": 1, "experiment": "exp", "variant": "control", "click": 1.5}]},
     "counts[0].click"),
    ({"counts": [{"model": "Bad Name", "version": 1, "experiment": "", "variant": "", "click": 1}]},
     "counts[0].model"),
])
def test_release_parser_names_the_field(patch, field):
    cfg = PrivacyConfig(bounds={"click": 1})
    doc = {**_release(Releaser(cfg, MemoryBudgetLedger()), 0), **patch}
    with pytest.raises(BadRequestError, match=f"^{re.escape(field)}:"):
        parse_release(doc)


def test_ops_windows_carry_histograms_and_no_user():
    ops = OpsRecorder(window_seconds=300, grace_s=0)
    for i in range(10):
        ops.request(DAY0 + i, "ctr", 2, latency_ms=0.4 + i, scores=[0.01, 0.99], error="timeout" if i == 9 else None)
    assert ops.closed(DAY0 + 299) == []
    [w] = ops.closed(DAY0 + 300)
    doc = w.to_doc()
    assert parse_ops(json.loads(json.dumps(doc))) == w
    [m] = w.models
    assert (m.requests, dict(m.errors)) == (10, {"timeout": 1})
    assert sum(m.latency_ms.counts) == 10 and m.latency_ms.counts[0] == 1  # 0.4 ms <= 0.5
    assert m.latency_ms.counts[LATENCY_EDGES_MS.index(10.0)] == 5  # 5.4 .. 9.4 ms
    assert m.scores.counts[0] == 10 and m.scores.counts[19] == 10
    assert "user" not in json.dumps(doc)


def test_utc_day():
    assert utc_day(DAY0) == "2026-01-01" and utc_day(DAY0 + 86399) == "2026-01-01"


@pytest.mark.parametrize(("ipu", "bounds"), [
    (1, {"impression": 1, "click": 1, "conversion": 1}),   # nobody passes a bound: plain binomials
    (8, {"impression": 3, "click": 2, "conversion": 1}),   # bounds bite: per-user draws, clipped
])
def test_simulated_bounded_totals_respect_the_bounds(ipu, bounds):
    from edgerec.sync.node.simulator import bounded_totals

    rng = np.random.default_rng(11)
    totals = bounded_totals(rng, "ctr", "exp", [Arm("a", 1, 0.5, conversion_rate=0.5)], 1000, ipu, bounds)
    [row] = totals.values()
    assert row["impression"] == 1000 * min(ipu, bounds["impression"])
    assert 0 < row["click"] <= 1000 * bounds["click"] and 0 < row["conversion"] <= 1000 * bounds["conversion"]
    if ipu == 8:  # with 8 impressions at CTR 0.5 nearly every user passes 2 clicks
        assert row["click"] > 0.9 * 1000 * bounds["click"]


def test_no_user_id_reaches_any_node_file(tmp_path):
    """Forget-user: after the window is erased and released, no file in the node's state holds the id."""
    state = tmp_path / "state"
    uid = "user-forget-me-0042"
    cfg = PrivacyConfig(bounds={"impression": 2, "click": 1})
    windows = EventWindows(cfg)
    for kind in ("impression", "click"):
        windows.add(DAY0 + 5, uid, K1, kind)
        windows.add(DAY0 + 5, "someone-else", K1, kind)
    assert windows.forget(uid) == 2
    ledger = SqliteBudgetLedger(state / "privacy.sqlite")
    [win] = windows.closed(DAY0 + 2 * HOUR)
    Releaser(cfg, ledger).release(win, [K1])
    ledger.close()
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and not [p for p in files if uid.encode() in p.read_bytes()]
    assert not [p for p in files if b"someone-else" in p.read_bytes()]  # no user id at all, forgotten or not
