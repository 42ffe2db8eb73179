"""A/B experiments: variants are model versions; assignment is sticky per user.

A user lands in the same variant on every request and on every worker,
because the choice is a hash of the experiment's salt and the user id, not a
random draw. Weights are relative; the hash's top 64 bits are compared with
integer cut points so the split is exact and platform independent.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from edgerec.sdk.errors import ConfigurationError
from edgerec.sdk.manifest import NAME_RE

_SPAN = 1 << 64
_CACHED_USERS = 65_536


class ExperimentConfigError(ConfigurationError):
    """An experiment in the settings file is malformed."""


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a model version and its share of users."""

    name: str
    version: int
    weight: float


@dataclass(frozen=True)
class Experiment:
    """Variants of one model, chosen per user by ``hash(salt, user id)``."""

    name: str
    model: str
    variants: tuple[Variant, ...]
    salt: str = ""
    _cuts: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    # user id -> variant: assignment is a pure function of (salt, user id), so a cache is exact
    _assigned: dict[str, Variant] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        total = sum(v.weight for v in self.variants)
        cuts, acc = [], 0.0
        for v in self.variants:
            acc += v.weight
            cuts.append(min(_SPAN, round(acc / total * _SPAN)))
        cuts[-1] = _SPAN
        object.__setattr__(self, "_cuts", tuple(cuts))

    def assign(self, user_id: str | None) -> Variant:
        """The user's variant; anonymous requests draw one at random."""
        if user_id is not None:
            variant = self._assigned.get(user_id)
            if variant is None:
                variant = self._assign(user_id)
                if len(self._assigned) >= _CACHED_USERS:
                    self._assigned.clear()
                self._assigned[user_id] = variant
            return variant
        return self._assign(secrets.token_hex(8))

    def forget(self, user_id: str) -> bool:
        """Drop the user's cached assignment (it is recomputed from the hash if they come back)."""
        return self._assigned.pop(user_id, None) is not None

    def _assign(self, key: str) -> Variant:
        digest = hashlib.sha256(f"{self.salt or self.name}\x00{key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big")
        for variant, cut in zip(self.variants, self._cuts, strict=True):
            if point < cut:
                return variant
        return self.variants[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model, "salt": self.salt,
            "variants": [{"name": v.name, "version": v.version, "weight": v.weight} for v in self.variants],
        }


def parse_experiments(doc: Any) -> tuple[Experiment, ...]:
    """Experiments from the settings file's ``[[experiments]]`` list; errors name the field."""
    if not isinstance(doc, list):
        raise ExperimentConfigError("experiments: expected a list of tables")
    return tuple(_experiment(e, i) for i, e in enumerate(doc))


def _experiment(doc: Any, i: int) -> Experiment:
    where = f"experiments[{i}]"
    if not isinstance(doc, dict):
        raise ExperimentConfigError(f"{where}: expected a table")
    unknown = set(doc) - {"name", "model", "salt", "variants"}
    if unknown:
        raise ExperimentConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")
    name, model, salt = _name(doc, "name", where), _name(doc, "model", where), doc.get("salt", "")
    if not isinstance(salt, str):
        raise ExperimentConfigError(f"{where}.salt: expected a string")
    raw = doc.get("variants")
    if not isinstance(raw, list) or not raw:
        raise ExperimentConfigError(f"{where}.variants: expected a non-empty list")
    variants = tuple(_variant(v, f"{where}.variants[{j}]") for j, v in enumerate(raw))
    if len({v.name for v in variants}) != len(variants):
        raise ExperimentConfigError(f"{where}.variants: names must be unique")
    return Experiment(name, model, variants, salt)


def _name(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ExperimentConfigError(f"{where}.{key}: expected a lower-case name")
    return value


def _variant(doc: Any, where: str) -> Variant:
    if not isinstance(doc, dict) or set(doc) - {"name", "version", "weight"}:
        raise ExperimentConfigError(f"{where}: expected a table of name, version, weight")
    name, version, weight = doc.get("name"), doc.get("version"), doc.get("weight", 1)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ExperimentConfigError(f"{where}.name: expected a lower-case name")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ExperimentConfigError(f"{where}.version: expected an integer >= 0")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 1e-6 <= weight <= 1e6:
        raise ExperimentConfigError(f"{where}.weight: expected a number from 0.000001 to 1000000")
    return Variant(name, version, float(weight))


__all__ = ["Experiment", "ExperimentConfigError", "Variant", "parse_experiments"]
