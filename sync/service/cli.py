"""``edgerec sync``: run the sync service."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
from click.core import ParameterSource

from edgerec.sdk.cli.log_options import log_options
from edgerec.sdk.cli.output import busy, console, print_json, progress_wanted
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.cli.secret_input import db_option
from edgerec.sync.protocol.errors import ConfigError

from .blob_url import BLOB_URL_ENV, parse_blob_url
from .config import ServiceConfig
from .store import Database


@click.group("sync")
def sync_group() -> None:
    """Run the sync service (TUF repository, enrollment, rollouts, reports)."""


_KEY_FILE = click.option(
    "--key-file", type=AbsolutePath(dir_okay=False, path_type=Path), default=None, envvar="EDGEREC_SYNC_KEY_FILE",
    help="A stateless replica's own key file (0600), which opens the online keys kept in the database; "
         "with --db instead of --data-dir. Env: EDGEREC_SYNC_KEY_FILE.")


_BLOB_URL = click.option(
    "--blob-url", default=None, envvar=BLOB_URL_ENV,
    help="A stateless replica's package store: s3://BUCKET/PREFIX (needs 'edgerec[s3]'); endpoint, region and "
         "credentials from the standard AWS variables (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...), a profile "
         f"or an instance role. Default: in the database. Env: {BLOB_URL_ENV}.")


def _blob_url(value: str | None) -> str:
    """``--blob-url`` checked (one-line error naming the option), or "" when not given."""
    if not value:
        return ""
    return parse_blob_url(value, f"--blob-url ({BLOB_URL_ENV})").url


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="Data directory made by 'edgerec admin init' (or none: a stateless replica, --db and --key-file).")
@db_option
@_KEY_FILE
@click.option("--work-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="A stateless replica's local folder for uploads in progress (default: a temporary one).")
@_BLOB_URL
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True)
@click.option("--tls-cert", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Serve HTTPS (TLS 1.2 or later) with this certificate chain (PEM); with --tls-key.")
@click.option("--tls-key", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--tls-client-ca", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Mutual TLS: accept only clients (nodes, admins) with a certificate from this CA bundle.")
@click.option("--repo-url", default=None, envvar="EDGEREC_SYNC_REPO_URL",
              help="Public URL of the TUF repository's static origin (nginx or a CDN serving DATA_DIR/repository); "
                   "pinned in each enrollment answer and signed into each assignment, unless "
                   "'edgerec admin repo-url set' named another. Default: this service's /repository.")
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
@click.option("--body-timeout-s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Time a request body may take from its first byte to its last (408 after); for an upload, "
                   "each read of it.")
@log_options("text")
def serve(data_dir: Path | None, db_url: str | None, key_file: Path | None, work_dir: Path | None,
          blob_url: str | None, host: str,
          port: int, tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None, repo_url: str | None,
          otlp_endpoint: str | None, threads: int | None, workers: int, max_connections: int,
          header_timeout_s: float, body_timeout_s: float, access_log: bool, log_format: str, log_level: str,
          log_flush_ms: float) -> None:
    """Serve the node and admin APIs and the TUF repository on granian."""
    from edgerec.sdk.http_server import check_tls_files
    from edgerec.sdk.json_logs import LogSettings
    from edgerec.sdk.tracing import check_otlp_endpoint

    from .server import http_settings
    from .server import serve as run

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if otlp_endpoint:  # the workers read the standard variable
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = check_otlp_endpoint(otlp_endpoint)
    logs = LogSettings(log_format, log_level, log_flush_ms, access_log)
    logs.apply()
    given = {"threads": threads, "repo_url": repo_url, "blob_url": blob_url and _blob_url(blob_url)}
    config = ServiceConfig.from_env().with_changes({k: v for k, v in given.items() if v},
                                                   lambda name: "--" + name.replace("_", "-"))
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    if tls:
        check_tls_files(*tls, tls_client_ca)
    settings = http_settings(config, host, port, tls, workers, tls_client_ca, max_connections=max_connections,
                             header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)
    run(data_dir, db_url, config, settings, key_file=key_file, work_dir=work_dir, logs=logs)


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None)
@db_option
@click.option("--to-database", is_flag=True,
              help="Also move the data directory's online keys and package blobs into the database, so "
                   "replicas need only --db and --key-file.")
@_KEY_FILE
@click.option("--blob-url", default=None, envvar=BLOB_URL_ENV,
              help="With --to-database: move the package blobs into this object store (s3://BUCKET/PREFIX, as "
                   f"'sync serve --blob-url') instead of the database's rows. Env: {BLOB_URL_ENV}.")
@click.option("--blobs-to-bucket", is_flag=True,
              help="Move the blobs kept in the database's rows into the --blob-url bucket (once every replica "
                   "has --blob-url; run again after an interruption).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def migrate(data_dir: Path | None, db_url: str | None, to_database: bool, key_file: Path | None,
            blob_url: str | None, blobs_to_bucket: bool, as_json: bool) -> None:
    """Create or upgrade the database schema (the service also does this at start)."""
    from .datadir import DataDir
    from .move_state import move_blobs_to_bucket, move_to_database
    from .store import migrate as run_migrations

    if blobs_to_bucket:
        if to_database or data_dir is not None or not db_url or not blob_url:
            raise ConfigError("--blobs-to-bucket needs --db and --blob-url (and no --data-dir or --to-database)")
        store = _blob_url(blob_url)
        with busy(f"moving the database's blobs into {store}", progress_wanted(as_json)), \
                tempfile.TemporaryDirectory(prefix="edgerec-migrate-") as work:
            count = move_blobs_to_bucket(db_url, parse_blob_url(store), Path(work))
        if as_json:
            print_json({"blobs": count, "blob_url": store})
        else:
            console.print(f"moved {count} blobs from the database into {store}", markup=False)
        return

    if to_database:
        if data_dir is None or key_file is None:
            raise ConfigError("--to-database needs --data-dir (what to move) and --key-file (made if missing)")
        store = _blob_url(blob_url)
        with busy("moving the data directory's keys and blobs into the database" + (f" and {store}" if store else ""),
                  progress_wanted(as_json)):
            moved = move_to_database(data_dir, db_url, key_file, parse_blob_url(store) if store else None)
        doc = {"keys": moved.keys, "blobs": moved.blobs, "blobs_present": moved.blobs_present,
               "key_id": moved.key_id, "key_created": moved.key_created, "blob_url": store or None}
        if as_json:
            print_json(doc)
        else:
            console.print(f"moved into the database: {moved.keys} online keys (replica key {moved.key_id}"
                          f"{', new file' if moved.key_created else ''}), {moved.blobs} blobs "
                          f"({moved.blobs_present} were there)", markup=False)
        return
    from_env = click.get_current_context().get_parameter_source("blob_url") == ParameterSource.ENVIRONMENT
    if blob_url and not from_env:  # EDGEREC_BLOB_URL, exported for the replicas, does not stop a schema upgrade
        raise ConfigError("--blob-url goes with --to-database or --blobs-to-bucket (where the blobs go)")
    if data_dir is None and not db_url:
        raise ConfigError("give --data-dir or --db")
    db = Database(DataDir(data_dir).db_url(db_url) if data_dir else str(db_url))
    try:
        before = run_migrations(db)
    finally:
        db.dispose()
    if as_json:
        print_json({"before": before})
    else:
        console.print(f"database schema at the current version (was {before or 'empty'})", markup=False)


@sync_group.command()
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="The service's data directory (or none: --db and --key-file, as a stateless replica).")
@db_option
@_KEY_FILE
@click.option("--json", "as_json", is_flag=True)
def resign(data_dir: Path | None, db_url: str | None, key_file: Path | None, as_json: bool) -> None:
    """After restoring a backup: re-sign the TUF metadata past any version nodes may have seen since it was taken.

    Run it once, with the service stopped or running, before nodes poll the restored service: they refuse
    metadata older than what they trust, so without it they stop following until it is re-signed.
    """
    from .core import SyncService

    with tempfile.TemporaryDirectory(prefix="edgerec-resign-") as work:
        service = SyncService.open_any(data_dir, db_url, ServiceConfig.from_env(), key_file, Path(work))
        try:
            versions = service.resign_after_restore()
        finally:
            service.close()
    if as_json:
        print_json(versions)
    else:
        console.print("re-signed: " + ", ".join(f"{r} v{v}" for r, v in sorted(versions.items())), markup=False)


@sync_group.group("replica-key")
def replica_key() -> None:
    """Replica keys: each stateless replica's own key file, which opens the online keys in the database."""


