"""Root command and the SDK's own commands: keys, package, predict, bench, demo."""

from __future__ import annotations

import logging
from typing import Any

import click

from .. import __version__
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
    "sync": ("edgerec.sync.service.cli:sync_group", "sync", "Run the sync service."),
    "admin": ("edgerec.sync.admin.cli:admin", "sync", "Administer the sync service (publish, rollout, nodes)."),
    "node": ("edgerec.sync.node.cli:node", "node", "Run the edge node daemon (enroll, poll, install)."),
    "demo": ("edgerec.examples.fleet.cli:demo_cmd", "all",
             "The whole loop on this machine: convert, publish, install on a node, serve, rank."),
}


class _Root(LazyGroup):
    """Turns every EdgeRecError into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeRecError as exc:
            fail(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            fail(f"{where}{exc.strerror or exc}")


@click.group(cls=_Root, lazy=LAZY)
@click.version_option(__version__, prog_name="edgerec")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """edgerec: recommender models on edge nodes and devices."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="edgerec")

for _command in (bench, keys, package_group, predict):
    cli.add_command(_command)

__all__ = ["cli", "main"]
