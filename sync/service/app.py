"""Flask application factory of the sync service.

One blueprint per area (node API, admin API, the static TUF repository) and
one error handler that turns every refused request into ``{"error",
"detail"}`` with its 4xx status.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.http_errors import bounded, classify, http_status_error

from .core import SyncService

log = logging.getLogger("edgerec.sync")
EXTENSION = "edgerec_sync"


def create_app(service: SyncService, test_config: dict[str, Any] | None = None) -> Flask:
    """The WSGI application for one :class:`SyncService`."""
    from . import api_admin, api_metrics, api_node, api_repo

    app = Flask(__name__, instance_path=str(service.datadir.root))
    app.config.update(test_config or {})
    app.extensions[EXTENSION] = service
    app.register_blueprint(api_node.bp)
    app.register_blueprint(api_admin.bp)
    app.register_blueprint(api_repo.bp)
    app.register_blueprint(api_metrics.bp)  # fleet metrics (issue 10)

    @app.errorhandler(EdgeRecError)
    def _refused(exc: EdgeRecError) -> Any:
        err = classify(exc)
        log.info("refused (%s): %s", err.code, bounded(str(exc)))
        return jsonify(err.document()), err.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        err = http_status_error(exc.code or 500, exc.name, exc.description)
        return jsonify(err.document()), err.status

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Any:
        log.exception("internal error")
        return jsonify(error="internal", detail="internal server error"), 500

    return app


def service() -> SyncService:
    """The service of the running app."""
    svc = current_app.extensions[EXTENSION]
    assert isinstance(svc, SyncService)
    return svc
