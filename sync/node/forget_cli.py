"""``edgerec node forget-user ID``: erase a user's data on this node (data subject erasure).

The edge server drops the user's cached profile and experiment assignments
on every worker (``DELETE /v1/users/<id>``, control token). The node's fleet
metrics keep no user id on disk: releases are noisy aggregates and the
budget ledger records windows and epsilon only; per-user counts live in the
daemon's memory until their window closes (``EventWindows.forget``).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgerec.sdk.cli.output import console, print_json
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sync.protocol.errors import ConfigError

from .edge_control import EdgeControl


@click.command("forget-user")
@click.argument("user_id")
@click.option("--edge-server", required=True, help="Edge server URL (its control API).")
@click.option("--control-token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), required=True,
              help="File holding the edge server's control token.")
@click.option("--json", "as_json", is_flag=True)
def forget_user(user_id: str, edge_server: str, control_token_file: Path, as_json: bool) -> None:
    """Erase USER_ID's cached profile and experiment assignments on this node's edge server."""
    if not 1 <= len(user_id) <= 256:
        raise ConfigError("USER_ID: expected 1 to 256 characters")
    try:
        token = control_token_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--control-token-file: cannot read {control_token_file} ({exc.strerror})") from exc
    edge = EdgeControl(edge_server, token, timeout=60)
    try:
        doc = edge.forget_user(user_id)
    finally:
        edge.close()
    if as_json:
        print_json(doc)
    else:
        erased = ", ".join(f"{v} {k}" for k, v in doc.get("erased", {}).items())
        console.print(f"erased on {doc.get('workers', 1)} worker(s): {erased}", markup=False)


__all__ = ["forget_user"]
