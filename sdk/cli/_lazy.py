"""A click group that imports subcommands only when they are used."""

from __future__ import annotations

import importlib
from typing import Any

import click

from .output import fail


class LazyGroup(click.Group):
    """``lazy`` maps a command name to ``(module:attr, extra, help)``."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            target, extra, _ = self.lazy[cmd_name]
            module, attr = target.split(":")
            try:
                cmd = getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                missing = exc.name or str(exc)
                fail(f"'{cmd_name}' needs the [{extra}] extra ({missing} is not installed): "
                     f"pip install 'edgerec[{extra}]'")
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, self.lazy[n][2]) if n in self.lazy else (n, self.commands[n].get_short_help_str())
                for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)
