"""What this thread is working for (a request, a node's cycle): the ids its log lines and outgoing calls carry.

A server binds a scope when a request starts and unbinds it at the end; the
node daemon binds one per cycle. :class:`~edgerec.sdk.json_logs.RequestFilter`
adds the scope's ``request_id``, ``trace_id`` and ``span_id`` to every record
logged meanwhile, and :func:`~edgerec.sdk.tracing.client_span` continues the
scope's trace, so one trace id can be followed from a node's log into the
service's. A thread-local rather than a context variable: every request and
cycle runs on one thread, and a thread-local read is the cheaper one on the
edge server's per-request path.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .random_hex import random_hex

if TYPE_CHECKING:
    from .tracing import Trace

# A caller's X-Request-ID is kept only if it is this short and plain: it goes into every log line and header.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_current = threading.local()


class Scope(Protocol):
    """What a log line needs to know of the work it belongs to ("" request id: not a request)."""

    request_id: str
    trace: Trace


@dataclass(slots=True)
class LogScope:
    """A plain :class:`Scope` (the edge server's request state is a richer one)."""

    request_id: str
    trace: Trace


def request_id(header: str | None) -> str:
    """The caller's ``X-Request-ID`` when well-formed and at most 64 characters, else a new one."""
    if header is not None and REQUEST_ID.match(header):
        return header
    return random_hex(8)


def bind_scope(scope: Scope | None) -> None:
    """Make ``scope`` this thread's current one (None: nothing)."""
    _current.scope = scope


def current_scope() -> Scope | None:
    """The scope this thread works for, if any."""
    scope: Scope | None = getattr(_current, "scope", None)
    return scope


@contextlib.contextmanager
def log_scope(scope: Scope) -> Iterator[Scope]:
    """``scope`` bound for the block; the one bound before is bound again after it."""
    before = current_scope()
    bind_scope(scope)
    try:
        yield scope
    finally:
        bind_scope(before)


__all__ = ["REQUEST_ID", "LogScope", "Scope", "bind_scope", "current_scope", "log_scope", "request_id"]
