"""``edgerec sync``: run the sync service."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edgerec.sdk.cli.output import console
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sync.protocol.errors import ConfigError

from .config import ServiceConfig


@click.group("sync")
def sync_group() -> None:
    """Run the sync service (TUF repository, enrollment, rollouts, reports)."""


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True,
              help="Data directory made by 'edgerec admin init'.")
@click.option("--db", "db_url", default=None, help="Database URL (default: the one in the data dir).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True)
@click.option("--tls-cert", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--tls-key", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Worker threads (default 4).")
def serve(data_dir: Path, db_url: str | None, host: str, port: int, tls_cert: Path | None,
          tls_key: Path | None, threads: int | None) -> None:
    """Serve the node and admin APIs and the TUF repository on waitress."""
    from .core import SyncService
    from .server import RunningServer

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    logging.getLogger("edgerec").setLevel(logging.INFO)
    config = ServiceConfig.from_env()
    if threads:
        config = ServiceConfig(**{**config.__dict__, "threads": threads})
    svc = SyncService.open(data_dir, db_url, config)
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    server = RunningServer(svc, host, port, tls).start()
    # One line a supervisor (or a test) can wait for.
    console.print(f"edgerec sync serving on {server.url} (database {svc.db.dialect})", highlight=False,
                  markup=False)
    try:
        server.wait()
    finally:
        svc.close()


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--db", "db_url", default=None)
def migrate(data_dir: Path, db_url: str | None) -> None:
    """Create or upgrade the database schema (the service also does this at start)."""
    from .datadir import DataDir
    from .store import Database
    from .store import migrate as run_migrations

    db = Database(DataDir(data_dir).db_url(db_url))
    try:
        before = run_migrations(db)
    finally:
        db.dispose()
    console.print(f"database schema at the current version (was {before or 'empty'})", markup=False)
