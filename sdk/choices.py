"""Strings from outside (a CLI option, a config file, JSON) checked into the SDK's ``Literal`` types.

A value is checked once, where it enters, and travels typed from there:
``parse_choice(value, ACCELERATOR_CHOICES, "accelerator")`` returns an
``Accelerator``, not a ``str``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from .errors import InvalidInputError

C = TypeVar("C", bound=str)


def pick(value: object, choices: Sequence[C]) -> C | None:
    """The member of ``choices`` equal to ``value`` (typed as ``choices`` are), or None."""
    return next((c for c in choices if c == value), None)


def parse_choice(value: object, choices: Sequence[C], field: str) -> C:
    """``value`` as one of ``choices``; :class:`InvalidInputError` naming ``field`` otherwise."""
    chosen = pick(value, choices)
    if chosen is None:
        raise InvalidInputError(field, f"{value!r} is not one of {', '.join(choices)}")
    return chosen


__all__ = ["parse_choice", "pick"]
