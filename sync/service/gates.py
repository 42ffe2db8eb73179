"""Rollouts gated on outcomes: an always-valid sequential test per phase.

A gate such as ``ctr>=-1%`` (the canary's CTR at most 1 % below the current
version's, relative) or ``errors<=1%`` (the canary's error rate at most 1 %)
is checked after every window on the privatised fleet figures, through a
normal-mixture confidence sequence (:class:`.stats.ConfidenceSequence`):

* **halt** when the whole interval is on the wrong side of the threshold;
* **pass** when the whole interval is on the right side;
* otherwise keep collecting, up to ``max_windows`` per phase; then **hold**
  (inconclusive: the operator decides).

Because the interval covers the true value at every look at once with
probability >= 1 - alpha_phase, looking after every window inflates nothing:
P(halt | the canary truly meets the gate) <= alpha_phase (false halt) and
P(pass | it truly does not) <= alpha_phase (false advance), per phase and gate.
The gated phases share alpha (alpha_phase = alpha / number of gated phases), so over a
whole rollout the false-halt and the false-advance rates are each <= alpha.
Each phase starts a fresh sequence on that phase's windows only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.gates import Gate, parse_gate
from edgerec.sync.protocol.releases import OpsWindow, Release

from .aggregate import DEFAULT_K, Cell, sum_releases, variant_totals
from .stats import ConfidenceSequence, Estimate, ctr, relative_lift, rho_for


@dataclass(frozen=True)
class GateCheck:
    gate: Gate
    state: str  # "pass", "fail" or "wait"
    estimate: float
    low: float
    high: float

    def reason(self) -> str:
        return (f"{self.gate}: estimate {self.estimate * 100:+.2f}% in [{self.low * 100:+.2f}%, "
                f"{self.high * 100:+.2f}%] (always-valid interval) -> {self.state}")


@dataclass(frozen=True)
class PhaseFigures:
    """Cumulative figures of one phase: canary and control CTR totals (with noise variance) and canary errors."""

    canary_impressions: float = 0.0
    canary_clicks: float = 0.0
    canary_noise_var: float = 0.0
    control_impressions: float = 0.0
    control_clicks: float = 0.0
    control_noise_var: float = 0.0
    canary_requests: int = 0
    canary_errors: int = 0


@dataclass(frozen=True)
class OutcomeGate:
    """The gates of a rollout and the sequential test that checks them."""

    gates: tuple[Gate, ...]
    alpha: float = 0.05
    gated_phases: int = 1
    #: the intrinsic time (information, 1 / variance) at which the interval is made tightest
    target_information: float = 1e5

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"gate alpha: expected a number in (0, 1), got {self.alpha}")

    @property
    def alpha_phase(self) -> float:
        return self.alpha / max(self.gated_phases, 1)

    @property
    def sequence(self) -> ConfidenceSequence:
        return ConfidenceSequence(self.alpha_phase, rho_for(self.alpha_phase, self.target_information))

    def check(self, fig: PhaseFigures) -> list[GateCheck]:
        cs = self.sequence
        out = []
        for g in self.gates:
            if g.metric == "ctr":
                est = relative_lift(ctr(fig.control_clicks, fig.control_impressions, fig.control_noise_var,
                                        fig.control_noise_var),
                                    ctr(fig.canary_clicks, fig.canary_impressions, fig.canary_noise_var,
                                        fig.canary_noise_var))
            else:
                n = fig.canary_requests
                p = fig.canary_errors / n if n else math.nan
                q = (fig.canary_errors + 1) / (n + 2)  # keeps the variance positive at 0 errors
                est = Estimate(p, q * (1 - q) / n if n else math.inf)
            lo, hi = cs.interval(est) if math.isfinite(est.value) else (-math.inf, math.inf)
            good, bad = (lo >= g.threshold, hi < g.threshold) if g.op == ">=" else (hi <= g.threshold,
                                                                                  lo > g.threshold)
            out.append(GateCheck(g, "pass" if good else "fail" if bad else "wait", est.value, lo, hi))
        return out


@dataclass
class RolloutOutcome:
    state: str  # "completed", "halted" or "held"
    phase: int  # index of the phase it ended in (the last one when completed)
    windows: int  # windows looked at in all
    reasons: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)  # canary nodes sent back on a halt


WindowSource = Callable[[set[str], int], tuple[list[tuple[str, Release]], list[tuple[str, OpsWindow]]]]


def canaries(nodes: Sequence[str], percent: float) -> set[str]:
    """The first ceil(percent % of the fleet) nodes in rollout order."""
    return set(nodes[: math.ceil(len(nodes) * percent / 100.0)])


def figures_from_cells(cells: Sequence[Cell], ops: Sequence[tuple[str, OpsWindow]], canary: set[str], model: str,
                       new_version: int, old_version: int) -> PhaseFigures:
    """Canary (new version) and control (old version) totals of released cells; canary errors from ops."""
    ci, cc, cv, _ = variant_totals(cells, {"model": model, "version": new_version})
    oi, oc, ov, _ = variant_totals(cells, {"model": model, "version": old_version})
    req = err = 0
    for node, w in ops:
        if node in canary:
            for m in w.models:
                if m.model == model and m.version == new_version:
                    req += m.requests
                    err += sum(m.errors.values())
    return PhaseFigures(ci, cc, cv, oi, oc, ov, req, err)


def phase_figures(releases: list[tuple[str, Release]], ops: list[tuple[str, OpsWindow]], canary: set[str],
                  model: str, new_version: int, old_version: int, k: int) -> PhaseFigures:
    """:func:`figures_from_cells` of the releases summed with the k-node threshold."""
    return figures_from_cells(sum_releases(releases, k).cells, ops, canary, model, new_version, old_version)


def run_gated_rollout(nodes: Sequence[str], phases: Sequence[float], gate: OutcomeGate, source: WindowSource,
                      model: str, new_version: int, old_version: int, max_windows: int = 12,
                      k: int = DEFAULT_K, start: int = 0) -> RolloutOutcome:
    """Drive a phased rollout over ``source``'s windows; every phase but the last is gated.

    ``source(canary_nodes, window_index)`` returns that window's releases and
    operational windows (the nodes in ``canary_nodes`` serve ``new_version``).
    """
    total = 0
    for i, percent in enumerate(phases):
        canary = canaries(nodes, percent)
        if i == len(phases) - 1:
            return RolloutOutcome("completed", i, total, [f"phase {i + 1} ({percent:g}%) reached: rollout complete"])
        releases: list[tuple[str, Release]] = []
        ops: list[tuple[str, OpsWindow]] = []
        checks: list[GateCheck] = []
        for _ in range(max_windows):
            r, o = source(canary, start + total)
            total += 1
            releases += r
            ops += o
            checks = gate.check(phase_figures(releases, ops, canary, model, new_version, old_version, k))
            if any(c.state == "fail" for c in checks):
                return RolloutOutcome("halted", i, total,
                                      [f"phase {i + 1} ({percent:g}%): " + c.reason() for c in checks
                                       if c.state == "fail"], sorted(canary))
            if all(c.state == "pass" for c in checks):
                break
        else:
            return RolloutOutcome("held", i, total, [f"phase {i + 1} ({percent:g}%): undecided after {max_windows} "
                                                     "windows: " + "; ".join(c.reason() for c in checks)])
    return RolloutOutcome("completed", len(phases) - 1, total)


__all__ = ["Gate", "GateCheck", "OutcomeGate", "PhaseFigures", "RolloutOutcome", "WindowSource", "canaries",
           "figures_from_cells", "parse_gate", "phase_figures", "run_gated_rollout"]
