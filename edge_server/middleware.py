"""The WSGI layer around the Flask app: request id, trace context, metrics, access log, span.

A plain WSGI wrapper rather than Flask ``before_request``/``after_request``
hooks: it runs once per request without Flask's per-hook dispatch, and it
also sees requests that match no route.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from .context import STATE_KEY, RequestState
from .metrics import Metrics
from .tracing import OpenTelemetry, new_trace

access_log = logging.getLogger("edgerec.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestMiddleware:
    """Wraps a WSGI app; views label the request through :class:`RequestState`."""

    def __init__(self, app: WSGIApp, metrics: Metrics, otel: OpenTelemetry | None, access: bool) -> None:
        self.app, self.metrics, self.otel, self.access = app, metrics, otel, access

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not _REQUEST_ID.match(rid):
            rid = os.urandom(8).hex()
        st = RequestState(rid, new_trace(environ.get("HTTP_TRACEPARENT")), perf_counter())
        environ[STATE_KEY] = st
        otel = self.otel
        span = None
        if otel is not None:
            span, token, trace = otel.start("HTTP " + environ.get("REQUEST_METHOD", ""),
                                            {"traceparent": environ.get("HTTP_TRACEPARENT", "")})
            if trace is not None:
                st.trace = trace
        codes: list[int] = []

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-ID", st.request_id))
            headers.append(("traceparent", st.trace.traceparent))
            codes.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, respond)
        finally:
            code = codes[-1] if codes else 500
            seconds = perf_counter() - st.started
            self.metrics.request(st.endpoint, st.model, st.version, st.variant, code, seconds)
            if self.access and access_log.isEnabledFor(logging.INFO):
                access_log.info("%s %s %d", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), code, extra={
                    "request_id": st.request_id, "trace_id": st.trace.trace_id, "span_id": st.trace.span_id,
                    "endpoint": st.endpoint, "status": code, "duration_ms": round(seconds * 1e3, 3),
                    "model": st.model or None, "version": st.version or None, "variant": st.variant or None,
                })
            if span is not None and otel is not None:
                otel.end(span, token, st.endpoint, code, {
                    "edgerec.model": st.model, "edgerec.version": st.version, "edgerec.variant": st.variant})


__all__ = ["RequestMiddleware"]
