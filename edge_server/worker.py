"""One worker process of ``edgerec serve``: granian calls :func:`app` once in each, after the fork.

The worker reads its settings from the run folder (:mod:`.server`), builds
the app, loads the models the other workers serve (the shared state, or the
model directory at first), then follows the shared state (:mod:`.worker_sync`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.heap import freeze_long_lived
from edgerec.sdk.http_server import exit_with_server, metrics_after_fork
from edgerec.sdk.wsgi_front import FrontSettings, WSGIFront

from .config import ServerConfig
from .server import CONFIG_FILE, RUN_ENV
from .worker_sync import STATE_FILE, WorkerSync

log = logging.getLogger("edgerec.edge_server.worker")
SYNC_KEY = "edgerec.workers"  # app.extensions key of this worker's WorkerSync


def app() -> WSGIFront:
    """This worker's app: the Flask app behind the front (granian's factory target)."""
    from edgerec.sdk import native_logs
    from edgerec.sdk.tracing import configure_otlp

    from .app import EdgeServer, create_app
    from .repository import pin_mmap_threshold

    exit_with_server()
    native_logs.quiet()
    metrics_after_fork()
    run_dir = Path(os.environ[RUN_ENV])
    config = ServerConfig.from_json((run_dir / CONFIG_FILE).read_text()).replace(worker_index=os.getpid())
    config.logs().apply()
    pin_mmap_threshold()
    # The generation the first load reflects: read before it, so nothing after it is missed
    # (applying an operation twice is harmless: a load of a loaded version, an unload of a gone one).
    generation = _generation(run_dir)
    provider = configure_otlp("edgerec-edge-server")  # with OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint
    flask_app = create_app(config, background=True, tracer_provider=provider)
    srv: EdgeServer = flask_app.extensions["edgerec"]
    sync = WorkerSync(run_dir, config.workers, lambda op: apply_op(srv, op),
                      lambda state: apply_state(srv, state), srv.control_lock)
    flask_app.extensions[SYNC_KEY] = sync

    def follow() -> None:
        srv.ready.wait()
        freeze_long_lived()  # the first load's objects, the rest were frozen before serving
        sync.start(generation)

    threading.Thread(target=follow, name="edgerec-worker-start", daemon=True).start()

    def close() -> None:
        sync.stop()
        srv.close()

    # granian's worker ends through multiprocessing, which runs its finalizers but not atexit's.
    mp_util.Finalize(None, close, exitpriority=10)
    metrics = srv.metrics
    front = WSGIFront(flask_app.wsgi_app, config.body_limit,
                     FrontSettings(slots=config.http_threads, max_parked=max(64, config.max_batch * 2),
                                   body_timeout_s=config.body_timeout_s,
                                   max_held_body_bytes=config.max_held_body_bytes),
                     # answered before routing: counted under the "front" endpoint, by reason
                     lambda path, reason: metrics.error("front", reason))
    freeze_long_lived()  # before serving: this collection delays no request
    return front


def _generation(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / STATE_FILE).read_text())["generation"])
    except FileNotFoundError:
        return 0


def apply_op(srv: Any, op: dict[str, Any]) -> None:
    """Carry out a control operation another worker published (under the control lock)."""
    from .errors import NotFoundError

    if op["op"] == "load":
        srv.repo.load(op["path"], serve=op["serve"])
    elif op["op"] == "unload":
        with contextlib.suppress(NotFoundError):  # never loaded here (its load failed): nothing to release
            srv.repo.unload(op["name"], op["version"])
    elif op["op"] == "forget_user":
        srv.dataplane.forget_user(op["user"])
    elif op["op"] == "set_experiment":
        srv.dataplane.set_experiment(op["experiment"])
    elif op["op"] == "clear_experiment":
        srv.dataplane.clear_experiment(op["name"])
    else:
        raise ValueError(f"unknown operation {op['op']!r}")


def apply_state(srv: Any, state: dict[str, Any]) -> None:
    """Serve exactly the shared state's versions and run its experiments: for a worker too far behind."""
    if state.get("experiments") is not None:  # first: the old ones may pin versions about to go
        srv.dataplane.replace_experiments(state["experiments"])
    apply_versions(srv, state.get("versions") or [])


def apply_versions(srv: Any, versions: list[dict[str, Any]]) -> None:
    """Serve exactly ``versions`` (path, serving; serving ones last): for a worker too far behind."""
    wanted = set()
    for entry in versions:
        try:
            mv = srv.repo.load(entry["path"], serve=entry["serving"])
            wanted.add((mv.name, mv.version))
        except EdgeRecError as exc:
            log.error("could not load %s: %s", entry["path"], exc)
    for mv in srv.repo.versions():
        if (mv.name, mv.version) not in wanted:
            srv.repo.unload(mv.name, mv.version)


def versions_doc(srv: Any) -> list[dict[str, Any]]:
    """What this worker serves, as the shared state lists it (serving ones last)."""
    ordered = sorted(srv.repo.versions(), key=lambda mv: mv.serving)
    return [{"path": mv.source, "serving": mv.serving} for mv in ordered]


__all__ = ["SYNC_KEY", "app", "apply_op", "apply_state", "apply_versions", "versions_doc"]
