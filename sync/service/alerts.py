"""Alerts per node and for the fleet, evaluated from the current state (so an alert clears when its cause goes).

From the nodes' operational windows (:func:`ops_alerts`), per node and for the
fleet (all nodes' windows merged), per model version:

* ``p99_latency``: the p99 latency (upper edge of the histogram bucket that
  holds it) over the SLO;
* ``error_rate``: errors / requests over the threshold;
* ``score_drift``: population stability index of the served scores against
  the reference distribution the converter stored in the package,
  PSI = sum (a_i - e_i) ln(a_i / e_i) over the 20 score bins (proportions
  floored at 1e-4), over the threshold (0.2 is the usual "significant shift").

An alert is open when the node's (or fleet's) latest window breaks the rule;
"since" is the start of the unbroken run of breaking windows ending there.
Windows with fewer than ``min_requests`` requests are not judged.

From the fleet view (:func:`fleet_alerts`): a node silent for too long, a
node whose installed version differs from its desired one for too long, and
a node that is checking in but serves no model.
"""

from __future__ import annotations

import json
import math
import threading
import time
import weakref
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.errors import BlobUnavailableError
from edgerec.sync.protocol.releases import LATENCY_EDGES_MS, SCORE_EDGES, OpsFigures, OpsWindow
from edgerec.sync.service.store.models import Assignment, Node, NodeModel, PackageVersion

from .blobs import Blobs
from .config import ServiceConfig
from .fleet_metrics import load_ops

_FLOOR = 1e-4
#: Every alert kind, in the order /metrics lists their counts.
ALERT_KINDS = ("p99_latency", "error_rate", "score_drift", "node_silent", "version_mismatch", "serving_nothing")


@dataclass(frozen=True)
class AlertPolicy:
    p99_ms: float = 250.0
    error_rate: float = 0.01
    psi: float = 0.2
    min_requests: int = 100
    silent_s: float = 900.0
    mismatch_s: float = 3600.0

    @classmethod
    def of(cls, c: ServiceConfig) -> AlertPolicy:
        """The thresholds the service was started with."""
        return cls(c.alert_p99_ms, c.alert_error_rate, c.alert_psi, c.alert_min_requests, c.alert_silent_s,
                   c.alert_mismatch_s)


@dataclass(frozen=True)
class Alert:
    kind: str
    scope: str  # "fleet" or a node id
    subject: str  # "model vN", or the model
    since: float
    value: float
    threshold: float
    detail: str

    def to_doc(self) -> dict[str, object]:
        return asdict(self)


def percentile_ms(latency_counts: Sequence[int], q: float) -> float:
    """The upper edge of the bucket that holds the ``q`` quantile (inf in the overflow bucket, nan if empty)."""
    n = sum(latency_counts)
    if n == 0:
        return math.nan
    want, acc = q * n, 0
    for i, c in enumerate(latency_counts):
        acc += c
        if acc >= want:
            return LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else math.inf
    return math.inf


def p99_ms(latency_counts: Sequence[int]) -> float:
    """The upper edge of the bucket that holds the 99th percentile (inf in the overflow bucket)."""
    return percentile_ms(latency_counts, 0.99)


def psi(actual: Sequence[int], expected: Sequence[int]) -> float:
    """Population stability index of two histograms over the same bins."""
    na, ne = sum(actual), sum(expected)
    if na == 0 or ne == 0:
        return math.nan
    total = 0.0
    for a, e in zip(actual, expected, strict=True):
        pa, pe = max(a / na, _FLOOR), max(e / ne, _FLOOR)
        total += (pa - pe) * math.log(pa / pe)
    return total


def merge_figures(figs: Iterable[OpsFigures]) -> tuple[int, int, list[int], list[int]]:
    """(requests, errors, latency histogram, score histogram) of several figures summed."""
    req = err = 0
    lat = [0] * (len(LATENCY_EDGES_MS) + 1)
    sc = [0] * (len(SCORE_EDGES) + 1)
    for f in figs:
        req += f.requests
        err += sum(f.errors.values())
        lat = [a + b for a, b in zip(lat, f.latency_ms.counts, strict=True)]
        sc = [a + b for a, b in zip(sc, f.scores.counts, strict=True)]
    return req, err, lat, sc


