"""The event spool's line format, shared by the edge server (which writes it) and the node daemon (which reads it).

The edge server appends, per worker process, one JSON line per accepted
business event and one per model version every few seconds with the
operational figures of the requests it answered::

    {"t": 1767225600.25, "k": "click", "m": "ctr", "v": 3, "e": "ab", "a": "b", "u": "<fingerprint>"}
    {"t": 1767225600.0, "ops": "ctr", "v": 3, "n": 120, "err": {"5xx": 1}, "lat": [...], "sc": [...]}

``u`` is the keyed fingerprint of the user (:mod:`.user_keys`), never the id;
``lat`` and ``sc`` are histogram counts over :data:`LATENCY_EDGES_MS` and
:data:`SCORE_EDGES` (one overflow bucket each). Lines are short and bounded
(:data:`MAX_LINE`); a reader skips any it cannot parse (a write cut short by
a full disk) and counts them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: Upper edges (milliseconds) of the latency histogram buckets; one overflow bucket follows.
LATENCY_EDGES_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
#: Upper edges of the prediction-score histogram (scores in [0, 1]): twenty equal bins.
SCORE_EDGES = tuple(round(0.05 * i, 2) for i in range(1, 21))
EVENT_KINDS = ("impression", "click", "conversion")
MAX_LINE = 4096
_LABEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$|^$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9_-]{16}$")
_MAX_COUNT = 1 << 53


@dataclass(frozen=True)
class SpooledEvent:
    """One accepted business event: when, what, served by which version and variant, for which user key."""

    t: float
    kind: str
    model: str
    version: int
    experiment: str
    variant: str
    user: str


@dataclass(frozen=True)
class SpooledOps:
    """Operational figures of one model version over a few seconds of one worker."""

    t: float
    model: str
    version: int
    requests: int
    errors: dict[str, int]
    latency: tuple[int, ...]
    scores: tuple[int, ...]


def event_line(e: SpooledEvent) -> bytes:
    return (json.dumps({"t": round(e.t, 3), "k": e.kind, "m": e.model, "v": e.version, "e": e.experiment,
                        "a": e.variant, "u": e.user}, separators=(",", ":")) + "\n").encode()


def ops_line(o: SpooledOps) -> bytes:
    return (json.dumps({"t": round(o.t, 3), "ops": o.model, "v": o.version, "n": o.requests, "err": o.errors,
                        "lat": list(o.latency), "sc": list(o.scores)}, separators=(",", ":")) + "\n").encode()


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise ValueError("count")
    return value


def _label(value: Any) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ValueError("label")
    return value


def parse_line(raw: bytes) -> SpooledEvent | SpooledOps:
    """A spool line; ValueError for anything that is not one (the reader counts and skips it)."""
    if len(raw) > MAX_LINE:
        raise ValueError("line too long")
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    t = doc.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
        raise ValueError("t")
    version = _count(doc.get("v"))
    if "ops" in doc:
        errors = doc.get("err")
        lat, sc = doc.get("lat"), doc.get("sc")
        if not isinstance(errors, dict) or not isinstance(lat, list) or not isinstance(sc, list) \
                or len(lat) != len(LATENCY_EDGES_MS) + 1 or len(sc) != len(SCORE_EDGES) + 1:
            raise ValueError("ops")
        return SpooledOps(float(t), _label(doc["ops"]), version, _count(doc.get("n")),
                          {_label(k): _count(v) for k, v in errors.items()},
                          tuple(_count(c) for c in lat), tuple(_count(c) for c in sc))
    kind, user = doc.get("k"), doc.get("u")
    if kind not in EVENT_KINDS or not isinstance(user, str) or not _FINGERPRINT.match(user):
        raise ValueError("event")
    return SpooledEvent(float(t), kind, _label(doc.get("m")), version, _label(doc.get("e")), _label(doc.get("a")),
                        user)


__all__ = ["EVENT_KINDS", "LATENCY_EDGES_MS", "MAX_LINE", "SCORE_EDGES", "SpooledEvent", "SpooledOps",
           "event_line", "ops_line", "parse_line"]
