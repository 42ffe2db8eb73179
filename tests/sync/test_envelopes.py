"""Key envelopes follow assignments: sealed for, and handed to, the nodes a version is assigned to only."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from edgerec.sdk.encryption import Envelope
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.service.store.models import EnvelopeRow, PackageVersion

from .helpers import node_client


def _sealed(env) -> set[tuple[str, int]]:
    """(node id, version) of every stored envelope."""
    with env.service.db.read() as s:
        rows = s.execute(select(EnvelopeRow.node_id, PackageVersion.version)
                         .join(PackageVersion, PackageVersion.id == EnvelopeRow.package_id)).all()
    return {(n, v) for n, v in rows}


def _refused(client, version: int) -> tuple[int, str, str | None]:
    with pytest.raises(ApiError) as exc:
        client.envelopes("ctr", version)
    return exc.value.status, exc.value.error, exc.value.field


def test_publishing_seals_nothing_and_unassigned_nodes_get_403(sync_env):
    env = sync_env
    a = env.enroll("edge-a", ["eu"])
    env.publish(1)
    assert _sealed(env) == set()
    assert _refused(node_client(a), 1) == (403, "forbidden", "version")
    assert _refused(node_client(a), 7) == (404, "not_found", "version")  # not published at all


def test_rollout_seals_for_the_nodes_it_includes_only(sync_env):
    env = sync_env
    eu, us = env.enroll("edge-eu", ["eu"]), env.enroll("edge-us", ["us"])
    eu_id = eu.identity().node_id
    env.publish(1)
    summary = env.admin().rollout("ctr", 1, "stable", 100, ["eu"])
    assert (summary["changed"], summary["envelopes"]) == (1, 1)
    assert _sealed(env) == {(eu_id, 1)}
    envs = [Envelope.from_bytes(e) for e in node_client(eu).envelopes("ctr", 1)]
    assert [(e.recipient, e.package, e.version) for e in envs] == [(eu_id, "ctr", 1)]
    assert _refused(node_client(us), 1) == (403, "forbidden", "version")
    # The assigned node installs; the other one has nothing to install and nothing to open.
    assert env.daemon(eu).run_once().installed == [("ctr", 1)]
    assert env.daemon(us).run_once().installed == []
    assert _sealed(env) == {(eu_id, 1)}


def test_envelopes_move_with_the_assignment_rollout_and_rollback(sync_env):
    env = sync_env
    node = env.enroll("edge-1")
    nid = node.identity().node_id
    client = node_client(node)
    admin = env.admin()
    env.publish(1)
    env.publish(2)
    admin.rollout("ctr", 1, "stable", 100, [])
    assert len(client.envelopes("ctr", 1)) == 1 and _refused(client, 2)[0] == 403
    assert admin.rollout("ctr", 2, "stable", 100, [])["envelopes"] == 1
    assert len(client.envelopes("ctr", 2)) == 1
    assert _refused(client, 1)[0] == 403  # no longer assigned, though sealed before
    rolled = admin.rollback("ctr", 1, None)
    assert rolled["envelopes"] == 0  # sealed for v1 already
    assert len(client.envelopes("ctr", 1)) == 1 and _refused(client, 2)[0] == 403
    assert _sealed(env) == {(nid, 1), (nid, 2)}


def test_a_node_enrolling_after_a_rollout_gets_keys_for_its_placement_only(sync_env):
    env = sync_env
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    first = env.enroll("first")
    admin.rollout("ctr", 1, "stable", 100, [])
    admin.rollout("ctr", 2, "stable", 100, ["canary"])  # covers no node yet
    late, canary = env.enroll("late"), env.enroll("canary", ["canary"])
    late_id, canary_id = late.identity().node_id, canary.identity().node_id
    sealed = _sealed(env)
    assert (late_id, 1) in sealed and (late_id, 2) not in sealed
    assert (canary_id, 2) in sealed and (canary_id, 1) not in sealed
    assert _refused(node_client(late), 2)[0] == 403
    assert len(node_client(canary).envelopes("ctr", 2)) == 1
    assert (first.identity().node_id, 2) not in sealed


def test_revoked_nodes_are_never_sealed_for(sync_env):
    env = sync_env
    gone, kept = env.enroll("gone"), env.enroll("kept")
    env.admin().revoke(gone.identity().node_id)
    env.publish(1)
    assert env.admin().rollout("ctr", 1, "stable", 100, [])["envelopes"] == 1
    assert _sealed(env) == {(kept.identity().node_id, 1)}
