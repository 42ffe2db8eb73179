"""Estimates with intervals that include the privacy noise, the A/B test, and confidence sequences.

Pure arithmetic (standard library only), so the report, the rollout gate,
the simulator's tests and the benchmark all use the same formulas:

* CTR p = C / I of noisy totals. Clicks given impressions are binomial and
  the node's discrete Laplace noise is independent of them, so by the delta
  method Var(p) ~ (I p (1 - p) + n_C + p² n_I) / I², with n_C, n_I the summed
  noise variances of the click and impression totals.
* Difference d = p_B - p_A with Var(d) = Var(p_A) + Var(p_B) (independent
  users); z = d / sd(d), two-sided p-value 2 (1 - Phi(|z|)).
* Relative lift r = p_B / p_A - 1 with Var(r) ~ Var(p_B) / p_A² + p_B² Var(p_A) / p_A⁴.
* Always-valid two-sided normal-mixture confidence sequence (Robbins 1970;
  Howard, Ramdas, McAuliffe, Sekhon 2021, eq. 14): for a sum S_t of
  centred increments with variance process V_t,
  P(∃t: |S_t| ≥ sqrt((V_t + rho) ln((V_t + rho) / (rho alpha²)))) ≤ alpha. For an
  estimate theta_hat_t with variance v_t, S_t = (theta_hat_t - theta) / v_t and V_t = 1 / v_t
  (information time), so theta lies in theta_hat_t ± v_t u(1 / v_t) at every look at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_N = NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A point estimate and the variance of its sampling and noise error."""

    value: float
    variance: float

    @property
    def se(self) -> float:
        return math.sqrt(max(self.variance, 0.0))

    def interval(self, alpha: float = 0.05) -> tuple[float, float]:
        half = z_quantile(alpha) * self.se
        return self.value - half, self.value + half


def z_quantile(alpha: float) -> float:
    """z_(1 - alpha/2): the two-sided normal critical value."""
    return _N.inv_cdf(1.0 - alpha / 2.0)


def two_sided_p(z: float) -> float:
    return 2.0 * (1.0 - _N.cdf(abs(z))) if math.isfinite(z) else 0.0


def ctr(clicks: float, impressions: float, clicks_noise_var: float, impressions_noise_var: float) -> Estimate:
    """CTR of noisy totals with the delta-method variance (sampling plus noise). NaN when I <= 0."""
    if impressions <= 0:
        return Estimate(math.nan, math.inf)
    p = clicks / impressions
    q = min(max(p, 0.0), 1.0)  # the binomial term needs a probability; noise can push p outside [0, 1]
    var = (impressions * q * (1.0 - q) + clicks_noise_var + p * p * impressions_noise_var) / impressions**2
    return Estimate(p, var)


def difference(control: Estimate, treatment: Estimate) -> Estimate:
    """treatment - control, independent errors."""
    return Estimate(treatment.value - control.value, control.variance + treatment.variance)


def relative_lift(control: Estimate, treatment: Estimate) -> Estimate:
    """treatment / control - 1 with the delta-method variance. NaN when the control is not positive."""
    a, b = control.value, treatment.value
    if not a > 0:
        return Estimate(math.nan, math.inf)
    return Estimate(b / a - 1.0, treatment.variance / a**2 + b * b * control.variance / a**4)


def z_test(diff: Estimate) -> float:
    """Two-sided p-value of H0: the difference is zero."""
    if not diff.variance > 0 or not math.isfinite(diff.value):
        return math.nan
    return two_sided_p(diff.value / diff.se)


def verdict(diff: Estimate, alpha: float = 0.05) -> str:
    """'better', 'worse' or 'not yet significant' for treatment against control."""
    p = z_test(diff)
    if not p < alpha:
        return "not yet significant"
    return "better" if diff.value > 0 else "worse"


# -- always-valid inference --------------------------------------------------------------------


def mixture_boundary(v: float, rho: float, alpha: float) -> float:
    """The two-sided normal-mixture boundary u(V) = sqrt((V + rho) ln((V + rho) / (rho alpha²)))."""
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha)))


def rho_for(alpha: float, intrinsic_time: float) -> float:
    """The rho that makes the boundary tightest (u(V)/V smallest) at V = ``intrinsic_time``.

    Golden-section search in log rho (the function is unimodal there)."""
    lo, hi = math.log(intrinsic_time) - 12.0, math.log(intrinsic_time) + 12.0
    g = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if mixture_boundary(intrinsic_time, math.exp(a), alpha) < mixture_boundary(intrinsic_time, math.exp(b), alpha):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2.0)


@dataclass(frozen=True)
class ConfidenceSequence:
    """Intervals valid at every look at once: P(theta ever outside) <= alpha."""

    alpha: float
    rho: float

    def half_width(self, variance: float) -> float:
        if not variance > 0 or not math.isfinite(variance):
            return math.inf
        info = 1.0 / variance
        return mixture_boundary(info, self.rho, self.alpha) / info

    def interval(self, est: Estimate) -> tuple[float, float]:
        h = self.half_width(est.variance)
        return est.value - h, est.value + h


__all__ = [
    "ConfidenceSequence", "Estimate", "ctr", "difference", "mixture_boundary", "relative_lift", "rho_for",
    "two_sided_p", "verdict", "z_quantile", "z_test",
]
