"""Fleet totals of the nodes' private releases, the k-node threshold, and the A/B report.

Pure functions over parsed releases, so the service (reading its database),
the simulator's tests and the benchmark share them.

* A window's figure for a key (model, version, experiment, variant) is the
  sum of the nodes' noisy counts; its noise variance is the sum of the nodes'
  (each release states its own). It is released only when at least ``k``
  nodes contributed to that key and window; otherwise it is withheld.
* The A/B report sums the released window figures of one experiment per
  variant (withheld windows are left out, never summed in), and compares each
  variant with the control through :mod:`.stats`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgerec.sync.protocol.errors import BadRequestError
from edgerec.sync.protocol.releases import Key, Release

from .stats import Estimate, ctr, difference, relative_lift, verdict, z_test

DEFAULT_K = 5


@dataclass
class Cell:
    """The fleet total of one key in one window."""

    window_start: int
    window_seconds: int
    key: Key
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    noise_variance: float = 0.0  # of each kind's total (every kind of a release has the same noise)
    nodes: set[str] = field(default_factory=set)
    epsilon: dict[str, float] = field(default_factory=dict)  # node -> epsilon of its release
    released: bool = False


@dataclass
class FleetWindows:
    """Cells per (window, key), each released or withheld, and the nodes that said their budget was spent."""

    cells: list[Cell]
    exhausted: dict[tuple[int, int], set[str]]
    k: int

    def released(self) -> list[Cell]:
        return [c for c in self.cells if c.released]


#: One node's released counts of one key in one window, flattened:
#: (node, window_start, window_seconds, key, counts by kind, noise variance, epsilon).
Row = tuple[str, int, int, Key, Mapping[str, int], float, float]


def release_rows(releases: Iterable[tuple[str, Release]]) -> tuple[list[Row], dict[tuple[int, int], set[str]]]:
    """Flatten releases into rows; the nodes that said their budget was spent, per window, apart."""
    rows: list[Row] = []
    exhausted: dict[tuple[int, int], set[str]] = defaultdict(set)
    for node, rel in releases:
        if not rel.released:
            exhausted[(rel.window_start, rel.window_seconds)].add(node)
            continue
        rows.extend((node, rel.window_start, rel.window_seconds, key, counts, rel.noise.variance, rel.noise.epsilon)
                    for key, counts in rel.counts.items())
    return rows, dict(exhausted)


def sum_rows(rows: Iterable[Row], exhausted: dict[tuple[int, int], set[str]], k: int = DEFAULT_K) -> FleetWindows:
    """Sum per window and key; a cell is released only with >= k nodes (one row per node counts)."""
    cells: dict[tuple[int, int, Key], Cell] = {}
    for node, start, seconds, key, counts, variance, epsilon in rows:
        where = (start, seconds, key)
        cell = cells.get(where)
        if cell is None:
            cell = cells[where] = Cell(start, seconds, key)
        if node in cell.nodes:
            continue  # one release per node and window
        cell.nodes.add(node)
        cell.epsilon[node] = epsilon
        cell.noise_variance += variance
        for kind, n in counts.items():
            cell.counts[kind] += n
    for cell in cells.values():
        cell.released = len(cell.nodes) >= k
    ordered = sorted(cells.values(), key=lambda c: (c.window_start, c.window_seconds, c.key))
    return FleetWindows(ordered, exhausted, k)


def sum_releases(releases: Iterable[tuple[str, Release]], k: int = DEFAULT_K) -> FleetWindows:
    """Sum the nodes' releases per window and key; a cell is released only with >= k nodes."""
    rows, exhausted = release_rows(releases)
    return sum_rows(rows, exhausted, k)


@dataclass(frozen=True)
class VariantRow:
    variant: str
    versions: tuple[int, ...]
    impressions: int
    clicks: int
    conversions: int
    ctr: Estimate
    diff: Estimate | None  # CTR difference against the control
    lift: Estimate | None  # relative CTR lift against the control
    p_value: float | None
    verdict: str | None
    windows: int
    nodes: int


@dataclass(frozen=True)
class ABReport:
    experiment: str
    control: str
    alpha: float
    k: int
    rows: tuple[VariantRow, ...]
    windows_released: int
    windows_withheld: int
    epsilon_per_user: float  # the most any one node spent on the windows in this report
    series: tuple[dict[str, Any], ...]  # per window and variant: CTR with its interval, for plots

    def to_doc(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, float | None] | None:
            if e is None:
                return None
            lo, hi = e.interval(self.alpha)
            return {"value": _num(e.value), "se": _num(e.se), "low": _num(lo), "high": _num(hi)}

        return {
            "experiment": self.experiment, "control": self.control, "alpha": self.alpha, "k": self.k,
            "windows_released": self.windows_released, "windows_withheld": self.windows_withheld,
            "epsilon_per_user": self.epsilon_per_user,
            "variants": [{
                "variant": r.variant, "versions": list(r.versions), "impressions": r.impressions,
                "clicks": r.clicks, "conversions": r.conversions, "ctr": est(r.ctr), "difference": est(r.diff),
                "lift": est(r.lift), "p_value": None if r.p_value is None else _num(r.p_value),
                "verdict": r.verdict, "windows": r.windows, "nodes": r.nodes,
            } for r in self.rows],
            "series": [_finite(p) for p in self.series],
        }


