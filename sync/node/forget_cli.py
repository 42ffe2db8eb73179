"""``edgerec node forget-user ID``: erase a user's data on this node (data subject erasure).

The edge server drops the user's cached profile and experiment assignments
on every worker (``DELETE /v1/users/<id>``, control token); each worker also
moves on to a new event spool file, so the files written so far are final.
With ``--state-dir`` the user's events go too: their fingerprint (the same
keyed hash the edge server spooled) is taken out of those spool files and
of the running daemon's open windows. A running daemon (it holds
``daemon.lock``) does it itself, asked through ``node.db``, because it
holds read offsets into the files; with no daemon running the command
rewrites the files. The spool, windows, ledger and reports hold no user id.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import click

from edgerec.sdk.cli.output import console, print_json
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.keys import read_secret_text
from edgerec.sdk.user_keys import read_user_key, user_fingerprint
from edgerec.sync.protocol.errors import ConfigError

from .edge_control import EdgeControl
from .event_spool import SpoolReader
from .state import NodeState


@click.command("forget-user")
@click.argument("user_id")
@click.option("--edge-server", required=True, help="Edge server URL (its control API).")
@click.option("--control-token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), required=True,
              help="File holding the edge server's control token (mode 0600).")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, exists=True, path_type=Path), default=None,
              help="The node's state directory: erase the user's spooled and windowed events too.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds to wait for a running daemon to carry out the erasure.")
@click.option("--json", "as_json", is_flag=True)
def forget_user(user_id: str, edge_server: str, control_token_file: Path, state_dir: Path | None, timeout: float,
                as_json: bool) -> None:
    """Erase USER_ID's cached profile, experiment assignments and (with --state-dir) events on this node."""
    if not 1 <= len(user_id) <= 256:
        raise ConfigError("USER_ID: expected 1 to 256 characters")
    token = read_secret_text(control_token_file, "control token")  # refused when group or others may read it
    edge = EdgeControl(edge_server, token, timeout=60)
    try:
        doc = edge.forget_user(user_id)
    finally:
        edge.close()
    if state_dir is not None:
        doc["events"] = _forget_events(NodeState(state_dir), user_id, timeout)
    if as_json:
        print_json(doc)
    else:
        erased = ", ".join(f"{v} {k}" for k, v in doc.get("erased", {}).items())
        console.print(f"erased on {doc.get('workers', 1)} worker(s): {erased}"
                      + (f"; events: {doc['events']}" if "events" in doc else ""), markup=False)


def _forget_events(state: NodeState, user_id: str, timeout: float) -> str:
    """Erase the user's spooled and windowed events (the edge server has rotated its spool files already)."""
    if not state.user_key_file.exists():
        return "none spooled (no user key)"
    user = user_fingerprint(read_user_key(state.user_key_file), user_id)
    reader = SpoolReader(state.spool_dir)
    files = [p.name for p in reader.files()]
    fd = os.open(state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _ask_daemon(state, user, files, timeout)
        n = reader.erase(user, files)  # no daemon: nobody reads the files now
        return f"{n} erased from the spool"
    finally:
        os.close(fd)
        state.close()


def _ask_daemon(state: NodeState, user: str, files: list[str], timeout: float) -> str:
    seq = state.db.request_forget(user, files)
    deadline = time.monotonic() + timeout
    while state.db.forget_pending(seq):
        if time.monotonic() > deadline:
            raise ConfigError(f"the node daemon did not carry out the erasure within {timeout:g} s "
                              "(it stays queued and runs when the daemon does)")
        time.sleep(0.2)
    return "erased by the running daemon"


__all__ = ["forget_user"]
