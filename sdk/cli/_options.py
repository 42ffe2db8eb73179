"""Options shared by commands that open or load a package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..keys import load_recipient_key, load_verify_key
from ..model import ACCELERATOR_CHOICES, EdgeModel, parse_accelerator
from ..package import Package
from ..runtime import BACKEND_CHOICES, parse_backend

F = Callable[..., Any]


def trust_options(f: F) -> F:
    f = click.option(
        "--trusted-key", "-k", "trusted_keys", multiple=True, required=True,
        type=click.Path(dir_okay=False, path_type=Path), envvar="EDGEREC_TRUSTED_KEYS",
        help="Trusted publisher public key (.pub); repeatable. Env: EDGEREC_TRUSTED_KEYS.",
    )(f)
    return f


def model_options(f: F) -> F:
    f = trust_options(f)
    f = click.option("--recipient-key", type=click.Path(dir_okay=False, path_type=Path),
                     help="X25519 private key that opens an encrypted package.")(f)
    f = click.option("--recipient-id", help="This node's recipient id (with --recipient-key).")(f)
    f = click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads.")(f)
    return f


def open_package(path: Path, trusted_keys: tuple[Path, ...]) -> Package:
    return Package.open(path, [load_verify_key(k) for k in trusted_keys])


def load_model(
    path: Path, trusted_keys: tuple[Path, ...], recipient_key: Path | None, recipient_id: str | None,
    accelerator: str, backend: str, threads: int | None,
) -> EdgeModel:
    rkey = load_recipient_key(recipient_key) if recipient_key else None
    return EdgeModel.load(
        open_package(path, trusted_keys), recipient_key=rkey, recipient_id=recipient_id,
        accelerator=parse_accelerator(accelerator, "--accelerator"), backend=parse_backend(backend, "--backend"),
        threads=threads,
    )


accelerator_option = click.option(
    "--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto", show_default=True
)
