"""The WSGI layer around the Flask app: request id, trace context, metrics, access log, span.

A plain WSGI wrapper rather than Flask ``before_request``/``after_request``
hooks: it runs once per request without Flask's per-hook dispatch, and it
also sees requests that match no route. The scoring routes are answered
here by :class:`.fastpath.FastRoutes` when given; everything else goes to
Flask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from edgerec.sdk.log_context import REQUEST_ID, bind_scope
from edgerec.sdk.random_hex import random_hex
from edgerec.sdk.tracing import OpenTelemetry, new_trace

from .api_keys import ApiKeys, presented_key
from .context import STATE_KEY, RequestState
from .errors import UnauthorizedError
from .event_spool import EventSpool
from .fastpath import Answer, error_parts, status_line
from .json_logs import AccessLog
from .metrics import Metrics
from .wire import JSON, dumps

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
FastApp = Callable[[dict[str, Any], RequestState], Answer | None]
# Open without an API key: probes, scraping, the API document, and what the control token guards.
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"})
_CONTROL_PREFIX = "/control/"
_USERS_PREFIX = "/v1/users/"  # DELETE: erasure, behind the control token


def needs_api_key(method: str, path: str) -> bool:
    """Whether a request must carry an API key when keys are configured (every data-plane route does)."""
    if path in _OPEN_PATHS or path.startswith(_CONTROL_PREFIX):
        return False
    return not (method == "DELETE" and path.startswith(_USERS_PREFIX))


class RequestMiddleware:
    """Wraps a WSGI app; views label the request through :class:`RequestState`."""

    def __init__(self, app: WSGIApp, metrics: Metrics, otel: OpenTelemetry | None, access: bool,
                 fast: FastApp | None = None, spool: EventSpool | None = None,
                 api_keys: ApiKeys | None = None) -> None:
        self.app, self.metrics, self.otel, self.fast, self.spool = app, metrics, otel, fast, spool
        self.api_keys = api_keys
        self.access = AccessLog() if access else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = perf_counter()
        ids = random_hex(32)  # request id, trace id, span id
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not REQUEST_ID.match(rid):
            rid = ids[48:]
        st = RequestState(rid, new_trace(environ.get("HTTP_TRACEPARENT"), ids), started)
        environ[STATE_KEY] = st
        bind_scope(st)
        otel = self.otel
        span = token = None
        if otel is not None:
            span, token, trace = otel.start("HTTP " + environ.get("REQUEST_METHOD", ""),
                                            {"traceparent": environ.get("HTTP_TRACEPARENT", "")})
            if trace is not None:
                st.trace = trace
        code = 500
        try:
            # Before any route reads a byte of the body.
            answer = self._refuse_without_key(environ, st) if self.api_keys is not None else None
            if answer is None and self.fast is not None:
                answer = self.fast(environ, st)
            if answer is not None:
                status, headers, body = answer
                code = int(status[:3])
                headers.append(("X-Request-ID", st.request_id))
                headers.append(("traceparent", st.trace.traceparent))
                start_response(status, headers)
                return [body]
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
        finally:
            self._finish(environ, st, code, span, token)

    def _refuse_without_key(self, environ: dict[str, Any], st: RequestState) -> Answer | None:
        assert self.api_keys is not None
        if not needs_api_key(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")):
            return None
        key = presented_key(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
        if self.api_keys.check(key) is not None:
            return None
        st.endpoint = "unauthorized"
        status, doc, headers = error_parts(UnauthorizedError(
            "missing or unknown API key (send Authorization: Bearer KEY or X-API-Key)", field="Authorization"))
        self.metrics.error(st.endpoint, doc["error"])
        body = dumps(doc).encode()
        # The body stays unread, so the connection cannot carry another request: granian closes it
        # after this answer, and saying so (a hop-by-hop header PEP 3333 leaves to servers; granian
        # passes it on) keeps a client from sending its next request into a closing connection.
        return (status_line(status), [("Content-Type", JSON), ("Content-Length", str(len(body))),
                                      *(headers or {}).items(), ("Connection", "close")], body)

    def _finish(self, environ: dict[str, Any], st: RequestState, code: int, span: Any, token: Any) -> None:
        seconds = perf_counter() - st.started
        bind_scope(None)
        self.metrics.request(st.endpoint, st.model, st.version, st.variant, code, seconds)
        if self.spool is not None and st.model and st.version.isdigit():
            self.spool.request(st.model, int(st.version), code, seconds)
        if self.access is not None and self.access.enabled():
            self.access.write(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), code, st, seconds)
        if span is not None and self.otel is not None:
            self.otel.end(span, token, st.endpoint, code, {
                "edgerec.model": st.model, "edgerec.version": st.version, "edgerec.variant": st.variant})


__all__ = ["RequestMiddleware"]
