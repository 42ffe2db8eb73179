"""Versioned schema migrations, run by the service (and ``admin init``) at start.

A fresh database gets the current models' tables and is stamped with
:data:`SCHEMA_VERSION` (what Alembic's documentation recommends as
"create_all, then stamp head"). An older database is brought up one step at a
time by the functions in :data:`STEPS`; a newer one is refused, so an old
service never writes a schema it does not know. Migrations run under a lock,
so several service processes may start at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from sqlalchemy import Connection, insert, inspect, select, text, update

from edgerec.sync.protocol.errors import ConfigError

from .db import Database
from .models import (
    FLEET_METRICS_TABLES,
    STATELESS_TABLES,
    Base,
    Counter,
    NodeFailure,
    SchemaInfo,
    ServiceSetting,
)

log = logging.getLogger("edgerec.sync.service.store")

SCHEMA_VERSION = 6


def _v2_node_truth(conn: Connection) -> None:
    """What nodes serve, their edge server and poll interval, failure history, self-pausing rollouts."""
    for table, column, kind in (
        ("nodes", "poll_interval_s", "FLOAT"), ("nodes", "edge", "VARCHAR(16)"),
        ("node_models", "serving_version", "BIGINT"), ("node_models", "failure_bad", "BOOLEAN"),
        ("rollouts", "max_failures", "INTEGER"), ("rollouts", "max_failure_percent", "FLOAT"),
        ("rollouts", "paused_reason", "TEXT"),
    ):
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    NodeFailure.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _add_fleet_metrics(conn: Connection) -> None:
    """3: the nodes' private releases (``metric_releases``, ``metric_counts``), ``ops_windows``, ``experiments``."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in FLEET_METRICS_TABLES])


def _add_stateless_state(conn: Connection) -> None:
    """4: package ciphertexts (``blobs``, ``blob_chunks``) and wrapped online keys (``wrapped_keys``)."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in STATELESS_TABLES])


def _add_service_settings(conn: Connection) -> None:
    """5: ``service_settings`` (the repository origin an admin set with ``admin repo-url set``)."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[ServiceSetting.__tablename__]])


def _add_blob_location(conn: Connection) -> None:
    """6: ``blobs.location``: 'db' (``blob_chunks``, every row so far) or 's3' (an object store)."""
    # A database older than 4 got ``blobs`` from today's model in step 4, location included.
    if "location" in {c["name"] for c in inspect(conn).get_columns("blobs")}:
        return
    conn.execute(text("ALTER TABLE blobs ADD COLUMN location VARCHAR(8) NOT NULL DEFAULT 'db'"))


#: ``STEPS[n]`` brings a database from version ``n - 1`` to ``n``.
STEPS: dict[int, Callable[[Connection], None]] = {
    2: _v2_node_truth, 3: _add_fleet_metrics, 4: _add_stateless_state, 5: _add_service_settings,
    6: _add_blob_location,
}
COUNTERS = ("repository", "serial")
# Any 64-bit key, the same for every process of every edgerec service.
_PG_LOCK_KEY = 0x65646765726563


def current_version(conn: Connection) -> int | None:
    """The schema version recorded in the database, or None for an empty one."""
    if not inspect(conn).has_table(SchemaInfo.__tablename__):
        return None
    return conn.execute(select(SchemaInfo.version).where(SchemaInfo.id == 1)).scalar_one_or_none()


def migrate(
    db: Database, head: int = SCHEMA_VERSION, steps: Mapping[int, Callable[[Connection], None]] = STEPS
) -> int:
    """Create or upgrade the schema to ``head``; return the version it was at (0 if new)."""
    with db.schema_lock(), db.engine.connect() as conn:
        # edgerec_write: on SQLite the begin hook issues BEGIN IMMEDIATE (the write lock).
        conn.execution_options(edgerec_write=True)
        with conn.begin():
            if db.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            before = _migrate_locked(conn, head, steps)
    return before


def _migrate_locked(conn: Connection, head: int, steps: Mapping[int, Callable[[Connection], None]]) -> int:
    version = current_version(conn)
    if version is None:
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaInfo).values(id=1, version=head))
        conn.execute(insert(Counter), [{"name": n, "value": 0} for n in COUNTERS])
        log.info("database schema created at version %d", head)
        return 0
    if version > head:
        raise ConfigError(
            f"database schema is at version {version}, newer than this service knows ({head}): "
            "upgrade edgerec"
        )
    for target in range(version + 1, head + 1):
        step = steps.get(target)
        if step is None:
            raise ConfigError(f"database schema: no migration to version {target}")
        log.info("migrating database schema to version %d", target)
        step(conn)
        conn.execute(update(SchemaInfo).where(SchemaInfo.id == 1).values(version=target))
    return version
