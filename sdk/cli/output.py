"""Console output shared by every command: rich tables, JSON, one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit non-zero.

    The message is text, never markup: it often holds paths, user input or
    ``[extra]`` names that rich would otherwise eat as style tags.
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def print_json(doc: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
