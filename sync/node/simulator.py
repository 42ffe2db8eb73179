"""Simulated users clicking at planted rates on simulated nodes, producing the nodes' real releases.

Used by the tests, the benchmark and the demo: each simulated node runs the
node's own :class:`~.privacy.Releaser` (OpenDP noise, contribution bounds,
budget ledger), so what comes out is exactly what a node would send.

Three ways in:

* :func:`user_events` yields one event at a time with a user id, for feeding
  :class:`~.fleet_metrics.EventWindows` (bounding is exercised);
* :func:`bounded_totals` draws a window's bounded totals directly (numpy),
  which is what bounding leaves when each user has at most ``L`` of each
  kind; used for fleets of hundreds of nodes over many seeds;
* :func:`drive_edge` plays the users against a real edge server over HTTP
  (its experiment picks each user's variant; the user clicks at that arm's
  planted rate), so the events take the node's real path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from edgerec.sdk.errors import EdgeRecError
from edgerec.sync.protocol.releases import KINDS, Key, Release

from .privacy import MemoryBudgetLedger, PrivacyConfig, Releaser, opendp_laplace


@dataclass(frozen=True)
class Arm:
    """A variant served to a share of users, with its planted click and conversion rates."""

    variant: str
    version: int
    ctr: float
    weight: float = 1.0
    conversion_rate: float = 0.0  # per click


def _users_per_arm(rng: np.random.Generator, users: int, arms: Sequence[Arm]) -> np.ndarray:
    w = np.array([a.weight for a in arms], dtype=float)
    return rng.multinomial(users, w / w.sum())


def user_events(rng: np.random.Generator, model: str, experiment: str, arms: Sequence[Arm], users: int,
                impressions_per_user: int, user_prefix: str = "u") -> Iterator[tuple[str, Key, str]]:
    """(user id, key, kind) events of one window: each user sees ``impressions_per_user`` items."""
    idx = rng.choice(len(arms), size=users, p=np.array([a.weight for a in arms]) / sum(a.weight for a in arms))
    for u in range(users):
        arm = arms[int(idx[u])]
        key = Key(model, arm.version, experiment, arm.variant)
        uid = f"{user_prefix}{u}"
        for _ in range(impressions_per_user):
            yield uid, key, "impression"
            if rng.random() < arm.ctr:
                yield uid, key, "click"
                if rng.random() < arm.conversion_rate:
                    yield uid, key, "conversion"


def bounded_totals(rng: np.random.Generator, model: str, experiment: str, arms: Sequence[Arm], users: int,
                   impressions_per_user: int, bounds: dict[str, int]) -> dict[Key, dict[str, int]]:
    """A window's totals after contribution bounding, drawn per arm (independent Bernoulli clicks)."""
    out: dict[Key, dict[str, int]] = {}
    per_arm = _users_per_arm(rng, users, arms)
    imp_bound = min(impressions_per_user, bounds.get("impression", impressions_per_user))
    for arm, count in zip(arms, per_arm, strict=True):
        n = int(count)
        row = dict.fromkeys(bounds, 0)
        if "impression" in bounds:
            row["impression"] = n * imp_bound
        # Clicks come from all the user's impressions, conversions from all their clicks: the bounds
        # limit what is released, not behaviour. When no user can pass a bound (each user's events
        # of a kind are at most impressions_per_user), the totals are plain binomials.
        ipu = impressions_per_user
        if ipu <= bounds.get("click", ipu) and ipu <= bounds.get("conversion", ipu):
            clicks = int(rng.binomial(n * ipu, arm.ctr))
            conversions = int(rng.binomial(clicks, arm.conversion_rate))
        else:
            clicks_u = rng.binomial(ipu, arm.ctr, size=n)
            conv_u = rng.binomial(clicks_u, arm.conversion_rate)
            clicks = int(np.minimum(clicks_u, bounds.get("click", ipu)).sum())
            conversions = int(np.minimum(conv_u, bounds.get("conversion", ipu)).sum())
        if "click" in bounds:
            row["click"] = clicks
        if "conversion" in bounds:
            row["conversion"] = conversions
        out[Key(model, arm.version, experiment, arm.variant)] = row
    return out


