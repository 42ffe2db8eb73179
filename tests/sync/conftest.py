"""Fixtures of the sync tests: a store (SQLite or PostgreSQL), a running service, nodes.

Every test that touches the store runs twice, on SQLite and on PostgreSQL.
PostgreSQL comes from ``EDGEREC_TEST_POSTGRES_URL`` (CI) or from a throwaway
local cluster (``initdb``/``pg_ctl`` found); each test gets its own schema.
Without either, PostgreSQL cases are skipped, except under CI=true where
they fail.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url
from support.postgres import LocalPostgres, find_pg_bin

from edgerec.sdk.keys import generate_keypair, load_signing_key
from edgerec.sdk.testing import build_demo_package
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import DaemonConfig, NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.service.admin_init import InitResult, init_service
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.core import SyncService
from edgerec.sync.service.server import RunningServer
from edgerec.sync.service.store import Database, migrate

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ENV = "EDGEREC_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sync_config(**fields): ServiceConfig fields for the sync_env fixture")


# -- the store -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    if find_pg_bin() is not None:
        pg = LocalPostgres()
        try:
            pg.start()
        except Exception as exc:  # no usable cluster here: same outcome as no binaries
            pg.stop()
            if IN_CI:
                pytest.fail(f"{PG_ENV} is not set and a local PostgreSQL did not start: {exc}")
            pytest.skip(f"PostgreSQL not available: {PG_ENV} unset and a local cluster did not start ({exc})")
        yield pg.url
        pg.stop()
        return
    if IN_CI:
        pytest.fail(f"{PG_ENV} is not set: .ci/run must start PostgreSQL")
    pytest.skip(f"PostgreSQL not available: set {PG_ENV} or install PostgreSQL (initdb, pg_ctl)")


def _psycopg_dsn(url: str) -> str:
    u = make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_schema_url(pg_server_url: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL server, as a URL whose search_path points at it."""
    schema = "edgerec_t_" + secrets.token_hex(5)
    dsn = _psycopg_dsn(pg_server_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield make_url(pg_server_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sync.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated store, on SQLite and on PostgreSQL (a fresh schema)."""
    d = Database(db_url)
    migrate(d)
    yield d
    d.dispose()


# -- keys and packages -------------------------------------------------------------------


@dataclass(frozen=True)
class Publisher:
    key: Ed25519PrivateKey
    public_path: Path


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    g = generate_keypair(tmp_path_factory.mktemp("publisher"), "publisher")
    return Publisher(load_signing_key(g.private_path), g.public_path)


@pytest.fixture(scope="session")
def packages(publisher: Publisher) -> dict[int, bytes]:
    """ctr versions 1, 2 and 3 (different weights), signed by the trusted publisher."""
    return {v: build_demo_package("ctr", v, publisher.key, seed=v) for v in (1, 2, 3)}


# -- a running service -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerRecord:
    """One log record the service's process wrote (``LEVEL logger: message``), as caplog would show it."""

    levelname: str
    name: str
    msg: str
    exc: str = ""

    @property
    def levelno(self) -> int:
        return int(logging.getLevelName(self.levelname))

    def getMessage(self) -> str:
        return self.msg


class ServerLog:
    """The records of a service process's log (its output file), from a mark on (``clear`` moves it)."""

    LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def clear(self) -> None:
        self.offset = self.path.stat().st_size

    @property
    def records(self) -> list[ServerRecord]:
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
        out: list[ServerRecord] = []
        for line in text.splitlines():
            m = self.LINE.match(line)
            if m:
                out.append(ServerRecord(m[1], m[2], m[3]))
            elif out and not line.startswith("[") and not line.startswith("edgerec sync serving"):
                last = out[-1]  # a traceback's lines belong to the record before them
                out[-1] = ServerRecord(last.levelname, last.name, last.msg, last.exc + line + "\n")
        return out


@dataclass
class SyncEnv:
    """One initialised service, served by ``edgerec sync serve`` (granian, a child process) on 127.0.0.1,
    and helpers to drive it."""

    tmp: Path
    init: InitResult
    service: SyncService
    server: RunningServer
    publisher: Publisher
    packages: dict[int, bytes]
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.init.data_dir

    def server_log(self) -> ServerLog:
        """The service process's log records from now on (``clear()`` moves the mark)."""
        log = ServerLog(self.server.log_path)
        log.clear()
        return log

    def admin(self, token: str | None = None) -> AdminClient:
        c = AdminClient(Credentials(self.url, token or self.init.admin_token))
        self._closers.append(c.close)
        return c

    def token(self, tags: list[str] | None = None, expires_s: float | None = None) -> str:
        return str(self.admin().create_enroll_token(tags or [], expires_s)["token"])

    def enroll(self, name: str = "node", tags: list[str] | None = None) -> NodeState:
        state_dir = self.tmp / "nodes" / f"{name}-{secrets.token_hex(3)}"
        enroll_node(state_dir, self.url, self.token(tags), name)
        return NodeState(state_dir)

    def daemon(self, state: NodeState, **kw: Any) -> NodeDaemon:
        d = NodeDaemon(state, kw.pop("model_dir", state.dir / "models"), kw.pop("edge", None),
                       client=kw.pop("client", None), config=DaemonConfig(**kw) if kw else None)
        self._closers.append(d.close)
        return d

    def publish(self, version: int, channel: str = "stable") -> dict[str, Any]:
        path = self.tmp / f"ctr-{version}.edgepkg"
        path.write_bytes(self.packages[version])
        return self.admin().publish(path, channel)

    def close(self) -> None:
        for c in reversed(self._closers):
            c()


@pytest.fixture
def make_env(db_url: str, tmp_path: Path, publisher: Publisher, packages: dict[int, bytes]) -> Iterator[
        Callable[..., SyncEnv]]:
    """Start a service with ServiceConfig fields given as keywords (maintenance thread off)."""
    envs: list[SyncEnv] = []

    def start(maintenance: bool = False, **fields: Any) -> SyncEnv:
        root = tmp_path / f"env{len(envs)}"
        config = ServiceConfig(**{"threads": 8, **fields})
        init = init_service(root / "data", root / "root-keys", [load_signing_key(
            publisher.public_path.with_suffix(".key")).public_key()], db_url, config=config)
        service = SyncService.open(init.data_dir, config=config)
        server = RunningServer(service, maintenance=maintenance).start()
        env = SyncEnv(root, init, service, server, publisher, packages)
        envs.append(env)
        return env

    yield start
    for env in envs:
        env.close()
        env.server.stop()
        env.service.close()


@pytest.fixture
def sync_env(make_env: Callable[..., SyncEnv], request: pytest.FixtureRequest) -> SyncEnv:
    marker = request.node.get_closest_marker("sync_config")
    return make_env(**(marker.kwargs if marker else {}))
