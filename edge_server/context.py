"""Per-request state and access to the server's parts from a view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app, g

from .tracing import Trace

if TYPE_CHECKING:
    from .app import EdgeServer


@dataclass
class RequestState:
    """What the hooks and views learn about one request; it labels logs and metrics."""

    request_id: str
    trace: Trace
    started: float
    model: str = ""
    version: str = ""
    variant: str = ""
    otel: tuple[Any, Any] | None = field(default=None, repr=False)

    def serve(self, model: str, version: str, variant: str = "default") -> None:
        self.model, self.version, self.variant = model, version, variant


def state() -> RequestState:
    st: RequestState = g.edgerec
    return st


def server() -> EdgeServer:
    srv: EdgeServer = current_app.extensions["edgerec"]
    return srv


__all__ = ["RequestState", "server", "state"]
