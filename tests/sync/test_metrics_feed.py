"""The daemon's metrics feed on a real spool and a real node.db: windows, cursors, restarts, erasure."""

from __future__ import annotations

import time

from edgerec.edge_server.event_spool import EventSpool
from edgerec.sdk.event_spool import SpooledEvent
from edgerec.sdk.user_keys import ensure_user_key, user_fingerprint
from edgerec.sync.node.metrics_feed import MetricsConfig, MetricsFeed
from edgerec.sync.node.privacy import PrivacyConfig
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.releases import Key

CFG = MetricsConfig(PrivacyConfig(bounds={"impression": 20, "click": 2}, window_seconds=60, mechanism="none"),
                    ops_window_s=60, grace_s=0)
KEY = Key("ctr", 1, "", "")


def _setup(tmp_path):
    state = NodeState(tmp_path / "state")
    key = ensure_user_key(state.user_key_file)
    return state, EventSpool(state.spool_dir, 1 << 20, key), key


def _released(state) -> list[dict]:
    return [rel for q in state.db.reports() for rel in q.body["releases"]]


def test_windows_are_released_once_across_a_restart_and_a_forgotten_user_is_not(tmp_path):
    state, spool, key = _setup(tmp_path)
    feed = MetricsFeed(state, CFG)
    feed.declare([KEY])
    w0 = feed.business_before
    t = w0 + 1.0
    alice, bob = user_fingerprint(key, "alice"), user_fingerprint(key, "bob")
    spool.events([SpooledEvent(t, "click", "ctr", 1, "", "", alice)] * 3)  # bounded to 2
    spool.events([SpooledEvent(t, "impression", "ctr", 1, "", "", bob), SpooledEvent(t, "click", "ctr", 1, "", "",
                                                                                      bob)])
    assert feed.run(now=w0 + 30).releases == []  # the window is open: read, not released
    spool.rotate()  # what DELETE /v1/users/<id> has every worker do first: the files so far are final
    files = [p.name for p in feed.reader.files()]
    assert feed.erase(bob, files) == 2 + 2  # the open window's two and the spool's two lines
    assert all(bob.encode() not in p.read_bytes() for p in state.spool_dir.iterdir())

    # A kill -9 here: a new feed reads the spool again and counts each event once.
    state.close()
    state = NodeState(tmp_path / "state")
    feed = MetricsFeed(state, CFG)
    feed.declare([KEY])
    out = feed.run(now=w0 + 61)
    assert [(r.window_start, dict(r.counts[KEY])) for r in out.releases] == [(w0, {"impression": 0, "click": 2})]
    assert len(_released(state)) == 1 and feed.business_before == w0 + 60

    # Queued with its cursor: another restart skips those lines, and the next window counts new ones only.
    state.close()
    state = NodeState(tmp_path / "state")
    feed = MetricsFeed(state, CFG)
    feed.declare([KEY])
    spool.events([SpooledEvent(w0 + 61, "impression", "ctr", 1, "", "", alice)])
    out = feed.run(now=w0 + 121)
    assert [(r.window_start, dict(r.counts[KEY])) for r in out.releases] == [(w0 + 60, {"impression": 1,
                                                                                        "click": 0})]
    assert [r["window"]["start"] for r in _released(state)] == [w0, w0 + 60]
    spool.close()
    state.close()


def test_spool_files_go_once_their_windows_are_queued(tmp_path):
    state, spool, key = _setup(tmp_path)
    feed = MetricsFeed(state, CFG)
    spool.events([SpooledEvent(time.time(), "impression", "ctr", 1, "", "", user_fingerprint(key, "a"))])
    spool.request("ctr", 1, 200, 0.004)
    spool.flush()
    spool.rotate()
    assert len(list(state.spool_dir.iterdir())) == 1
    out = feed.run(now=time.time() + 200)
    assert out.ops and out.ops[0].models[0].requests == 1
    assert list(state.spool_dir.iterdir()) == []  # behind both cursors and sealed
    spool.close()
    state.close()
