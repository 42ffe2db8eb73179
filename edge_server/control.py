"""The local control API the node daemon drives: load, unload and list model versions; set and clear experiments.

Loopback callers only (unless ``control_allow_remote``), ``Authorization:
Bearer <token>`` compared in constant time; no token configured means the API
is off. Operations run one at a time.

With several worker processes the call reaches one of them, which applies the
operation itself first (a refused package changes nothing anywhere), then
publishes it to the others through the run folder and answers once every
worker serves the result, or answers 503 naming the workers that did not
(:mod:`.worker_sync`). The answer's ``workers`` says how many applied it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, request

from edgerec.sdk.port_keeper import is_local_caller

from .context import server
from .errors import BadRequestError, ForbiddenError, NotFoundError, UnauthorizedError, UnavailableError
from .repository import ModelVersion
from .wire import json_response, loads_object
from .worker import SYNC_KEY, versions_doc
from .worker_sync import Outcome, WorkerSync

bp = Blueprint("control", __name__, url_prefix="/control/v1")
log = logging.getLogger("edgerec.edge_server.control")
T = TypeVar("T")


class WorkersOutOfStepError(UnavailableError):
    """This worker applied the operation; some others did not (within the timeout): try again."""

    code = "workers_out_of_step"


@bp.before_request
def authorize() -> None:
    srv = server()
    if not srv.config.control_allow_remote and not is_local_caller(request.remote_addr):
        raise ForbiddenError("the control API answers loopback callers only", field="remote_addr")
    if srv.control_token is None:
        raise ForbiddenError("the control API is off: start the server with --control-token-file "
                             "or EDGEREC_CONTROL_TOKEN", field="Authorization")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), srv.control_token.encode()):
        raise UnauthorizedError("missing or wrong bearer token", field="Authorization")


@bp.get("/models")
def list_models() -> Response:
    return json_response({"models": [mv.describe() for mv in server().repo.versions()]})


def _load_body() -> tuple[str, bool]:
    doc = loads_object(request.get_data(cache=False))
    path, serve = doc.get("path"), doc.get("serve", True)
    if not isinstance(path, str) or not path:
        raise BadRequestError("expected the absolute path of a .edgepkg file", field="path")
    if not isinstance(serve, bool):
        raise BadRequestError("expected true or false", field="serve")
    return path, serve


def _answer(mv: ModelVersion) -> dict[str, Any]:
    d = mv.describe()
    return {"name": d["name"], "version": d["version"], "accelerator": d["accelerator"], "state": d["state"],
            "fully_delegated": d["fully_delegated"], "loaded_at": d["loaded_at"]}


@bp.post("/models/load")
def load() -> Response:
    """Verify, load, warm up and swap in a version (on every worker); the old one keeps serving on failure."""
    path, serve = _load_body()
    srv = server()
    mv, workers = _everywhere(lambda: srv.repo.load(path, serve=serve),
                              lambda mv: {"op": "load", "path": mv.source, "serve": serve}, f"load of {path}")
    log.info("loaded %s v%s from %s (%s)", mv.name, mv.version, path, mv.state)
    return json_response({**_answer(mv), "workers": workers})


@bp.post("/models/<name>/versions/<version>/unload")
def unload(name: str, version: str) -> Response:
    srv = server()
    mv, workers = _everywhere(lambda: srv.repo.unload(name, version),
                              lambda mv: {"op": "unload", "name": mv.name, "version": mv.version},
                              f"unload of {name} v{version}")
    log.info("unloaded %s v%s", mv.name, mv.version)
    return json_response({"name": mv.name, "version": mv.version, "state": "unloaded", "workers": workers})


@bp.get("/experiments")
def list_experiments() -> Response:
    return json_response({"experiments": server().dataplane.experiments_doc()})


@bp.put("/experiments/<experiment>")
def set_experiment(experiment: str) -> Response:
    """Run an experiment (or replace the one of that name) on every worker; its variants' versions must be
    loaded (``models/load`` with ``"serve": false`` loads one without serving it)."""
    name = experiment
    doc = loads_object(request.get_data(cache=False))
    if doc.get("name", name) != name:
        raise BadRequestError("the name in the body differs from the one in the path", field="name")
    doc = {**doc, "name": name}
    srv = server()
    exp, workers = _everywhere(lambda: srv.dataplane.set_experiment(doc),
                               lambda exp: {"op": "set_experiment", "experiment": exp.to_dict()},
                               f"experiment {name}", experiments=True)
    log.info("experiment %s runs: %s", exp.name, ", ".join(f"{v.name}=v{v.version}" for v in exp.variants))
    return json_response({**exp.to_dict(), "workers": workers})


@bp.delete("/experiments/<experiment>")
def clear_experiment(experiment: str) -> Response:
    name, srv = experiment, server()
    if name not in srv.dataplane.experiments:
        raise NotFoundError(f"no experiment {name!r} runs here", field="name")
    _, workers = _everywhere(lambda: srv.dataplane.clear_experiment(name),
                             lambda _: {"op": "clear_experiment", "name": name}, f"experiment {name}",
                             experiments=True)
    log.info("experiment %s stopped", name)
    return json_response({"name": name, "state": "stopped", "workers": workers})


def _everywhere(here: Callable[[], T], op: Callable[[T], dict[str, Any]], what: str,
                experiments: bool = False) -> tuple[T, int]:
    """Run ``here`` in this worker, then have every other worker apply ``op`` of its result."""
    srv = server()
    sync: WorkerSync | None = current_app.extensions.get(SYNC_KEY)
    if sync is None:  # one process, no run folder (an app built in-process)
        with srv.control_lock:
            return here(), 1
    with sync.exclusive():
        with srv.control_lock:
            sync.catch_up()
            result = here()
            generation = sync.publish(op(result), versions_doc(srv),
                                      srv.dataplane.experiments_doc() if experiments else None)
        outcome = sync.wait(generation, srv.config.control_timeout_s)
    if not outcome.complete:
        log.error("%s: not every worker applied it: %s", what, outcome.describe())
        raise WorkersOutOfStepError(out_of_step(outcome), field="workers")
    return result, len(outcome.reached)


def out_of_step(outcome: Outcome) -> str:
    """Why a control operation is not everywhere: which workers applied it and which did not."""
    return (f"applied by {len(outcome.reached)} of {outcome.workers} workers; {outcome.describe()}; "
            "the others keep what they served; repeat the call to retry")


__all__ = ["WorkersOutOfStepError", "bp"]
