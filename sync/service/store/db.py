"""The database handle: SQLite (WAL) by default, PostgreSQL by URL.

Writers must not interleave badly across threads *and* processes. On SQLite a
write transaction starts with ``BEGIN IMMEDIATE``, which takes the database's
write lock up front (a deferred transaction that reads first and then writes
can fail with SQLITE_BUSY instead of waiting). On PostgreSQL sections that
need order take a row lock with :meth:`Database.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from edgerec.sdk.files import private_sqlite_file
from edgerec.sync.protocol.errors import ConfigError

from .models import Counter

_SQLITE_BUSY_MS = 30_000


class Database:
    """Engine and sessions for one database URL."""

    def __init__(self, url: str, pool_size: int = 16) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError("the database URL is not valid (expected sqlite:///PATH or postgresql://...)") from exc
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            private_sqlite_file(parsed.database)
            self.engine = self._sqlite_engine(url, pool_size)
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            # No pre-ping: it made a heartbeat check-in wait on the database 7 times instead of 4 (psycopg's
            # socket waits), to spare one failed request after the database restarts. SQLAlchemy invalidates the
            # whole pool on the first disconnect it sees; that request gets 503 + Retry-After (app.py).
            # Recycled before the idle timeouts of common middleboxes (an AWS NLB drops a flow idle for 350 s),
            # which would otherwise cost such a request after every quiet spell.
            self.engine = create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_recycle=240)
        else:
            raise ConfigError(f"database {self.dialect!r} is not supported (use sqlite or postgresql)")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Threads of this process queue on a mutex
        # (handed over at once) instead of SQLite's busy handler, which sleeps and
        # retries in steps of up to 100 ms; other processes still meet the busy handler.
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    @staticmethod
    def _sqlite_engine(url: str, pool_size: int) -> Engine:
        # isolation_level=None: the driver leaves transactions to us, so the
        # "begin" hook decides between BEGIN and BEGIN IMMEDIATE.
        engine = create_engine(
            url,
            connect_args={"isolation_level": None, "check_same_thread": False,
                          "timeout": _SQLITE_BUSY_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: durable at checkpoints, no fsync per commit.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
            # Checkpoints (and their fsync) run from the maintenance loop, not inside a
            # request's commit; this only bounds the WAL if maintenance is not running.
            cur.execute("PRAGMA wal_autocheckpoint=20000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("edgerec_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        """Serialise schema changes across processes on one SQLite file.

        A fresh file's first connections switch it to WAL while another creates
        tables; SQLite can answer SQLITE_BUSY there without calling the busy
        handler, so processes starting together take this file lock first.
        PostgreSQL uses an advisory lock inside the migration instead.
        """
        database = self.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
            yield
            return
        fd = os.open(os.path.abspath(database) + ".migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read transaction (committed on exit, so it may also do small writes)."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any error."""
        with self._write_lock, self._sessions() as session:
            # Procuring the connection begins the transaction (BEGIN IMMEDIATE on SQLite).
            session.connection(execution_options={"edgerec_write": True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """:meth:`write` on a bare connection, without an ORM session (a third of its cost, measured in
        bench/sync_checkin.py): for hot paths that only run statements. ``Session(bind=conn)`` joins it."""
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(edgerec_write=True)  # BEGIN IMMEDIATE on SQLite (the "begin" hook)
            with conn.begin():
                yield conn

    @contextmanager
    def statement_connection(self) -> Iterator[Connection]:
        """A connection for a hot path that reads, then writes a row or two: on PostgreSQL each statement
        commits on its own (autocommit), so a check-in waits on the database for its statements only, not
        also for BEGIN and COMMIT (two round trips of four). Group writes that must commit together with
        :meth:`together`. On SQLite it is :meth:`write_connection`'s transaction (writers queue on its mutex)."""
        if self.dialect == "sqlite":
            with self.write_connection() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def together(self, conn: Connection) -> Iterator[None]:
        """On a :meth:`statement_connection`: the statements run inside commit together or not at all.

        PostgreSQL begins the transaction at its first statement, so a block that runs none costs no round trip.
        """
        if self.dialect == "sqlite":
            yield  # already inside the write transaction
            return
        conn.commit()  # ends SQLAlchemy's own record of the autocommit statements; nothing reaches the server
        conn.execution_options(isolation_level=conn.default_isolation_level)
        with conn.begin():
            yield

    def lock(self, session: Session, name: str) -> int:
        """Take (and hold to the end of the transaction) the named lock; returns its counter.

        PostgreSQL: a row lock. SQLite: the write transaction already holds the
        database's write lock, so this only reads. The rows are made by the migrations.
        """
        value = session.execute(
            select(Counter.value).where(Counter.name == name).with_for_update()
        ).scalar_one_or_none()
        if value is None:
            raise ConfigError(f"database: counter {name!r} is missing (schema not migrated?)")
        return value

    def next_value(self, session: Session, name: str) -> int:
        """Increment a counter under its lock and return the new value."""
        value = self.lock(session, name) + 1
        session.execute(update(Counter).where(Counter.name == name).values(value=value))
        return value

    def insert(self, model: type[Any]) -> Any:
        """An INSERT with this dialect's ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
        if self.dialect == "postgresql":
            return pg_insert(model)
        return sqlite_insert(model)

    def checkpoint(self) -> None:
        """Copy the SQLite WAL into the database file without blocking writers (PASSIVE)."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def dispose(self) -> None:
        self.engine.dispose()
