"""The Flask app factory and the server object the blueprints share.

``create_app(config)`` builds one :class:`EdgeServer` (repository, data plane,
metrics, cache, experiments), registers one blueprint per API and the single
error handler that turns every error into ``{"error", "detail", "field"}``.
Serving it is :mod:`.server`'s job (granian, never Flask's dev server).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.keys import load_recipient_key, load_verify_key
from edgerec.sdk.tracing import open_telemetry
from edgerec.sdk.user_keys import read_user_key

from . import api_rank, api_tfserving, api_users, api_v2, control, metrics_api, openapi
from .api_keys import ApiKeys
from .cache import open_cache
from .config import ServerConfig, read_token
from .context import STATE_KEY
from .dataplane import DataPlane
from .event_dedup import EventDedup
from .event_spool import EventSpool
from .fastpath import FastRoutes, error_parts
from .features import FeatureStore, open_source
from .metrics import Metrics
from .middleware import RequestMiddleware
from .repository import LoadSettings, Repository
from .response_ids import ResponseIds
from .wire import json_response

log = logging.getLogger("edgerec.edge_server")
STATE_FILE = "state.json"  # what the workers serve (written by .worker_sync, read at a worker's start)


class EdgeServer:
    """Everything one server process holds, shared by its blueprints."""

    def __init__(self, config: ServerConfig, tracer_provider: Any = None) -> None:
        self.config = config
        self.metrics = Metrics()
        settings = LoadSettings(
            trusted_keys=tuple(load_verify_key(k) for k in config.trusted_keys),
            recipient_key=load_recipient_key(config.recipient_key) if config.recipient_key else None,
            recipient_id=config.recipient_id,
            accelerator=config.accelerator,
            threads=config.threads,
            backend=config.backend,
            max_batch=config.max_batch if config.batching else 1,
            max_delay_s=config.max_delay_ms / 1000,
            timeout_s=config.request_timeout_s,
            min_merge_call_s=config.batch_min_call_us / 1e6,
        )
        # Experiment variants stay loaded while their experiment runs (set at start or by the control API).
        self.repo = Repository(settings, self.metrics, pinned=self._pinned)
        source = open_source(config.feature_source)
        self.features = None
        if source is not None:
            cache = open_cache(config.cache_url, config.cache_max_entries)
            self.features = FeatureStore(source, cache, self.metrics, config.cache_ttl_s,
                                         config.cache_negative_ttl_s)
        elif config.cache_url:
            log.warning("--cache-url is set but no feature source is configured; the cache is unused")
        self.ids = ResponseIds(config.response_key or os.urandom(32), config.attribution_window_s,
                               config.max_candidates)
        # Shared by the worker processes (they share the response key too), so a duplicate event is
        # caught whichever worker it reaches.
        dedup_path = config.events_dedup_path or config.run_dir
        self.dedup = EventDedup(config.events_dedup_bytes, config.attribution_window_s, dedup_path)
        self.spool = None
        if config.events_spool_dir is not None and config.user_key_file is not None:
            self.spool = EventSpool(config.events_spool_dir, config.events_spool_bytes,
                                    read_user_key(config.user_key_file), self.metrics)
        self.dataplane: DataPlane = DataPlane(self.repo, {e.name: e for e in config.experiments}, self.features,
                                   self.metrics, self.ids, max_rows=config.max_rows,
                                   user_id_field=config.user_id_field, dedup=self.dedup, spool=self.spool)
        self.control_token = config.control_token or read_token(config.control_token_file)
        self.control_lock = threading.Lock()
        self.ready = threading.Event()
        self.load_failures: list[str] = []
        self.otel = open_telemetry(tracer_provider)
        self.max_elements = 1 << 24
        self.openapi_cache: tuple[int, dict[str, Any]] | None = None
        self._loader: threading.Thread | None = None

    def _pinned(self) -> set[tuple[str, int]]:
        return self.dataplane.pinned()  # built after the repository, which asks only later

    # -- start-up -----------------------------------------------------------------

    def start(self, background: bool = False) -> None:
        """Load the model directory (or a restarted worker's last state), then become ready."""
        if self.spool is not None:
            self.spool.start()
        self.repo.loading = True
        if background:
            self._loader = threading.Thread(target=self._initial_load, name="initial-load", daemon=True)
            self._loader.start()
        else:
            self._initial_load()

    def _initial_load(self) -> None:
        try:
            state = self._state_file()
            if state is not None and state.is_file():
                self._load_state(state)
            elif self.config.model_dir is not None:
                wanted = {(e.model, v.version) for e in self.config.experiments for v in e.variants}
                self.load_failures = self.repo.load_directory(self.config.model_dir, wanted)
            for e in self.config.experiments:
                for v in e.variants:
                    try:
                        self.repo.get(e.model, v.version)
                    except EdgeRecError:
                        log.warning("experiment %s: variant %s needs %s v%s, which is not loaded",
                                    e.name, v.name, e.model, v.version)
        finally:
            self.repo.loading = False
            self.ready.set()

    def _state_file(self) -> Path | None:
        return self.config.run_dir / STATE_FILE if self.config.run_dir else None

    def _load_state(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        for entry in doc["versions"]:
            try:
                self.repo.load(entry["path"], serve=entry["serving"])
            except EdgeRecError as exc:
                self.load_failures.append(f"{entry['path']}: {exc}")
        if doc.get("experiments") is not None:
            self.dataplane.replace_experiments(doc["experiments"])

    def close(self) -> None:
        if self._loader is not None:
            self._loader.join()
        self.repo.close()
        if self.features is not None:
            self.features.close()
        self.dedup.close()
        if self.spool is not None:
            self.spool.close()


def create_app(config: ServerConfig | None = None, *, tracer_provider: Any = None, start: bool = True,
               background: bool = False) -> Flask:
    """The edge server's WSGI app; ``start`` loads the models (in a thread with ``background``)."""
    config = config or ServerConfig()
    # Explicit paths: Flask cannot find them itself under the ``edgerec`` namespace package.
    here = str(Path(__file__).resolve().parent)
    app = Flask(__name__, root_path=here, instance_path=here + "/instance")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    srv = EdgeServer(config, tracer_provider)
    app.extensions["edgerec"] = srv
    for bp in (api_v2.bp, api_tfserving.bp, api_rank.bp, control.bp, metrics_api.bp, openapi.bp, api_users.bp):
        app.register_blueprint(bp)
    _install_hooks(app, srv)
    _install_errors(app, srv)
    if start:
        srv.start(background)
    return app


def _install_hooks(app: Flask, srv: EdgeServer) -> None:
    # The request's endpoint, for the middleware's metrics (url preprocessors are cheaper than hooks).
    body_limit = srv.config.body_limit

    @app.url_value_preprocessor
    def label(endpoint: str | None, values: dict[str, Any] | None) -> None:
        request.environ[STATE_KEY].endpoint = endpoint or "unmatched"
        request.max_content_length = body_limit(request.path)  # Flask >= 3.1: this request's limit (413)

    keys = ApiKeys(srv.config.api_key_file) if srv.config.api_key_file is not None else None
    middleware = RequestMiddleware(app.wsgi_app, srv.metrics, srv.otel, srv.config.access_log, FastRoutes(srv),
                                   srv.spool, keys)
    app.wsgi_app = middleware  # type: ignore[method-assign]  # Flask's documented way to wrap its WSGI app


def _install_errors(app: Flask, srv: EdgeServer) -> None:
    metrics = srv.metrics

    def answer(exc: BaseException) -> Response:
        status, doc, headers = error_parts(exc)
        metrics.error(request.endpoint or "unmatched", doc["error"])
        return json_response(doc, status, headers)

    app.register_error_handler(EdgeRecError, answer)
    app.register_error_handler(HTTPException, answer)
    app.register_error_handler(Exception, answer)


__all__ = ["EdgeServer", "create_app"]
