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

import httpx
from flask import Blueprint, Response, request

from .context import server
from .control import PEER_HEADER, authorize
from .errors import BadRequestError
from .wire import json_response

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
    workers = 1
    if not request.headers.get(PEER_HEADER):
        headers = {"Authorization": f"Bearer {srv.control_token}", PEER_HEADER: "1"}
        for peer in srv.peers():
            try:
                r = httpx.delete(f"{peer}/v1/users/{user_id}", headers=headers, timeout=30)
                r.raise_for_status()
                workers += 1
                for k, v in r.json().get("erased", {}).items():
                    erased[k] = erased.get(k, 0) + int(v)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("worker %s did not erase the user: %s", peer, exc)
    log.info("erased a user's cached state (%s) on %d worker(s)", erased, workers)
    return json_response({"erased": erased, "workers": workers})


__all__ = ["bp"]
