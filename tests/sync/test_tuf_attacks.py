"""A real node-side TUF client (python-tuf ngclient + httpx fetcher) against the running service.

The happy path, then each attack TUF promises to stop, made by changing the
files the service serves (as a compromised mirror or CDN would), plus the
two edgerec adds: envelopes for another node and replayed assignments.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from tuf.api.exceptions import BadVersionNumberError, ExpiredMetadataError, LengthOrHashMismatchError

from edgerec.sdk.keys import load_verify_key
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.package import Package

from .helpers import OtherEnvelopes, Replaying, node_client, tuf_updater


def _root(env) -> bytes:
    return (env.data_dir / "repository" / "metadata" / "1.root.json").read_bytes()


def _meta(env):
    return env.data_dir / "repository" / "metadata"


def _version_of(path) -> int:
    import json

    return int(json.loads(path.read_bytes())["signed"]["version"])


def test_happy_path_install_through_tuf(sync_env, publisher, tmp_path):
    env = sync_env
    state = env.enroll("edge-1", ["eu"])
    pub = env.publish(1)
    assert pub["target"] == "stable/ctr/1.edgepkg" and "envelopes" not in pub
    env.admin().rollout("ctr", 1, "stable", 100, [])

    # The raw TUF client sees the target under the channel's delegated role.
    up = tuf_updater(env.url, _root(env), tmp_path / "tuf")
    info = up.get_targetinfo("stable/ctr/1.edgepkg")
    assert info is not None and info.length == pub["size"]
    cipher = Package.open(up.download_target(info), load_verify_key(publisher.public_path))
    assert cipher.encrypted and not cipher.envelope_entries()

    result = env.daemon(state).run_once()
    assert result.installed == [("ctr", 1)] and result.failures == {} and result.reported
    installed = state.dir / "models" / "ctr" / "1.edgepkg"
    assert (state.dir / "models" / "ctr" / "current").resolve() == installed.resolve()
    node_id = state.identity().node_id
    with EdgeModel.load(installed, [load_verify_key(publisher.public_path)], recipient_key=state.recipient_key(),
                        recipient_id=node_id) as got, EdgeModel.load(
        env.packages[1], [load_verify_key(publisher.public_path)]
    ) as want:
        batch = want.warmup_samples()
        np.testing.assert_allclose(got.scores(got.predict(batch)), want.scores(want.predict(batch)), rtol=1e-6)

    row = env.admin().status("ctr")["nodes"][0]
    # No edge server here: installed, and nothing claims it serves.
    assert (row["node_id"], row["desired_version"], row["installed_version"], row["state"]) == (
        node_id, 1, 1, "installed")
    assert row["serving_version"] is None and row["edge"] == "none" and row["stale"] is False
    assert row["accelerator"] == "cpu" and row["last_failure"] is None and row["last_seen"] > time.time() - 60


def test_timestamp_rollback_is_refused(sync_env, tmp_path):
    env = sync_env
    env.publish(1)
    old = (_meta(env) / "timestamp.json").read_bytes()
    env.publish(2)
    tuf_updater(env.url, _root(env), tmp_path / "node").refresh()
    (_meta(env) / "timestamp.json").write_bytes(old)
    with pytest.raises(BadVersionNumberError):
        tuf_updater(env.url, _root(env), tmp_path / "node").refresh()


def test_snapshot_rollback_is_refused(sync_env, tmp_path):
    env = sync_env
    env.publish(1)
    up = tuf_updater(env.url, _root(env), tmp_path / "node")
    up.refresh()
    older = max(_meta(env).glob("*.snapshot.json"), key=_version_of)
    env.publish(2)
    newest = max(_meta(env).glob("*.snapshot.json"), key=_version_of)
    assert _version_of(newest) == _version_of(older) + 1
    newest.write_bytes(older.read_bytes())  # the mirror serves the old snapshot under the new name
    with pytest.raises(BadVersionNumberError):
        tuf_updater(env.url, _root(env), tmp_path / "node").refresh()


def test_mix_and_match_is_refused(sync_env, tmp_path):
    env = sync_env
    env.publish(1)
    env.publish(2)
    roles = sorted(_meta(env).glob("*.channel-stable.json"), key=_version_of)
    assert [_version_of(p) for p in roles] == [1, 2]
    # The snapshot names channel-stable v2; the mirror serves v1's (validly signed) content.
    roles[1].write_bytes(roles[0].read_bytes())
    up = tuf_updater(env.url, _root(env), tmp_path / "node")
    with pytest.raises(BadVersionNumberError):
        up.get_targetinfo("stable/ctr/2.edgepkg")


@pytest.mark.sync_config(timestamp_expiry_s=2)
def test_freeze_expired_metadata_is_refused_until_refreshed(sync_env, tmp_path):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    time.sleep(2.2)  # the timestamp (2 s) has expired; nobody refreshed it
    with pytest.raises(ExpiredMetadataError):
        tuf_updater(env.url, _root(env), tmp_path / "fresh").refresh()
    daemon = env.daemon(state)
    result = daemon.run_once()
    assert result.installed == [] and "ExpiredMetadataError" in result.failures["ctr"]
    assert not (state.dir / "models" / "ctr" / "1.edgepkg").exists()
    failure = env.admin().status("ctr")["nodes"][0]["last_failure"]
    assert failure["version"] == 1 and "ExpiredMetadataError" in failure["reason"]

    before = _version_of(_meta(env) / "timestamp.json")
    assert env.service.maintain() >= 1  # the automatic refresh re-signs the timestamp
    assert _version_of(_meta(env) / "timestamp.json") == before + 1
    assert daemon.run_once().installed == [("ctr", 1)]


def test_tampered_target_is_refused(sync_env, tmp_path):
    env = sync_env
    state = env.enroll("edge-1")
    pub = env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    target = env.data_dir / "repository" / "targets" / "stable" / "ctr" / f"{pub['sha256']}.1.edgepkg"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    up = tuf_updater(env.url, _root(env), tmp_path / "raw")
    with pytest.raises(LengthOrHashMismatchError):
        up.download_target(up.get_targetinfo("stable/ctr/1.edgepkg"))
    result = env.daemon(state).run_once()
    assert result.installed == [] and "LengthOrHashMismatchError" in result.failures["ctr"]
    assert not (state.dir / "models" / "ctr").exists()


@pytest.mark.parametrize("relabel", [False, True], ids=["as-theirs", "relabelled-as-mine"])
def test_envelope_for_another_node_does_not_open(sync_env, relabel):
    env = sync_env
    mine, theirs = env.enroll("edge-a"), env.enroll("edge-b")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    attacker = OtherEnvelopes(mine, node_client(theirs), relabel)
    result = env.daemon(mine, client=attacker).run_once()
    assert result.installed == []
    expected = "DecryptionError" if relabel else "no key envelope"
    assert expected in result.failures["ctr"]
    assert not (mine.dir / "models" / "ctr").exists()
    # With its own envelope the same node installs.
    assert env.daemon(mine).run_once().installed == [("ctr", 1)]


def test_replayed_assignment_is_refused(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    client = Replaying(state)
    daemon = env.daemon(state, client=client)
    admin.rollout("ctr", 2, "stable", 100, [])
    assert daemon.run_once().installed == [("ctr", 2)]
    captured = client.seen[-1]
    admin.rollback("ctr", 1, None)
    assert daemon.run_once().installed == [("ctr", 1)]  # a signed rollback goes down
    client.replay = captured  # the old "run version 2" answer, validly signed
    result = daemon.run_once()
    assert result.installed == [] and "AssignmentReplayError" in result.failures["ctr"]
    assert state.db.installed()["ctr"].version == 1
    assert (state.dir / "models" / "ctr" / "current").resolve().name == "1.edgepkg"
