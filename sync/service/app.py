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
from werkzeug.exceptions import HTTPException

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.http_errors import RequestRefusedError, bounded, classify, http_status_error
from edgerec.sdk.log_bounds import bound_logger
from edgerec.sdk.tracing import new_trace, open_telemetry

from .core import SyncService

log = logging.getLogger("edgerec.sync")
EXTENSION = "edgerec_sync"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing NaN and Infinity (not JSON) instead of writing them."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def create_app(service: SyncService, test_config: dict[str, Any] | None = None) -> Flask:
    """The WSGI application for one :class:`SyncService`."""
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

    _install_trace_hooks(app, metrics)

    @app.errorhandler(EdgeRecError)
    def _refused(exc: EdgeRecError) -> Any:
        err = classify(exc)
        reason = err.code
        if isinstance(exc, RequestRefusedError):
            reason = exc.reason or reason
            if not exc.logged:
                log.info("refused (%s): %s %s: %s", reason, request.method, bounded(request.path), bounded(str(exc)))
        else:
            log.info("refused (%s): %s", reason, bounded(str(exc)))
        if err.status < 500:
            metrics.refusal(_endpoint(), reason)
        return jsonify(err.document()), err.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        err = http_status_error(exc.code or 500, exc.name, exc.description)
        if err.status < 500:
            metrics.refusal(_endpoint(), err.code)
        return jsonify(err.document()), err.status

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Any:
        log.exception("internal error: %s %s", request.method, bounded(request.path))
        return jsonify(error="internal", detail="internal server error"), 500

    return app


def _install_trace_hooks(app: Flask, metrics: Any) -> None:
    """Request metrics and trace context: a server span (with OTLP export configured) continuing the
    caller's ``traceparent``, and our ``traceparent`` in every answer."""
    otel = open_telemetry(None, "edgerec.sync.service")  # a tracer provider when OTLP export is configured

    @app.before_request
    def _started() -> None:
        g.edgerec_started = time.perf_counter()
        header = request.headers.get("traceparent")
        g.edgerec_trace = new_trace(header)
        if otel is not None:
            span, token, trace = otel.start(f"{request.method} {_endpoint()}", {"traceparent": header or ""})
            g.edgerec_span = (span, token)
            if trace is not None:
                g.edgerec_trace = trace

    @app.after_request
    def _count(resp: Response) -> Response:
        started = g.get("edgerec_started")
        if started is not None:
            method = request.method if request.method in _METHODS else "other"
            metrics.request(_endpoint(), method, resp.status_code, time.perf_counter() - started)
        trace = g.get("edgerec_trace")
        if trace is not None:
            resp.headers["traceparent"] = trace.traceparent
        span = g.pop("edgerec_span", None)
        if span is not None and otel is not None:
            otel.end(span[0], span[1], f"{request.method} {_endpoint()}", resp.status_code, {})
        return resp


def _endpoint() -> str:
    """The matched route's name: a label from a fixed set, never the raw path."""
    rule = request.url_rule
    return rule.endpoint if rule is not None else "unmatched"


def service() -> SyncService:
    """The service of the running app."""
    svc = current_app.extensions[EXTENSION]
    assert isinstance(svc, SyncService)
    return svc
