"""``edgerec api-key``: make, list and revoke the API keys of the edge server's inference routes.

The key file holds hashes only (:mod:`.api_keys`); a new key is written once,
to a file of its own (mode 0600) for the operator to hand to the client, and
never printed.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgerec.sdk.cli.output import console, print_json, text_row
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.files import write_atomic

from .api_keys import add_key, read_entries, revoke_key
from .errors import ConfigError

_KEY_FILE = click.argument("key_file", type=AbsolutePath(dir_okay=False, path_type=Path))


@click.group("api-key")
def api_key() -> None:
    """API keys of the edge server's inference routes (`edgerec serve --api-key-file FILE`)."""


@api_key.command("add")
@_KEY_FILE
@click.argument("name")
@click.option("--key-out", type=AbsolutePath(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new key (mode 0600; must not exist): hand it to the client.")
@click.option("--json", "as_json", is_flag=True)
def add(key_file: Path, name: str, key_out: Path, as_json: bool) -> None:
    """Add a key named NAME to KEY_FILE (made if missing); the key itself goes to --key-out only."""
    if key_out.exists():
        raise ConfigError("exists; choose a new file (a key is never overwritten)", field=str(key_out))
    if not key_out.parent.is_dir():
        raise ConfigError("no such folder", field=str(key_out.parent))
    key = add_key(key_file, name)
    write_atomic(key_out, (key + "\n").encode(), mode=0o600)
    if as_json:
        print_json({"name": name, "key_file": str(key_file), "key_out": str(key_out)})
    else:
        console.print(f"added key {name!r} to {key_file}; the key is in {key_out} (mode 0600)",
                      markup=False, highlight=False)


@api_key.command("list")
@_KEY_FILE
@click.option("--json", "as_json", is_flag=True)
def list_keys(key_file: Path, as_json: bool) -> None:
    """The key names in KEY_FILE and the start of each hash."""
    entries = read_entries(key_file)
    if as_json:
        print_json([{"name": e.name, "sha256": e.digest.hex()} for e in entries])
        return
    table = Table("name", "sha256")
    for e in entries:
        table.add_row(*text_row(e.name, e.digest.hex()[:16] + "…"))
    console.print(table)


@api_key.command("revoke")
@_KEY_FILE
@click.argument("name")
def revoke(key_file: Path, name: str) -> None:
    """Remove the key named NAME; running servers stop accepting it within a second."""
    revoke_key(key_file, name)
    console.print(f"revoked key {name!r}", markup=False, highlight=False)


__all__ = ["api_key"]