class PrefetchedNoise:
    """OpenDP discrete Laplace samples drawn in large batches and handed out in order.

    Each sample is an independent draw at the same scale, so slicing a batch is
    the same distribution as one OpenDP call per release; it only saves the
    per-call overhead when a simulation makes hundreds of thousands of releases.
    """

    def __init__(self, max_batch: int = 50_000) -> None:
        self.max_batch = max_batch
        self._buf: dict[float, tuple[list[int], int]] = {}
        self._batch: dict[float, int] = {}

    def __call__(self, values: Sequence[int], scale: float) -> list[int]:
        buf, pos = self._buf.get(scale, ([], 0))
        if pos + len(values) > len(buf):
            # batches double up to max_batch, so a short simulation draws little more than it uses
            batch = self._batch[scale] = min(self.max_batch, 2 * self._batch.get(scale, 128))
            buf, pos = buf[pos:] + opendp_laplace([0] * max(batch, len(values)), scale), 0
        noise = buf[pos:pos + len(values)]
        self._buf[scale] = (buf, pos + len(values))
        return [v + e for v, e in zip(values, noise, strict=True)]


@dataclass
class SimNode:
    """One simulated node: its users per window and the arms it serves, with its own releaser."""

    node_id: str
    users: int
    impressions_per_user: int
    arms: Sequence[Arm]
    releaser: Releaser

    def window(self, rng: np.random.Generator, start: int, model: str, experiment: str) -> Release:
        cfg = self.releaser.config
        totals = bounded_totals(rng, model, experiment, self.arms, self.users, self.impressions_per_user,
                                cfg.bounds)
        return self.releaser.release_totals(start, cfg.window_seconds, totals)


@dataclass
class Fleet:
    """Simulated nodes of one model and experiment; :meth:`window` returns every node's release."""

    model: str
    experiment: str
    nodes: list[SimNode]
    rng: np.random.Generator
    releases: list[tuple[str, Release]] = field(default_factory=list)

    def window(self, start: int) -> list[tuple[str, Release]]:
        out = [(n.node_id, n.window(self.rng, start, self.model, self.experiment)) for n in self.nodes]
        self.releases.extend(out)
        return out


def make_fleet(seed: int, nodes: int, arms: Sequence[Arm], users: int, impressions_per_user: int = 1,
               config: PrivacyConfig | None = None, model: str = "ctr", experiment: str = "exp",
               node_arms: Sequence[Sequence[Arm]] | None = None, noise: PrefetchedNoise | None = None) -> Fleet:
    """``nodes`` simulated nodes with the same privacy configuration, each with an in-memory ledger.

    ``node_arms`` gives each node its own arms (a canary node serves only the
    new version, say); otherwise every node splits its users over ``arms``.
    """
    cfg = config or PrivacyConfig()
    noise = noise or PrefetchedNoise()
    sims = [SimNode(f"node-{i:04d}", users, impressions_per_user, node_arms[i] if node_arms else arms,
                    Releaser(cfg, MemoryBudgetLedger(), noise=noise)) for i in range(nodes)]
    return Fleet(model, experiment, sims, np.random.default_rng(seed))


def drive_edge(client: httpx.Client, experiment: str, arms: Sequence[Arm], users: int, rng: np.random.Generator,
               user_prefix: str = "u", candidates: int = 20) -> dict[str, dict[str, int]]:
    """Each user ranks once in ``experiment`` on the edge server ``client`` points at, sees the top item
    (an impression) and clicks it at the planted rate of the variant the server chose; per variant, the
    impressions and clicks sent (the edge server accepted all of them, or EdgeRecError says why)."""
    rates = {a.variant: a.ctr for a in arms}
    sent: dict[str, dict[str, int]] = {a.variant: {"impression": 0, "click": 0} for a in arms}
    ctx = {"ctx": [0.1, 0.2, 0.3, 0.4]}
    for u in range(users):
        r = client.post("/v1/rank", json={"experiment": experiment, "user": {"id": f"{user_prefix}{u}"},
                                          "candidates": list(range(candidates)), "context": ctx, "top_k": 1})
        if r.status_code != 200:
            raise SimulationError(f"rank: HTTP {r.status_code}: {r.text[:200]}")
        doc = r.json()
        variant, rid, item = doc["variant"], doc["response_id"], doc["items"][0]["item"]
        if variant not in rates:
            raise SimulationError(f"the edge server chose variant {variant!r}, which has no planted rate")
        events = [{"type": "impression", "response_id": rid, "item": item}]
        if rng.random() < rates[variant]:
            events.append({"type": "click", "response_id": rid, "item": item})
        r = client.post("/v1/events", json={"events": events})
        if r.status_code != 200 or r.json().get("accepted") != len(events):
            raise SimulationError(f"events: HTTP {r.status_code}: {r.text[:200]}")
        for e in events:
            sent[variant][e["type"]] += 1
    return sent


class SimulationError(EdgeRecError):
    """The edge server refused what the simulated users sent."""


__all__ = ["KINDS", "Arm", "Fleet", "PrefetchedNoise", "SimNode", "SimulationError", "bounded_totals",
           "drive_edge", "make_fleet", "user_events"]