def _judge(req: int, err: int, lat: list[int], sc: list[int], ref: Sequence[int] | None,
           policy: AlertPolicy) -> dict[str, tuple[float, float]]:
    """The rules this window breaks: kind -> (value, threshold)."""
    broken: dict[str, tuple[float, float]] = {}
    if req < policy.min_requests:
        return broken
    p99 = p99_ms(lat)
    if p99 > policy.p99_ms:
        broken["p99_latency"] = (p99, policy.p99_ms)
    if err / req > policy.error_rate:
        broken["error_rate"] = (err / req, policy.error_rate)
    if ref is not None and len(ref) == len(SCORE_EDGES) and sum(sc) >= policy.min_requests:
        drift = psi(sc[: len(SCORE_EDGES)], ref)
        if drift > policy.psi:
            broken["score_drift"] = (drift, policy.psi)
    return broken


_UNITS = {"p99_latency": "ms", "error_rate": "", "score_drift": ""}


def ops_alerts(ops: Sequence[tuple[str, OpsWindow]], references: Mapping[tuple[str, int], Sequence[int]],
               policy: AlertPolicy) -> list[Alert]:
    """Open alerts from operational windows, per node and for the fleet."""
    # scope -> (model, version) -> window start -> figures
    series: dict[str, dict[tuple[str, int], dict[int, list[OpsFigures]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for node, w in ops:
        for f in w.models:
            series[node][(f.model, f.version)][w.window_start].append(f)
            series["fleet"][(f.model, f.version)][w.window_start].append(f)
    out = []
    for scope, per_model in sorted(series.items()):
        for (model, version), windows in sorted(per_model.items()):
            ref = references.get((model, version))
            starts = sorted(windows)
            judged = [(s, _judge(*merge_figures(windows[s]), ref, policy)) for s in starts]
            latest_start, latest = judged[-1]
            for kind, (value, threshold) in sorted(latest.items()):
                since = latest_start
                for s, broken in reversed(judged[:-1]):
                    if kind not in broken:
                        break
                    since = s
                unit = _UNITS[kind]
                out.append(Alert(kind, scope, f"{model} v{version}", float(since), value, threshold,
                                 f"{kind.replace('_', ' ')} {value:.4g}{unit} over {threshold:g}{unit}"))
    return out


def fleet_alerts(session: Session, policy: AlertPolicy, now: float) -> list[Alert]:
    """Silent nodes, versions other than desired for too long, nodes that check in but serve nothing."""
    out = []
    nodes = session.execute(select(Node).where(Node.revoked_at.is_(None))).scalars().all()
    installed: dict[str, dict[str, NodeModel]] = defaultdict(dict)
    for row in session.execute(select(NodeModel)).scalars():
        installed[row.node_id][row.model] = row
    desired: dict[str, list[Assignment]] = defaultdict(list)
    for a in session.execute(select(Assignment)).scalars():
        desired[a.node_id].append(a)
    for n in nodes:
        seen = n.last_seen if n.last_seen is not None else n.enrolled
        if now - seen > policy.silent_s:
            out.append(Alert("node_silent", n.id, "node", seen, now - seen, policy.silent_s,
                             f"no check-in for {now - seen:.0f} s"))
            continue
        for a in desired[n.id]:
            nm = installed[n.id].get(a.model)
            have = nm.installed_version if nm is not None else None
            if have != a.version and now - a.updated > policy.mismatch_s:
                out.append(Alert("version_mismatch", n.id, a.model, a.updated, now - a.updated, policy.mismatch_s,
                                 f"serves {have if have is not None else 'nothing'} of {a.model}, "
                                 f"desired v{a.version}"))
        if desired[n.id] and all(m.installed_version is None for m in installed[n.id].values()):
            since = min(a.updated for a in desired[n.id])
            if now - since > policy.mismatch_s:
                out.append(Alert("serving_nothing", n.id, "node", since, now - since, policy.mismatch_s,
                                 "checks in but serves no model"))
    return out


# Reference histograms by package blob: a published blob never changes, so each process reads each
# package's manifest once (bounded: one entry per published version, at most _MAX_REFS). A read that
# failed is tried again _RETRY_S later, not at every scrape: with the package store down (an S3 bucket
# that does not answer costs a read its connect timeouts) a scrape would otherwise wait on every package.
_REFS: dict[str, list[int] | None] = {}
# Per store (a test process may hold several): blob (or _STORE) -> when its read failed.
_FAILED: weakref.WeakKeyDictionary[Blobs, dict[str, float]] = weakref.WeakKeyDictionary()
_REFS_LOCK = threading.Lock()
_MAX_REFS = 4096
_RETRY_S = 60.0
# What reading a package's manifest may raise: the store, or a blob that is not (yet) a package.
_READ_ERRORS = (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile)
_STORE = "store"  # the key in _FAILED of when a read last found the package store itself unreachable


def _reference(blobs: Blobs, sha256: str, now: float, store_down: bool = False) -> list[int] | None:
    """The package's reference histogram (None: none, or not read now); BlobUnavailableError when its store
    cannot be reached. ``store_down``: only what is cached."""
    with _REFS_LOCK:
        if sha256 in _REFS:
            return _REFS[sha256]
        failed = _FAILED.setdefault(blobs, {})
        if store_down or now - failed.get(sha256, -_RETRY_S) < _RETRY_S:
            return None
    hist = None
    try:  # the zip's directory and manifest only, not the whole (possibly large) package
        with blobs.open(sha256) as fh, zipfile.ZipFile(fh) as zf:
            manifest = json.loads(zf.read("manifest.json"))
        hist = (manifest.get("score_distribution") or {}).get("histogram")
    except _READ_ERRORS:
        with _REFS_LOCK:
            if len(failed) >= _MAX_REFS:
                failed.clear()
            failed[sha256] = now  # not cached: a blob still being written is read again later
        raise
    if not (isinstance(hist, list) and len(hist) == len(SCORE_EDGES) and all(isinstance(h, int) for h in hist)):
        hist = None
    with _REFS_LOCK:
        if len(_REFS) >= _MAX_REFS:
            _REFS.clear()
        _REFS[sha256] = hist
    return hist


def reference_histograms(session: Session, blobs: Blobs, now: float | None = None) -> dict[tuple[str, int], list[int]]:
    """The converter's reference score histogram of each published version (read from its stored package).

    A package that cannot be read is left out; once the store itself is unreachable the rest wait too."""
    now = time.time() if now is None else now
    with _REFS_LOCK:
        failed = _FAILED.setdefault(blobs, {})
        store_down = now - failed.get(_STORE, -_RETRY_S) < _RETRY_S
    out: dict[tuple[str, int], list[int]] = {}
    for name, version, sha in session.execute(select(PackageVersion.name, PackageVersion.version,
                                                     PackageVersion.blob_sha256)):
        try:
            hist = _reference(blobs, sha, now, store_down)
        except BlobUnavailableError:
            with _REFS_LOCK:  # one read paid for the outage; the store is tried again _RETRY_S later
                failed[_STORE] = now
            store_down = True
            continue
        except _READ_ERRORS:
            continue
        if hist is not None:
            out[(name, version)] = hist
    return out


def open_alerts(session: Session, blobs: Blobs, policy: AlertPolicy, now: float, lookback_s: float) -> list[Alert]:
    """Every open alert: from the operational windows of the last ``lookback_s`` (so an alert's "since"
    reaches back at most that far), and from the fleet view."""
    refs = reference_histograms(session, blobs, now)
    return ops_alerts(load_ops(session, since=now - lookback_s), refs, policy) + fleet_alerts(session, policy, now)


__all__ = ["ALERT_KINDS", "Alert", "AlertPolicy", "fleet_alerts", "merge_figures", "open_alerts", "ops_alerts",
           "p99_ms", "percentile_ms", "psi", "reference_histograms"]