@replica_key.command("add")
@db_option
@_KEY_FILE
@click.option("--new-key-file", type=AbsolutePath(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new key (0600; refused if it exists).")
def replica_key_add(db_url: str | None, key_file: Path | None, new_key_file: Path) -> None:
    """Make a key file for another replica (or a rotation), opening the online keys with --key-file."""
    from .replica_keys import add_replica_key

    if key_file is None:
        raise ConfigError("--key-file: a replica key the database knows is needed to open the online keys")
    db = _database(db_url)
    try:
        kid = add_replica_key(db, key_file, new_key_file)
    finally:
        db.dispose()
    console.print(f"replica key {kid} written to {new_key_file}", markup=False)


@replica_key.command("remove")
@db_option
@click.option("--key-id", required=True, help="The replica key to retire (as 'add' printed it).")
def replica_key_remove(db_url: str | None, key_id: str) -> None:
    """Retire a replica key: its file opens nothing any more (the last key is never removed)."""
    from .replica_keys import remove_replica_key

    db = _database(db_url)
    try:
        removed = remove_replica_key(db, key_id)
    finally:
        db.dispose()
    console.print(f"replica key {key_id}: {removed} wrapped keys removed", markup=False)


def _database(db_url: str | None) -> Database:
    if not db_url:
        raise ConfigError("--db (or EDGEREC_DB_URL) is needed")
    return Database(db_url)
