"""The service's TUF repository: roles, delegations, expiry refresh and root rotation."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from support.net import wait_for
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from edgerec.sdk.keys import generate_keypair, load_signing_key, load_verify_key
from edgerec.sdk.testing import build_demo_package
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.service.admin_init import _sign_root, root_signing_keys, update_root

from .helpers import tuf_updater


def _meta(env):
    return env.data_dir / "repository" / "metadata"


def _signed(path) -> dict:
    return json.loads(path.read_bytes())["signed"]


def test_roles_delegations_and_consistent_snapshot_files(sync_env, tmp_path):
    env = sync_env
    env.publish(1)
    env.publish(1, "beta")
    names = {p.name for p in _meta(env).iterdir()}
    assert "timestamp.json" in names and "1.root.json" in names
    assert not {"snapshot.json", "targets.json"} & names  # consistent snapshots: versioned names only
    ts = _signed(_meta(env) / "timestamp.json")
    snap = _signed(_meta(env) / f"{ts['meta']['snapshot.json']['version']}.snapshot.json")
    assert set(snap["meta"]) == {"targets.json", "channel-stable.json", "channel-beta.json"}
    targets = Metadata[Targets].from_file(str(_meta(env) / f"{snap['meta']['targets.json']['version']}.targets.json"))
    roles = targets.signed.delegations.roles
    assert {r: roles[r].paths for r in roles} == {"channel-stable": ["stable/*/*"], "channel-beta": ["beta/*/*"]}
    assert targets.signed.targets == {}  # packages live in the channel roles
    now = datetime.now(UTC)
    files = {
        "timestamp.json": (_meta(env) / "timestamp.json", 1),
        "snapshot.json": (_meta(env) / f"{ts['meta']['snapshot.json']['version']}.snapshot.json", 7),
        "targets.json": (_meta(env) / f"{snap['meta']['targets.json']['version']}.targets.json", 90),
        "channel-beta.json": (_meta(env) / f"{snap['meta']['channel-beta.json']['version']}.channel-beta.json", 90),
    }
    for role, (path, days) in files.items():
        left = (datetime.fromisoformat(_signed(path)["expires"].replace("Z", "+00:00")) - now).total_seconds()
        assert days * 86400 - 120 < left <= days * 86400, role
    up = tuf_updater(env.url, (_meta(env) / "1.root.json").read_bytes(), tmp_path / "node")
    a, b = up.get_targetinfo("stable/ctr/1.edgepkg"), up.get_targetinfo("beta/ctr/1.edgepkg")
    assert a is not None and b is not None and a.hashes == b.hashes
    assert up.get_targetinfo("beta/ctr/2.edgepkg") is None


def test_maintenance_thread_refreshes_the_timestamp(make_env, tmp_path):
    env = make_env(maintenance=True, timestamp_expiry_s=2, maintenance_interval_s=0.2)
    first = _signed(_meta(env) / "timestamp.json")["version"]
    assert wait_for(lambda: _signed(_meta(env) / "timestamp.json")["version"] >= first + 2, timeout=8)
    time.sleep(1.5)
    tuf_updater(env.url, (_meta(env) / "1.root.json").read_bytes(), tmp_path / "n").refresh()


def test_root_rotation_brings_in_a_new_publisher(sync_env, tmp_path):
    env = sync_env
    state = env.enroll("edge-1")
    new_key = generate_keypair(tmp_path, "publisher-2")
    pkg = tmp_path / "ctr-5.edgepkg"
    pkg.write_bytes(build_demo_package("ctr", 5, load_signing_key(new_key.private_path)))
    with pytest.raises(ApiError) as exc:
        env.admin().publish(pkg, "stable")
    assert exc.value.status == 422
    version = update_root(env.data_dir, env.tmp / "root-keys", [load_verify_key(new_key.public_path)],
                          db_url=env.init.db_url)
    assert version == 2 and (_meta(env) / "2.root.json").exists()
    env.admin().publish(pkg, "stable")
    env.admin().rollout("ctr", 5, "stable", 100, [])
    result = env.daemon(state).run_once()
    assert result.installed == [("ctr", 5)]
    assert (state.tuf_dir / "root_history" / "2.root.json").exists()  # the node walked to root v2


def test_a_root_below_threshold_is_refused(sync_env):
    env = sync_env
    current = Metadata[Root].from_file(str(_meta(env) / "1.root.json")).signed
    current.version = 2
    one_key = root_signing_keys(env.tmp / "root-keys")[:1]  # threshold is 2 of 3
    with pytest.raises(UnsignedMetadataError), env.service.db.write() as session:
        env.service.repo.add_root(session, _sign_root(current, one_key))
    assert not (_meta(env) / "2.root.json").exists()
