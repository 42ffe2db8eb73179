"""Health-gated activation: watch a freshly swapped version before the node commits to it.

Over the window the daemon checks, every ``poll_s``:

- readiness: the edge server answers and serves this version;
- errors: among the requests the edge server answered for this version (its
  own ``edgerec_requests_total``, counted from the swap), the share the model
  failed (HTTP 422 ``inference_failed`` and 5xx; a client's 400 is not the
  model's fault) must stay at or under ``max_error_rate`` once at least
  ``min_errors`` failed;
- latency: the p99 of those requests (``edgerec_request_duration_seconds``)
  must stay under ``max_p99_ms`` once ``min_requests`` were answered;
- scores: the package's warm-up inputs, sent through the edge server's
  inference API to this version, must give the scores the daemon computed
  when it verified the package (and finite ones).

The first failed check ends the window early with its reason. An edge
server that stops answering ends it with :class:`EdgeUnreachableError`: the
daemon cannot tell a crash the version caused from one it did not, so that
counts as an interrupted activation (tried again, up to a limit), not as a
verdict on the version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sync.protocol.errors import ConfigError, EdgeControlError

from .edge_control import EdgeControl, EdgeUnreachableError, parse_metrics, quantile

log = logging.getLogger("edgerec.sync.node.health")
REQUESTS, LATENCY = "edgerec_requests_total", "edgerec_request_duration_seconds_bucket"


@dataclass(frozen=True)
class HealthPolicy:
    window_s: float = 10.0
    poll_s: float = 0.5
    max_error_rate: float = 0.05
    min_errors: int = 3
    max_p99_ms: float = 1000.0
    min_requests: int = 20
    score_rtol: float = 1e-2
    score_atol: float = 1e-3

    def __post_init__(self) -> None:
        checks = [
            (self.window_s >= 0, "health_window_s", "must be >= 0"),
            (self.poll_s > 0, "poll_s", "must be > 0"),
            (0 <= self.max_error_rate <= 1, "max_error_rate", "must be 0..1"),
            (self.min_errors >= 1, "min_errors", "must be >= 1"),
            (self.max_p99_ms > 0, "max_p99_ms", "must be > 0"),
            (self.min_requests >= 1, "min_requests", "must be >= 1"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"{name}: {problem}")


@dataclass(frozen=True)
class Probe:
    """The package's warm-up inputs and the scores the daemon got for them when it verified the package."""

    inputs: Mapping[str, npt.NDArray[Any]]
    expected: npt.NDArray[np.float64]
    output: str


class _Counts:
    def __init__(self, text: str, name: str, version: int) -> None:
        label = str(version)
        self.total = self.errors = 0.0
        self.buckets: dict[float, float] = {}
        for metric, labels, value in parse_metrics(text, {REQUESTS, LATENCY}):
            if labels.get("model") != name or labels.get("version") != label:
                continue
            if metric == REQUESTS:
                self.total += value
                code = int(labels.get("code", "0") or 0)
                if code == 422 or code >= 500:
                    self.errors += value
            else:
                le = float(labels.get("le", "inf"))
                self.buckets[le] = self.buckets.get(le, 0.0) + value

    def minus(self, base: _Counts) -> tuple[float, float, list[tuple[float, float]]]:
        buckets = [(le, c - base.buckets.get(le, 0.0)) for le, c in self.buckets.items()]
        return self.total - base.total, self.errors - base.errors, buckets


def watch(edge: EdgeControl, name: str, version: int, policy: HealthPolicy, probe: Probe | None,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Watch ``name`` v``version`` on the edge server for the window; the reason it failed, or None."""
    try:
        base = _Counts(edge.metrics(), name, version)
    except EdgeUnreachableError:
        raise
    except EdgeControlError as exc:
        return f"health window: cannot read the edge server's metrics ({exc})"
    end = clock() + policy.window_s
    probed = False
    while True:
        why = _check(edge, name, version, policy, base)
        if why is None and probe is not None and not probed:
            why, probed = _probe(edge, name, version, probe, policy), True
        if why is not None:
            return why
        left = end - clock()
        if left <= 0:
            break
        sleep(min(policy.poll_s, left))
    # The scores once more at the end: what serves now is what the node commits to.
    return _probe(edge, name, version, probe, policy) if probe is not None and policy.window_s > 0 else None


def _check(edge: EdgeControl, name: str, version: int, policy: HealthPolicy, base: _Counts) -> str | None:
    try:
        serving = edge.serving()
        text = edge.metrics()
    except EdgeUnreachableError:
        raise
    except EdgeControlError as exc:
        return f"health window: {exc}"
    got = serving.get(name, {}).get("version")
    if got != version:
        return f"health window: the edge server serves {name} v{got} instead of v{version}"
    total, errors, buckets = _Counts(text, name, version).minus(base)
    if errors >= policy.min_errors and errors > policy.max_error_rate * total:
        return (f"health window: {errors:.0f} of {total:.0f} requests to v{version} failed "
                f"({errors / total:.0%} > {policy.max_error_rate:.0%})")
    if total >= policy.min_requests:
        p99 = quantile(0.99, buckets)
        if p99 is not None and p99 * 1000 > policy.max_p99_ms:
            return f"health window: p99 latency of v{version} is {p99 * 1000:.0f} ms (> {policy.max_p99_ms:g} ms)"
    return None


def _probe(edge: EdgeControl, name: str, version: int, probe: Probe, policy: HealthPolicy) -> str | None:
    try:
        got = edge.infer(name, version, probe.inputs, probe.output).ravel()
    except EdgeUnreachableError:
        raise
    except EdgeControlError as exc:
        return f"health window: the warm-up inputs failed on the edge server ({exc})"
    want = probe.expected.ravel()
    if got.shape != want.shape:
        return f"health window: {got.size} warm-up scores from the edge server, {want.size} expected"
    if not np.all(np.isfinite(got)):
        return "health window: the edge server's warm-up scores are not finite"
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not np.allclose(got, want, rtol=policy.score_rtol, atol=policy.score_atol):
        return f"health window: warm-up scores differ from the verified package's by up to {diff:.3g}"
    return None


__all__ = ["HealthPolicy", "Probe", "watch"]
