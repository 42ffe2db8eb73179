"""Paths resolved at the command-line boundary."""

from __future__ import annotations

import os
from typing import Any

import click


class AbsolutePath(click.Path):
    """A ``click.Path`` handed to the command as an absolute path (symlinks kept as given).

    For paths a command keeps or passes on: to Flask (whose ``instance_path`` must be
    absolute), into state and settings files, to worker processes and to the edge
    server a node daemon drives. Checks and their messages still name the path as typed.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if self.allow_dash and rv in ("-", b"-"):
            return rv
        return self.coerce_path_result(os.path.abspath(os.fsdecode(rv)))


__all__ = ["AbsolutePath"]
