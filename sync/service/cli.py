"""``edgerec sync``: run the sync service."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from edgerec.sdk.cli.output import console
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.cli.secret_input import db_option
from edgerec.sync.protocol.errors import ConfigError

from .config import ServiceConfig


@click.group("sync")
def sync_group() -> None:
    """Run the sync service (TUF repository, enrollment, rollouts, reports)."""


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True,
              help="Data directory made by 'edgerec admin init'.")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True)
@click.option("--tls-cert", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Serve HTTPS (TLS 1.2 or later) with this certificate chain (PEM); with --tls-key.")
@click.option("--tls-key", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--tls-client-ca", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Mutual TLS: accept only clients (nodes, admins) with a certificate from this CA bundle.")
@click.option("--repo-url", default=None, envvar="EDGEREC_SYNC_REPO_URL",
              help="Public URL of the TUF repository's static origin (nginx or a CDN serving DATA_DIR/repository); "
                   "pinned in each enrollment answer. Default: this service's /repository.")
@click.option("--otlp-endpoint", default=None,
              help="Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318); the same as "
                   "OTEL_EXPORTER_OTLP_ENDPOINT.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Requests per worker that run at once, once their body is read, and its database "
                   "connections (default 4).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the port (one that dies is replaced; with 2 or more the port "
                   "never closes).")
@click.option("--max-connections", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Open connections per worker, idle ones included; more wait in the kernel's queue.")
@click.option("--header-timeout-s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Time a request head may take from its first byte; also an idle keep-alive connection's.")
def serve(data_dir: Path, db_url: str | None, host: str, port: int, tls_cert: Path | None,
          tls_key: Path | None, tls_client_ca: Path | None, repo_url: str | None, otlp_endpoint: str | None,
          threads: int | None, workers: int, max_connections: int, header_timeout_s: float) -> None:
    """Serve the node and admin APIs and the TUF repository on granian."""
    from edgerec.sdk.http_server import check_tls_files
    from edgerec.sdk.tracing import check_otlp_endpoint

    from .server import http_settings
    from .server import serve as run

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if otlp_endpoint:  # the workers read the standard variable
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = check_otlp_endpoint(otlp_endpoint)
    logging.getLogger("edgerec").setLevel(logging.INFO)
    config = ServiceConfig.from_env()
    if threads:
        config = ServiceConfig(**{**config.__dict__, "threads": threads})
    if repo_url:
        config = ServiceConfig(**{**config.__dict__, "repo_url": repo_url})
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if tls:
        check_tls_files(*tls, tls_client_ca)
    settings = http_settings(config, host, port, tls, workers, tls_client_ca, max_connections=max_connections,
                             header_timeout_s=header_timeout_s)
    run(data_dir, db_url, config, settings)


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@db_option
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
