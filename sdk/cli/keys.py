"""``edgerec keys``: make key pairs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..choices import parse_choice
from ..keys import KEY_KINDS, generate_keypair
from .output import console, print_json


@click.group()
def keys() -> None:
    """Make and inspect key pairs."""


@keys.command("generate")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder for NAME.key (0600) and NAME.pub.")
@click.option("--name", default="publisher", show_default=True)
@click.option("--kind", type=click.Choice(KEY_KINDS), default="ed25519", show_default=True,
              help="ed25519 signs packages and requests; x25519 receives wrapped model keys.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--json", "as_json", is_flag=True)
def generate(out_dir: Path, name: str, kind: str, force: bool, as_json: bool) -> None:
    """Write a new key pair."""
    k = generate_keypair(out_dir, name, parse_choice(kind, KEY_KINDS, "--kind"), overwrite=force)
    doc = {"kind": k.kind, "key_id": k.key_id, "private": str(k.private_path), "public": str(k.public_path)}
    if as_json:
        print_json(doc)
    else:
        console.print(f"{k.kind} key [bold]{k.key_id[:16]}[/]: {escape(str(k.private_path))} (0600), "
                      f"{escape(str(k.public_path))}")
