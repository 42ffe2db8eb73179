"""What a node releases about a window, as node and service both read it.

Two documents leave a node per window, and nothing else of its users does:

* a **business release** (``edgerec.release/1``): impressions, clicks and
  conversions per (model, version, experiment, variant), each user's
  contribution bounded and discrete Laplace noise added on the node (or the
  statement that the day's privacy budget is spent, with no figure);
* an **operational window** (``edgerec.ops/1``): latency and prediction-score
  histograms and error counts per model version. These describe the model and
  the machine, not a user, and carry no noise and no user id.

The parsers check every field and name it in their errors, because the
service reads these from the network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from edgerec.sdk.event_spool import LATENCY_EDGES_MS, SCORE_EDGES  # the edge server's spool uses them too
from edgerec.sdk.manifest import NAME_RE

from .errors import BadRequestError

RELEASE_FORMAT = "edgerec.release/1"
OPS_FORMAT = "edgerec.ops/1"
#: Business event kinds, in the order of every count vector.
KINDS = ("impression", "click", "conversion")
MECHANISMS = ("discrete_laplace", "none")
STATUSES = ("released", "budget_exhausted")
MAX_ROWS = 4096
_MAX_COUNT = 1 << 53


class Key(NamedTuple):
    """What a count is about. ``experiment`` and ``variant`` are ``""`` outside an experiment."""

    model: str
    version: int
    experiment: str
    variant: str


def discrete_laplace_variance(scale: float) -> float:
    """Variance of the discrete Laplace distribution P(k) ∝ exp(-|k| / scale).

    With q = exp(-1/scale), P(k) = (1-q)/(1+q) q^|k| and Var = 2q / (1-q)^2,
    which is 2 scale^2 - 1/6 + O(1/scale^2) for a large scale.
    """
    if scale <= 0:
        return 0.0
    q = math.exp(-1.0 / scale)
    return 2.0 * q / (1.0 - q) ** 2


@dataclass(frozen=True)
class Noise:
    """How a release was perturbed: the mechanism and what the service needs for its variances."""

    mechanism: str
    epsilon: float = 0.0
    sensitivity: int = 0
    scale: float = 0.0
    variance: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        if self.mechanism == "none":
            return {"mechanism": "none", "test_only": True}
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "sensitivity": self.sensitivity,
                "scale": self.scale, "variance": self.variance}


@dataclass(frozen=True)
class Release:
    """One node's business release for one window (counts may be negative: they carry noise)."""

    window_start: int
    window_seconds: int
    status: str
    noise: Noise
    bounds: Mapping[str, int]
    budget_day: str
    budget_limit: float
    budget_spent: float
    counts: Mapping[Key, Mapping[str, int]] = field(default_factory=dict)

    @property
    def released(self) -> bool:
        return self.status == "released"

    def to_doc(self) -> dict[str, Any]:
        rows = [{"model": k.model, "version": k.version, "experiment": k.experiment, "variant": k.variant,
                 **{kind: int(c[kind]) for kind in KINDS if kind in c}}
                for k, c in sorted(self.counts.items())]
        return {
            "format": RELEASE_FORMAT,
            "window": {"start": self.window_start, "seconds": self.window_seconds},
            "status": self.status,
            "noise": self.noise.to_doc(),
            "bounds": dict(self.bounds),
            "budget": {"day": self.budget_day, "limit": self.budget_limit, "spent": self.budget_spent},
            "counts": rows,
        }


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]
    counts: tuple[int, ...]  # len(edges) + 1: the last bucket is the overflow


@dataclass(frozen=True)
class OpsFigures:
    """Operational figures of one model version in one window."""

    model: str
    version: int
    requests: int
    errors: Mapping[str, int]
    latency_ms: Histogram
    scores: Histogram


@dataclass(frozen=True)
class OpsWindow:
    window_start: int
    window_seconds: int
    models: Sequence[OpsFigures]

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": OPS_FORMAT,
            "window": {"start": self.window_start, "seconds": self.window_seconds},
            "models": [{"model": m.model, "version": m.version, "requests": m.requests, "errors": dict(m.errors),
                        "latency_ms": {"edges": list(m.latency_ms.edges), "counts": list(m.latency_ms.counts)},
                        "scores": {"edges": list(m.scores.edges), "counts": list(m.scores.counts)}}
                       for m in self.models],
        }


# -- parsing (the service's side) --------------------------------------------------------------


