"""Per-request state and access to the server's parts from a view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, request

from edgerec.sdk.tracing import Trace

if TYPE_CHECKING:
    from .app import EdgeServer


STATE_KEY = "edgerec.request"


@dataclass(slots=True)
class RequestState:
    """What the hooks and views learn about one request; it labels logs and metrics."""

    request_id: str
    trace: Trace
    started: float
    model: str = ""
    version: str = ""
    variant: str = ""
    endpoint: str = "unmatched"

    def serve(self, model: str, version: str, variant: str = "default") -> None:
        self.model, self.version, self.variant = model, version, variant


def state() -> RequestState:
    st: RequestState = request.environ[STATE_KEY]
    return st


def server() -> EdgeServer:
    srv: EdgeServer = current_app.extensions["edgerec"]
    return srv


__all__ = ["STATE_KEY", "RequestState", "server", "state"]
