"""Schema migrations: create and stamp, step up, refuse a newer schema, run safely in parallel."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Connection, inspect, select, text, update

from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.service.store import SCHEMA_VERSION, Database, migrate
from edgerec.sync.service.store.migrations import current_version
from edgerec.sync.service.store.models import Counter, SchemaInfo


@pytest.fixture
def db(db_url):
    d = Database(db_url)
    yield d
    d.dispose()


def _version(db: Database) -> int | None:
    with db.engine.connect() as conn:
        return current_version(conn)


def test_fresh_database_is_created_and_stamped(db):
    assert migrate(db) == 0
    assert _version(db) == SCHEMA_VERSION
    with db.read() as s:
        assert set(s.execute(select(Counter.name)).scalars()) == {"repository", "serial"}
    assert migrate(db) == SCHEMA_VERSION  # nothing to do the second time


def test_steps_bring_an_older_schema_up(db):
    migrate(db)
    calls: list[int] = []
    nxt = SCHEMA_VERSION + 1

    def add_notes(conn: Connection) -> None:
        calls.append(nxt)
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))

    assert migrate(db, head=nxt, steps={nxt: add_notes}) == SCHEMA_VERSION
    assert calls == [nxt] and _version(db) == nxt
    with db.engine.connect() as conn:
        assert inspect(conn).has_table("notes")
    migrate(db, head=nxt, steps={nxt: add_notes})
    assert calls == [nxt]
    with pytest.raises(ConfigError, match=f"no migration to version {nxt + 1}"):
        migrate(db, head=nxt + 1, steps={})


def test_a_version_1_database_gets_the_node_truth_columns(db):
    """Schema 1 (before what nodes serve was recorded) steps up to 2 with its rows kept."""
    v1 = {
        "nodes": "poll_interval_s, edge", "node_models": "serving_version, failure_bad",
        "rollouts": "max_failures, max_failure_percent, paused_reason",
    }
    migrate(db)
    with db.engine.begin() as conn:
        # Make the fresh schema what version 1 was: no node_failures, none of the new columns.
        conn.execute(text("DROP TABLE node_failures"))
        for table, cols in v1.items():
            for col in cols.split(", "):
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {col}"))
        conn.execute(update(SchemaInfo).values(version=1))
        conn.execute(text("INSERT INTO nodes (id, name, signing_key, recipient_key, tags, enrolled) "
                          "VALUES ('n1', 'edge-1', 'k', 'k', '[]', 1.0)"))
    assert migrate(db) == 1 and _version(db) == SCHEMA_VERSION
    with db.engine.connect() as conn:
        insp = inspect(conn)
        assert insp.has_table("node_failures") and insp.has_table("metric_releases")
        for table, cols in v1.items():
            assert set(cols.split(", ")) <= {c["name"] for c in insp.get_columns(table)}, table
        assert conn.execute(text("SELECT name, edge FROM nodes")).all() == [("edge-1", None)]


def test_a_version_3_database_gets_the_stateless_replica_tables(db):
    """Schema 3 (state in a data directory) steps up to 4: blobs, their chunks and wrapped keys; rows kept."""
    migrate(db)
    with db.engine.begin() as conn:
        for table in ("wrapped_keys", "blob_chunks", "blobs"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(update(SchemaInfo).values(version=3))
        conn.execute(text("INSERT INTO nodes (id, name, signing_key, recipient_key, tags, enrolled) "
                          "VALUES ('n1', 'edge-1', 'k', 'k', '[]', 1.0)"))
    assert migrate(db) == 3 and _version(db) == SCHEMA_VERSION
    with db.engine.begin() as conn:
        assert {"blobs", "blob_chunks", "wrapped_keys"} <= set(inspect(conn).get_table_names())
        conn.execute(text("INSERT INTO blob_chunks (sha256, seq, data) VALUES ('a', 0, :d)"), {"d": b"\x00\xff"})
        assert conn.execute(text("SELECT data FROM blob_chunks")).scalar_one() == b"\x00\xff"
        assert conn.execute(text("SELECT name FROM nodes")).scalars().all() == ["edge-1"]


def test_a_version_4_database_gets_the_service_settings_table(db):
    """Schema 4 steps up to 5: ``service_settings`` (the admin's repository origin), rows elsewhere kept."""
    migrate(db)
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE service_settings"))
        conn.execute(update(SchemaInfo).values(version=4))
        conn.execute(text("INSERT INTO nodes (id, name, signing_key, recipient_key, tags, enrolled) "
                          "VALUES ('n1', 'edge-1', 'k', 'k', '[]', 1.0)"))
    assert migrate(db) == 4 and _version(db) == SCHEMA_VERSION
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO service_settings (name, value, updated) VALUES ('repo_url', 'x', 1.0)"))
        assert conn.execute(text("SELECT value FROM service_settings")).scalar_one() == "x"
        assert conn.execute(text("SELECT name FROM nodes")).scalars().all() == ["edge-1"]


def test_a_version_5_database_gets_the_blob_location(db):
    """Schema 5 steps up to 6: ``blobs.location``, 'db' for every blob stored so far (its chunks are rows)."""
    migrate(db)
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE blobs"))
        conn.execute(text("CREATE TABLE blobs (sha256 VARCHAR(64) PRIMARY KEY, size BIGINT, chunk_size INTEGER, "
                          "created FLOAT)"))
        conn.execute(text("INSERT INTO blobs VALUES (:s, 5, 1048576, 1.0)"), {"s": "ab" * 32})
        conn.execute(update(SchemaInfo).values(version=5))
    assert migrate(db) == 5 and _version(db) == SCHEMA_VERSION == 6
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT sha256, location FROM blobs")).all() == [("ab" * 32, "db")]
        conn.execute(text("INSERT INTO blobs (sha256, size, chunk_size, created, location) "
                          "VALUES (:s, 1, 1, 1.0, 's3')"), {"s": "cd" * 32})
        assert sorted(conn.execute(text("SELECT location FROM blobs")).scalars()) == ["db", "s3"]


def test_a_newer_schema_is_refused(db):
    migrate(db)
    with db.write() as s:
        s.execute(update(SchemaInfo).values(version=99))
    with pytest.raises(ConfigError, match="newer than this service"):
        migrate(db)


def test_processes_starting_together_migrate_once(db_url):
    dbs = [Database(db_url) for _ in range(4)]
    results: list[int] = []
    errors: list[BaseException] = []

    def run(d: Database) -> None:
        try:
            results.append(migrate(d))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and sorted(results) == [0, *[SCHEMA_VERSION] * 3]
    with dbs[0].read() as s:
        assert s.execute(select(SchemaInfo.version)).scalars().all() == [SCHEMA_VERSION]
    for d in dbs:
        d.dispose()
