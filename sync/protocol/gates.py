"""Outcome gates as written on the command line and stored by the service: ``ctr>=-1%``, ``errors<=1%``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError

_GATE = re.compile(r"^\s*(ctr|errors)\s*(>=|<=)\s*([+-]?\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Gate:
    """``ctr``: relative CTR change of the canary against the current version; ``errors``: canary error rate."""

    metric: str
    op: str
    threshold: float  # a fraction: -0.01 for -1 %

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold * 100:g}%"


def parse_gate(text: str) -> Gate:
    """``ctr>=-1%`` or ``errors<=1%``; ConfigError naming the gate otherwise."""
    m = _GATE.match(text)
    if not m:
        raise ConfigError(f"gate: {text!r} is not METRIC>=N% or METRIC<=N% with METRIC ctr or errors")
    gate = Gate(m.group(1), m.group(2), float(m.group(3)) / 100.0)
    if gate.metric == "errors" and not 0 <= gate.threshold < 1:
        raise ConfigError(f"gate: {text!r}: an error rate threshold is in [0%, 100%)")
    return gate


def check_gates(texts: Iterable[str]) -> list[Gate]:
    return [parse_gate(t) for t in texts]


__all__ = ["Gate", "check_gates", "parse_gate"]
