"""Root command and the SDK's own commands: keys, package, predict, bench, demo."""

from __future__ import annotations

import logging
from typing import Any

import click

from .. import __version__, native_logs
from ..errors import EdgeRecError
from ._lazy import LazyGroup
from .bench import bench
from .keys import keys
from .output import fail
from .package import package_group
from .predict import predict

LAZY = {
    "convert": ("edgerec.converter.cli:convert", "converter", "Convert a Keras/SavedModel/ONNX model to a package."),
    "serve": ("edgerec.edge_server.cli:serve", "edge", "Run the edge inference server."),
    "api-key": ("edgerec.edge_server.api_keys_cli:api_key", "edge",
                "Make, list and revoke the edge server's inference API keys."),
    "sync": ("edgerec.sync.service.cli:sync_group", "sync", "Run the sync service."),
    "admin": ("edgerec.sync.admin.cli:admin", "sync", "Administer the sync service (publish, rollout, nodes)."),
    "node": ("edgerec.sync.node.cli:node", "node", "Run the edge node daemon (enroll, poll, install)."),
    "demo": ("edgerec.examples.fleet.cli:demo_cmd", "all",
             "The whole loop on this machine: convert, publish, install on a node, serve, rank."),
}


class _Root(LazyGroup):
    """Turns every error into one line on stderr: exit code 2 for usage errors, else 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError):
            raise  # click's own way out, or a group's help when given no subcommand
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            fail(exc.format_message() + hint, exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except EdgeRecError as exc:
            fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(f"{where}{exc.strerror or exc}")
        except Exception as exc:
            if ctx.params.get("verbose"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (edgerec --verbose shows where)")


@click.group(cls=_Root, lazy=LAZY)
@click.version_option(__version__, prog_name="edgerec")
@click.option("-v", "--verbose", is_flag=True,
              help="Log debug details, native LiteRT/TensorFlow logs included (or EDGEREC_LOG_NATIVE=1).")
def cli(verbose: bool) -> None:
    """edgerec: recommender models on edge nodes and devices."""
    if verbose:
        native_logs.show()
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    native_logs.quiet()  # before any command imports TensorFlow or LiteRT
    cli(prog_name="edgerec")

for _command in (bench, keys, package_group, predict):
    cli.add_command(_command)

__all__ = ["cli", "main"]