def _num(x: float) -> float | None:
    """A figure for JSON: no estimate (no impressions yet, say) is null, never NaN."""
    return x if math.isfinite(x) else None


def _finite(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: _num(v) if isinstance(v, float) else v for k, v in doc.items()}


def variant_ctr(impressions: float, clicks: float, noise_var: float) -> Estimate:
    return ctr(clicks, impressions, noise_var, noise_var)


def ab_report(fleet: FleetWindows, experiment: str, variants: Sequence[str] | None = None,
              control: str | None = None, alpha: float = 0.05) -> ABReport:
    """Per variant totals, CTR, difference and lift against the control, p-value and verdict.

    ``variants`` (in order, the first being the control unless ``control``
    names one) come from the experiment's definition; without it, the
    variants seen, sorted, with "control" first when there is one.
    """
    cells = [c for c in fleet.cells if c.key.experiment == experiment]
    released = [c for c in cells if c.released]
    seen = sorted({c.key.variant for c in cells})
    order = list(variants) if variants else sorted(seen, key=lambda v: (v != "control", v))
    if not order:
        return ABReport(experiment, control or "", alpha, fleet.k, (), 0, 0, 0.0, ())
    control = control or order[0]
    if control not in order:
        raise BadRequestError(f"not one of the variants ({', '.join(order)})", field="control")
    totals: dict[str, dict[str, float]] = {v: defaultdict(float) for v in order}
    versions: dict[str, set[int]] = defaultdict(set)
    windows: dict[str, set[tuple[int, int]]] = defaultdict(set)
    nodes: dict[str, set[str]] = defaultdict(set)
    spent: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    series: list[dict[str, Any]] = []
    per_window: dict[tuple[int, int, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c in released:
        if c.key.variant not in totals:
            continue
        t = totals[c.key.variant]
        for kind, n in c.counts.items():
            t[kind] += n
        t["noise_var"] += c.noise_variance
        versions[c.key.variant].add(c.key.version)
        windows[c.key.variant].add((c.window_start, c.window_seconds))
        nodes[c.key.variant].update(c.nodes)
        for node, eps in c.epsilon.items():
            spent[node][(c.window_start, c.window_seconds)] = eps
        w = per_window[(c.window_start, c.window_seconds, c.key.variant)]
        w["impression"] += c.counts.get("impression", 0)
        w["click"] += c.counts.get("click", 0)
        w["noise_var"] += c.noise_variance
    for (start, seconds, variant), w in sorted(per_window.items()):
        e = variant_ctr(w["impression"], w["click"], w["noise_var"])
        lo, hi = e.interval(alpha)
        series.append({"window_start": start, "window_seconds": seconds, "variant": variant,
                       "ctr": _num(e.value), "low": _num(lo), "high": _num(hi)})
    estimates = {v: variant_ctr(t["impression"], t["click"], t["noise_var"]) for v, t in totals.items()}
    rows = []
    for v in order:
        t, e = totals[v], estimates[v]
        is_control = v == control
        d = None if is_control else difference(estimates[control], e)
        rows.append(VariantRow(
            v, tuple(sorted(versions[v])), round(t["impression"]), round(t["click"]), round(t["conversion"]), e,
            d, None if is_control else relative_lift(estimates[control], e),
            None if d is None else z_test(d), None if d is None else verdict(d, alpha),
            len(windows[v]), len(nodes[v])))
    all_windows = {(c.window_start, c.window_seconds) for c in cells}
    shown = {(c.window_start, c.window_seconds) for c in released}
    eps = max((sum(w.values()) for w in spent.values()), default=0.0)
    return ABReport(experiment, control, alpha, fleet.k, tuple(rows), len(shown), len(all_windows - shown),
                    round(eps, 6), tuple(series))


def variant_totals(cells: Iterable[Cell], where: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """(impressions, clicks, noise variance, nodes) summed over released cells whose key matches ``where``."""
    imp = clk = var = 0.0
    nodes: set[str] = set()
    for c in cells:
        if c.released and all(getattr(c.key, f) == v for f, v in where.items()):
            imp += c.counts.get("impression", 0)
            clk += c.counts.get("click", 0)
            var += c.noise_variance
            nodes |= c.nodes
    return imp, clk, var, len(nodes)


__all__ = ["DEFAULT_K", "ABReport", "Cell", "FleetWindows", "Row", "VariantRow", "ab_report", "release_rows",
           "sum_releases", "sum_rows", "variant_ctr", "variant_totals"]
