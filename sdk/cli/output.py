"""Console output shared by every command: rich tables, JSON, one-line errors."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from contextlib import AbstractContextManager
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)
# C0 and C1 control characters and DEL: a terminal acts on them (ESC starts a command sequence),
# and rich passes ESC through; tabs and newlines are left to the layout.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: object) -> str:
    """Text from outside (paths, names, node-supplied strings) as rich shows it: never markup,
    never a terminal control sequence (control characters are shown as ``\\xNN``)."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text)))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit non-zero.

    The message is text, never markup: it often holds paths, user input or
    ``[extra]`` names that rich would otherwise eat as style tags.
    """
    err_console.print(f"[bold red]error:[/] {plain(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def text_row(*cells: object) -> list[str]:
    """Table cells that hold data (paths, names, node-supplied strings): escaped, never read as markup."""
    return [plain(c) for c in cells]


def progress_wanted(as_json: bool = False) -> bool:
    """Progress (bars, spinners) goes to stderr, only when it is a terminal, never with ``--json``."""
    return not as_json and err_console.is_terminal


def busy(text: str, show: bool = True) -> AbstractContextManager[Any]:
    """A transient spinner on stderr saying which long step runs (``text`` is text, not markup)."""
    return err_console.status(plain(text)) if show else contextlib.nullcontext()


def print_json(doc: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout (ASCII, strict: never NaN)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
