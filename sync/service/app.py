"""Flask application factory of the sync service.

One blueprint per area (node API, admin API, the static TUF repository),
``/metrics`` (Prometheus, :mod:`.metrics`) and one error handler that turns
every refused request into ``{"error", "detail", "field"}`` with its 4xx
status, counts it by reason and logs it in one bounded line.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.http_errors import RequestRefusedError, bounded, classify, http_status_error
from edgerec.sdk.json_logs import AccessLog, duration_ms
from edgerec.sdk.log_bounds import bound_logger
from edgerec.sdk.log_context import LogScope, bind_scope, request_id
from edgerec.sdk.tracing import new_trace, open_telemetry
from edgerec.sync.protocol.errors import DatabaseUnavailableError

from .core import SyncService

log = logging.getLogger("edgerec.sync")
EXTENSION = "edgerec_sync"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing NaN and Infinity (not JSON) instead of writing them."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def create_app(service: SyncService, test_config: dict[str, Any] | None = None, access_log: bool = True) -> Flask:
    """The WSGI application for one :class:`SyncService`; ``access_log``: one ``edgerec.access`` line a request."""
    from . import api_admin, api_metrics, api_node, api_repo, openapi

    for name in ("edgerec.sync", "edgerec.sync.node"):
        bound_logger(name)  # no client input makes a log line longer than a few KiB
    app = Flask(__name__, instance_path=str(service.work_dir))
    app.json = StrictJSONProvider(app)
    app.config.update(test_config or {})
    app.extensions[EXTENSION] = service
    app.register_blueprint(api_node.bp)
    app.register_blueprint(api_admin.bp)
    app.register_blueprint(api_repo.bp)
    app.register_blueprint(api_metrics.bp)  # fleet metrics (issue 10)
    app.register_blueprint(openapi.bp)
    metrics = service.metrics
    metrics.export_fleet(service.blobs, service.config)  # released aggregates and open alerts (issue 10)

    @app.get("/metrics")
    def _metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    _install_trace_hooks(app, metrics, AccessLog() if access_log else None)

    @app.errorhandler(EdgeRecError)
    def _refused(exc: EdgeRecError) -> Any:
        err = classify(exc)
        reason = err.code
        if isinstance(exc, RequestRefusedError):
            reason = exc.reason or reason
            if not exc.logged:  # a 5xx is the service's trouble (its package store down): a warning
                log.log(logging.WARNING if err.status >= 500 else logging.INFO, "refused (%s): %s %s: %s", reason,
                        request.method, bounded(request.path), bounded(str(exc)))
        else:
            log.info("refused (%s): %s", reason, bounded(str(exc)))
        if err.status < 500:
            metrics.refusal(_endpoint(), reason)
        retry = exc.retry_after_s if isinstance(exc, RequestRefusedError) else None
        return jsonify(err.document()), err.status, {} if retry is None else {"Retry-After": str(retry)}

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        err = http_status_error(exc.code or 500, exc.name, exc.description)
        if err.status < 500:
            metrics.refusal(_endpoint(), err.code)
        return jsonify(err.document()), err.status

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Any:
        if not exc.connection_invalidated:
            return _internal(exc)
        # The database went away (a restart, a failover): the pool is invalidated and reconnects on next use.
        # Counted, unlike other 5xx refusals: it says how often clients had to retry for it.
        metrics.refusal(_endpoint(), "database_unavailable")
        return _refused(DatabaseUnavailableError("the database connection was lost; retry"))

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Any:
        log.exception("internal error: %s %s", request.method, bounded(request.path))
        return jsonify(error="internal", detail="internal server error"), 500

    return app


def _install_trace_hooks(app: Flask, metrics: Any, access: AccessLog | None) -> None:
    """Request metrics, ids and trace context: a server span (with OTLP export configured) continuing the
    caller's ``traceparent``; the request id and trace ids bound for the request's log lines; our
    ``traceparent`` and ``X-Request-ID`` in every answer, and its access line."""
    otel = open_telemetry(None, "edgerec.sync.service")  # a tracer provider when OTLP export is configured

    @app.before_request
    def _started() -> None:
        g.edgerec_started = time.perf_counter()
        header = request.headers.get("traceparent")
        scope = LogScope(request_id(request.headers.get("X-Request-ID")), new_trace(header))
        g.edgerec_scope = scope
        bind_scope(scope)
        if otel is not None:
            span, token, trace = otel.start(f"{request.method} {_endpoint()}", {"traceparent": header or ""})
            g.edgerec_span = (span, token)
            if trace is not None:
                scope.trace = trace

    @app.after_request
    def _count(resp: Response) -> Response:
        started = g.get("edgerec_started")
        seconds = time.perf_counter() - started if started is not None else 0.0
        if started is not None:
            method = request.method if request.method in _METHODS else "other"
            metrics.request(_endpoint(), method, resp.status_code, seconds)
        scope = g.get("edgerec_scope")
        if scope is not None:
            resp.headers["traceparent"] = scope.trace.traceparent
            resp.headers["X-Request-ID"] = scope.request_id
            if access is not None and access.enabled():
                access.log(request.method, request.path, resp.status_code, {
                    "request_id": scope.request_id, "trace_id": scope.trace.trace_id,
                    "span_id": scope.trace.span_id, "endpoint": _endpoint(), "status": resp.status_code,
                    "duration_ms": duration_ms(seconds)})
        span = g.pop("edgerec_span", None)
        if span is not None and otel is not None:
            otel.end(span[0], span[1], f"{request.method} {_endpoint()}", resp.status_code, {})
        return resp

    @app.teardown_request
    def _unbind(exc: BaseException | None) -> None:
        bind_scope(None)  # the thread's next request, or a line logged between requests, is not this one's


def _endpoint() -> str:
    """The matched route's name: a label from a fixed set, never the raw path."""
    rule = request.url_rule
    return rule.endpoint if rule is not None else "unmatched"


def service() -> SyncService:
    """The service of the running app."""
    svc = current_app.extensions[EXTENSION]
    assert isinstance(svc, SyncService)
    return svc
