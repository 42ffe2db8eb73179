"""The sync service on PostgreSQL when its database restarts: a 503 to retry, never a 500, then served again.

The service keeps no pre-ping on its pooled connections (a round trip per
checkout); the first request that meets a dead connection gets 503 with
Retry-After, SQLAlchemy drops the whole pool, and the next requests reconnect.
The cluster is this test's own: restarting a shared one would cut other tests off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.postgres import LocalPostgres, find_pg_bin

from edgerec.sync.node.client import NodeClient, http_client
from edgerec.sync.protocol.errors import ApiError

from .conftest import IN_CI

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    if find_pg_bin() is None:
        if IN_CI:
            pytest.fail("PostgreSQL binaries (initdb, pg_ctl) not found: .ci/run installs them")
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    pg = LocalPostgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def db_url(own_pg: LocalPostgres) -> str:  # the service below runs on this cluster
    return own_pg.url


def _report(n: int) -> dict:
    return {"report_id": f"restart-{n:04d}", "kind": "status", "health": "ok",
            "models": [{"name": "ctr", "installed_version": 1, "state": "serving"}]}


def test_a_database_restart_costs_one_retry_not_a_500(make_env, own_pg):
    env = make_env()
    state = env.enroll("edge-1")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    client = NodeClient(http_client(env.url), state.identity().node_id, state.signing_key())
    for n in range(3):  # the pool holds live connections
        assert len(client.checkin(_report(n))) == 1
    log = env.server_log()

    own_pg.restart()
    outcomes: list[object] = []
    for n in range(3, 13):
        try:
            assert len(client.checkin(_report(n))) == 1
            outcomes.append(200)
        except ApiError as exc:
            outcomes.append((exc.status, exc.error, getattr(exc, "retry_after_s", None)))
    refused = [o for o in outcomes if o != 200]
    assert len(refused) <= 2 and set(refused) <= {(503, "unavailable", 1.0)}, outcomes
    assert outcomes[len(refused):] == [200] * (len(outcomes) - len(refused)), outcomes
    records = log.records
    assert any(r.levelname == "WARNING" and "database_unavailable" in r.msg for r in records)
    assert not [r for r in records if r.exc or r.levelname == "ERROR"], [r.msg for r in records]
