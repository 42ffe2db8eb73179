"""``--log-format``, ``--log-level``, ``--log-flush-ms`` and ``--access-log``: the same on every long-running command.

``edgerec serve``, ``edgerec sync serve`` and ``edgerec node run`` take them
alike, so one setting means the same everywhere; each keeps the format it
wrote before as its default (JSON lines for the edge server, plain text for
the others).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..json_logs import LOG_FORMATS, LOG_LEVELS

F = Callable[..., Any]


def log_options(default_format: str, access: bool = True) -> Callable[[F], F]:
    """The log options, ``--access-log/--no-access-log`` only for commands that answer requests."""

    def decorate(f: F) -> F:
        if access:
            f = click.option("--access-log/--no-access-log", default=True, show_default=True,
                             help="One line per request: method, path, status, duration, request and trace ids.")(f)
        f = click.option("--log-format", type=click.Choice(LOG_FORMATS), default=default_format, show_default=True,
                         help="json: one JSON object per line, with request_id, trace_id and span_id "
                              "(docs/operations.md); text: plain lines.")(f)
        f = click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)(f)
        f = click.option("--log-flush-ms", type=click.FloatRange(0, 10_000), default=0.0, show_default=True,
                         help="Write JSON log lines in batches at most this many ms apart; 0 writes each line "
                              "at once. Warnings and errors are always written at once.")(f)
        return f

    return decorate


__all__ = ["log_options"]
