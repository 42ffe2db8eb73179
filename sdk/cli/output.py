"""Console output shared by every command: rich tables, JSON, one-line errors."""

from __future__ import annotations

import contextlib
import json
import sys
from contextlib import AbstractContextManager
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


def text_row(*cells: object) -> list[str]:
    """Table cells that hold data (paths, names, node-supplied strings): escaped, never read as markup."""
    return [escape(str(c)) for c in cells]


def progress_wanted(as_json: bool = False) -> bool:
    """Progress (bars, spinners) goes to stderr, only when it is a terminal, never with ``--json``."""
    return not as_json and err_console.is_terminal


def busy(text: str, show: bool = True) -> AbstractContextManager[Any]:
    """A transient spinner on stderr saying which long step runs (``text`` is text, not markup)."""
    return err_console.status(escape(text)) if show else contextlib.nullcontext()


def print_json(doc: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
