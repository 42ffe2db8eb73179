"""Staged rollouts: deterministic bucketing, exact shares, pause, resume and rollback."""

from __future__ import annotations

import itertools
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from edgerec.sdk.keys import public_pem
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.service.rollout import choose, wanted
from edgerec.sync.service.store.models import Assignment, Rollout

NODES = [f"n{i:016x}" for i in range(100)]


@pytest.mark.parametrize("percent", [1, 5, 10, 12.5, 25, 33, 50, 66.6, 90, 99, 100])
def test_bucketing_hits_the_share_within_one_node(percent):
    chosen = choose("ctr", NODES, [], percent)
    assert abs(len(chosen) - percent) <= 1
    assert chosen == choose("ctr", list(reversed(NODES)), [], percent)  # order of input does not matter


def test_bucketing_is_deterministic_monotone_and_per_model():
    shares = [choose("ctr", NODES, [], p) for p in (10, 25, 50, 100)]
    assert all(a <= b for a, b in itertools.pairwise(shares))
    assert choose("ctr", NODES, [], 10) != choose("other-model", NODES, [], 10)
    assert wanted(0.4, 100) == 0 and wanted(0.5, 100) == 1 and wanted(100, 7) == 7


def test_chosen_nodes_stay_chosen_when_more_enroll():
    first = choose("ctr", NODES[:50], [], 20)
    later = choose("ctr", NODES, first, 20)
    assert first <= later and len(later) == 20


def _enroll_many(env, n: int, tags: list[str] | None = None) -> list[str]:
    ids = []
    for i in range(n):
        token = env.service.create_enroll_token(tags or [], 600)["token"]
        pem_e = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
        pem_x = public_pem(X25519PrivateKey.generate().public_key()).decode()
        ids.append(env.service.enroll(token, pem_e, pem_x, f"sim-{i}").node_id)
    return ids


def _desired(env, model: str = "ctr") -> dict[str, tuple[int, bool]]:
    with env.service.db.read() as s:
        rows = s.execute(select(Assignment).where(Assignment.model == model)).scalars()
        return {a.node_id: (a.version, a.rollback) for a in rows}


def _report_installed(env, node_id: str, version: int) -> None:
    doc = {"report_id": f"r-{node_id}-{version}", "kind": "status",
           "models": [{"name": "ctr", "installed_version": version, "state": "serving"}]}
    with env.service.db.write() as s:
        env.service.report(s, node_id, doc)


def test_staged_rollout_on_100_nodes(sync_env):
    env = sync_env
    ids = _enroll_many(env, 100)
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    assert admin.rollout("ctr", 1, "stable", 100, [])["changed"] == 100
    assert set(_desired(env).values()) == {(1, False)}

    r = admin.rollout("ctr", 2, "stable", 10, [])
    on_two = {n for n, (v, _) in _desired(env).items() if v == 2}
    assert r["changed"] == 10 and len(on_two) == 10 and on_two == choose("ctr", ids, [], 10)

    assert admin.rollout("ctr", 2, "stable", 50, [])["changed"] == 40
    on_two_50 = {n for n, (v, _) in _desired(env).items() if v == 2}
    assert on_two < on_two_50 and len(on_two_50) == 50
    assert admin.rollout("ctr", 2, "stable", 50, [])["changed"] == 0
    with pytest.raises(ApiError) as exc:
        admin.rollout("ctr", 2, "stable", 20, [])
    assert exc.value.status == 409 and "only grows" in exc.value.detail

    # A node enrolling now gets version 2 or the base version 1, never nothing.
    late = _enroll_many(env, 1)[0]
    assert _desired(env)[late][0] in (1, 2)
    assert sum(1 for v, _ in _desired(env).values() if v == 2) in (50, 51)


def test_pause_holds_back_nodes_that_have_not_installed(sync_env):
    env = sync_env
    ids = _enroll_many(env, 20)
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    admin.rollout("ctr", 1, "stable", 100, [])
    for n in ids:
        _report_installed(env, n, 1)
    admin.rollout("ctr", 2, "stable", 50, [])
    chosen = sorted(n for n, (v, _) in _desired(env).items() if v == 2)
    done, waiting = chosen[:4], chosen[4:]
    for n in done:
        _report_installed(env, n, 2)
    paused = admin.pause("ctr")
    assert paused["state"] == "paused" and paused["changed"] == len(waiting)
    desired = _desired(env)
    assert all(desired[n] == (2, False) for n in done) and all(desired[n] == (1, False) for n in waiting)
    with pytest.raises(ApiError) as exc:
        admin.rollout("ctr", 2, "stable", 80, [])
    assert exc.value.status == 409 and "paused" in exc.value.detail
    late = _enroll_many(env, 1)[0]
    assert _desired(env)[late] == (1, False)
    resumed = admin.resume("ctr")
    assert resumed["state"] == "active"
    assert sum(1 for v, _ in _desired(env).values() if v == 2) == wanted(50, 21) == 11
    status = admin.status("ctr")
    assert status["rollout"]["state"] == "active" and len(status["nodes"]) == 21


def test_rollback_is_an_explicit_signed_rollback(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    ids = [*_enroll_many(env, 5), state.identity().node_id]
    for v in (1, 2, 3):
        env.publish(v)
    admin = env.admin()
    admin.rollout("ctr", 2, "stable", 100, [])
    admin.rollout("ctr", 3, "stable", 40, [])
    r = admin.rollback("ctr", 1, None)
    assert r["rollback"] is True and r["version"] == 1 and r["changed"] == len(ids)
    assert set(_desired(env).values()) == {(1, True)}
    with env.service.db.read() as s:
        states = {(x.version, x.state) for x in s.execute(select(Rollout)).scalars()}
    assert {(2, "rolled_back"), (3, "rolled_back"), (1, "active")} <= states
    # The node's signed assignment says so.
    from .helpers import node_client

    doc = json.loads(node_client(state).assignments()[0])["signed"]
    assert (doc["model"], doc["version"], doc["rollback"]) == ("ctr", 1, True)


def test_rollout_by_tags(sync_env):
    env = sync_env
    eu = _enroll_many(env, 6, ["eu"])
    us = _enroll_many(env, 4, ["us"])
    env.publish(1)
    r = env.admin().rollout("ctr", 1, "stable", 50, ["eu"])
    desired = _desired(env)
    assert r["changed"] == 3 and len(desired) == 3 and set(desired) <= set(eu) and not set(desired) & set(us)
