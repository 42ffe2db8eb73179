"""Data subject erasure: ``DELETE /v1/users/<id>`` (control token), on every worker.

Erases what the edge server holds of the user: the cached profile (the
feature cache, local or Redis) and their cached experiment assignments.
Events carry no user id here (they are attributed by response id), so there
is no buffered event or dedup entry of theirs to erase. The node daemon's
own per-user state (the open metrics windows) is erased by
``edgerec node forget-user``, which calls this too.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app

from .context import server
from .control import WorkersOutOfStepError, authorize, out_of_step
from .errors import BadRequestError
from .wire import json_response
from .worker import SYNC_KEY, versions_doc
from .worker_sync import WorkerSync

bp = Blueprint("users", __name__)
log = logging.getLogger("edgerec.edge_server.users")
_MAX_ID = 256


@bp.delete("/v1/users/<user_id>")
def forget_user(user_id: str) -> Response:
    authorize()  # the control API's checks: loopback (unless allowed) and the control token
    if not user_id or len(user_id) > _MAX_ID:
        raise BadRequestError(f"expected a user id of 1 to {_MAX_ID} characters", field="id")
    srv = server()
    erased = srv.dataplane.forget_user(user_id)
    sync: WorkerSync | None = current_app.extensions.get(SYNC_KEY)
    workers = 1
    if sync is not None:
        # The other workers erase it as they apply the next generation (worker_sync); once all have, the id
        # is blanked in the run folder's state file. A worker that did not apply it in time keeps the id
        # there (0600, removed at exit) until newer operations push it out: the call fails, and is repeated.
        with sync.exclusive():
            with srv.control_lock:
                sync.catch_up()
                generation = sync.publish({"op": "forget_user", "user": user_id}, versions_doc(srv))
            outcome = sync.wait(generation, srv.config.control_timeout_s)
            if outcome.complete:
                sync.redact(generation, ("user",))
        if not outcome.complete:
            raise WorkersOutOfStepError(out_of_step(outcome), field="workers")
        workers = len(outcome.reached)
    log.info("erased a user's cached state on %d worker(s)", workers)
    return json_response({"erased": erased, "workers": workers})


__all__ = ["bp"]