def _obj(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequestError(f"{where}: expected an object")
    return doc


def _int(value: Any, where: str, lo: int = -_MAX_COUNT, hi: int = _MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequestError(f"{where}: expected an integer in [{lo}, {hi}]")
    return value


def _num(value: Any, where: str, lo: float = 0.0, hi: float = 1e12) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise BadRequestError(f"{where}: expected a number in [{lo}, {hi}]")
    return float(value)


def _label(value: Any, where: str, empty: bool = False) -> str:
    if empty and value == "":
        return ""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise BadRequestError(f"{where}: expected a lower-case name")
    return value


def _window(doc: dict[str, Any]) -> tuple[int, int]:
    w = _obj(doc.get("window"), "window")
    seconds = _int(w.get("seconds"), "window.seconds", 1, 7 * 86400)
    start = _int(w.get("start"), "window.start", 0, 1 << 40)
    if start % seconds:
        raise BadRequestError("window.start: expected a multiple of window.seconds")
    return start, seconds


def _noise(doc: Any) -> Noise:
    n = _obj(doc, "noise")
    mech = n.get("mechanism")
    if mech not in MECHANISMS:
        raise BadRequestError(f"noise.mechanism: expected one of {', '.join(MECHANISMS)}")
    if mech == "none":
        if n.get("test_only") is not True:
            raise BadRequestError("noise.test_only: a noise-free release must say it is for tests only")
        return Noise("none")
    eps = _num(n.get("epsilon"), "noise.epsilon", 1e-6, 100.0)
    sens = _int(n.get("sensitivity"), "noise.sensitivity", 1, 1_000_000)
    scale = _num(n.get("scale"), "noise.scale", 1e-9, 1e12)
    variance = _num(n.get("variance"), "noise.variance", 0.0, 1e30)
    if not math.isclose(scale, sens / eps, rel_tol=1e-6):
        raise BadRequestError("noise.scale: expected sensitivity / epsilon")
    if not math.isclose(variance, discrete_laplace_variance(scale), rel_tol=1e-6):
        raise BadRequestError("noise.variance: expected the discrete Laplace variance of noise.scale")
    return Noise(mech, eps, sens, scale, variance)


def parse_release(doc: Any) -> Release:
    """A business release from JSON; BadRequestError naming the field otherwise."""
    doc = _obj(doc, "release")
    if doc.get("format") != RELEASE_FORMAT:
        raise BadRequestError(f"format: expected {RELEASE_FORMAT!r}")
    start, seconds = _window(doc)
    status = doc.get("status")
    if status not in STATUSES:
        raise BadRequestError(f"status: expected one of {', '.join(STATUSES)}")
    noise = _noise(doc.get("noise"))
    raw_bounds = _obj(doc.get("bounds"), "bounds")
    if not raw_bounds or set(raw_bounds) - set(KINDS):
        raise BadRequestError(f"bounds: expected bounds for some of {', '.join(KINDS)}")
    bounds = {k: _int(v, f"bounds.{k}", 1, 10_000) for k, v in raw_bounds.items()}
    if noise.mechanism != "none" and noise.sensitivity != sum(bounds.values()):
        raise BadRequestError("noise.sensitivity: expected the sum of the bounds")
    b = _obj(doc.get("budget"), "budget")
    day = b.get("day")
    if not isinstance(day, str) or len(day) != 10:
        raise BadRequestError("budget.day: expected YYYY-MM-DD")
    limit, spent = _num(b.get("limit"), "budget.limit", 0.0, 1e6), _num(b.get("spent"), "budget.spent", 0.0, 1e6)
    rows = doc.get("counts")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise BadRequestError(f"counts: expected a list of at most {MAX_ROWS}")
    if status != "released" and rows:
        raise BadRequestError("counts: a release without budget carries no figure")
    counts: dict[Key, dict[str, int]] = {}
    for i, raw in enumerate(rows):
        where = f"counts[{i}]"
        r = _obj(raw, where)
        key = Key(_label(r.get("model"), f"{where}.model"), _int(r.get("version"), f"{where}.version", 0),
                  _label(r.get("experiment"), f"{where}.experiment", empty=True),
                  _label(r.get("variant"), f"{where}.variant", empty=True))
        if key in counts:
            raise BadRequestError(f"{where}: repeats an earlier row's key")
        if set(r) - {"model", "version", "experiment", "variant", *bounds}:
            raise BadRequestError(f"{where}: unknown field {sorted(set(r) - set(Key._fields) - set(bounds))[0]}")
        counts[key] = {kind: _int(r.get(kind), f"{where}.{kind}") for kind in KINDS if kind in bounds}
    return Release(start, seconds, status, noise, bounds, day, limit, spent, counts)


def _hist(doc: Any, where: str, edges: tuple[float, ...]) -> Histogram:
    h = _obj(doc, where)
    got = h.get("edges")
    if not isinstance(got, list) or [float(e) for e in got if isinstance(e, int | float)] != list(edges):
        raise BadRequestError(f"{where}.edges: expected the protocol's fixed bucket edges")
    counts = h.get("counts")
    if not isinstance(counts, list) or len(counts) != len(edges) + 1:
        raise BadRequestError(f"{where}.counts: expected {len(edges) + 1} counts")
    return Histogram(edges, tuple(_int(c, f"{where}.counts[{j}]", 0) for j, c in enumerate(counts)))


def parse_ops(doc: Any) -> OpsWindow:
    """An operational window from JSON; BadRequestError naming the field otherwise."""
    doc = _obj(doc, "ops")
    if doc.get("format") != OPS_FORMAT:
        raise BadRequestError(f"format: expected {OPS_FORMAT!r}")
    start, seconds = _window(doc)
    models = doc.get("models")
    if not isinstance(models, list) or len(models) > MAX_ROWS:
        raise BadRequestError(f"models: expected a list of at most {MAX_ROWS}")
    out = []
    for i, raw in enumerate(models):
        where = f"models[{i}]"
        m = _obj(raw, where)
        errors = _obj(m.get("errors", {}), f"{where}.errors")
        out.append(OpsFigures(
            _label(m.get("model"), f"{where}.model"), _int(m.get("version"), f"{where}.version", 0),
            _int(m.get("requests"), f"{where}.requests", 0),
            {_label(k, f"{where}.errors key"): _int(v, f"{where}.errors.{k}", 0) for k, v in errors.items()},
            _hist(m.get("latency_ms"), f"{where}.latency_ms", LATENCY_EDGES_MS),
            _hist(m.get("scores"), f"{where}.scores", SCORE_EDGES),
        ))
    return OpsWindow(start, seconds, out)


__all__ = [
    "KINDS", "LATENCY_EDGES_MS", "MECHANISMS", "OPS_FORMAT", "RELEASE_FORMAT", "SCORE_EDGES", "STATUSES",
    "Histogram", "Key", "Noise", "OpsFigures", "OpsWindow", "Release", "discrete_laplace_variance",
    "parse_ops", "parse_release",
]
