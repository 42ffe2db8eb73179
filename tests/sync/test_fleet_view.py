"""The fleet view from node reports (in-process service, signed node requests): failures while current,
their history, what serves, the stale flag, and a rollout that pauses itself past a share of failed nodes."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from edgerec.sync.admin.cli import parse_threshold
from edgerec.sync.protocol.errors import ApiError, ConfigError

from .helpers import node_client


def _report(state, version: int, failure: dict | None = None, edge: str = "up", serving: int | None = None,
            interval: float = 1.0):
    row = {"name": "ctr", "desired_version": version, "installed_version": 1,
           "serving_version": 1 if serving is None else serving, "state": "failed" if failure else "serving",
           "failure": failure}
    return node_client(state).report({"report_id": uuid.uuid4().hex, "kind": "status", "time": time.time(),
                                      "health": "ok", "edge": edge, "interval_s": interval, "models": [row]})


def test_a_failure_shows_while_current_and_stays_in_the_history(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    failure = {"version": 2, "reason": "v2 rolled back: health window: 9 of 10 requests failed", "at": 1000.0,
               "bad": True}
    _report(state, 2, failure)
    _report(state, 2, failure)  # the same failure again: one history entry
    admin = env.admin()
    node_id = state.identity().node_id
    row = admin.status("ctr")["nodes"][0]
    assert row["last_failure"] == {"version": 2, "reason": failure["reason"], "at": 1000.0, "bad": True}
    _report(state, 1)  # a later report without it: no longer current
    doc = admin.node(node_id)
    assert doc["models"][0]["last_failure"] is None and doc["models"][0]["serving_version"] == 1
    assert [(f["version"], f["reason"], f["bad"]) for f in doc["failures"]] == [(2, failure["reason"], True)]
    _report(state, 1, edge="down")
    row = admin.status("ctr")["nodes"][0]
    assert (row["state"], row["serving_version"], row["edge"]) == ("not_serving", None, "down")
    assert admin.node(node_id)["serving"] is False
    # Polling every 1 s: stale after 3 s without a signed request.
    assert admin.node(node_id)["stale"] is False
    time.sleep(3.2)
    assert admin.node(node_id)["stale"] is True and admin.node(node_id)["stale_after_s"] == 3.0


def test_bad_status_fields_are_refused_by_name(sync_env):
    state = sync_env.enroll("edge-1")
    client = node_client(state)
    for doc, field in (({"edge": "sideways"}, "edge"), ({"interval_s": -1}, "interval_s"),
                       ({"models": [{"name": "ctr", "serving_version": "two"}]}, "models[0].serving_version"),
                       ({"models": [{"name": "ctr", "failure": {"reason": "x", "bad": "yes"}}]},
                        "models[0].failure.bad")):
        with pytest.raises(ApiError) as exc:
            client.report({"report_id": uuid.uuid4().hex, "kind": "status", **doc})
        assert exc.value.status == 400 and exc.value.detail.startswith(field + ":"), exc.value.detail


def test_a_rollout_pauses_past_a_share_of_failed_nodes(sync_env):
    env = sync_env
    states = [env.enroll(f"edge-{i}") for i in range(4)]
    admin = env.admin()
    env.publish(1)
    env.publish(2)
    admin.rollout("ctr", 1, "stable", 100, [])
    started = admin.rollout("ctr", 2, "stable", 100, [], max_failure_percent=25)
    assert (started["max_failures"], started["max_failure_percent"]) == (None, 25.0)
    for i, st in enumerate(states[:2]):
        _report(st, 2, {"version": 2, "reason": f"v2 failed its warm-up ({i})", "at": 2000.0 + i, "bad": True})
        rollout = admin.status("ctr")["rollout"]
        if i == 0:  # 1 of 4 is 25 %: not past it
            assert rollout["state"] == "active"
    assert rollout["state"] == "paused"
    assert rollout["paused_reason"] == ("paused automatically: 2 of 4 node(s) failed v2 and rolled back "
                                        "(50% > max 25%)")
    # Nodes that had not installed v2 go back to what they ran, v1.
    assert {r["desired_version"] for r in admin.status("ctr")["nodes"]} == {1}
    # A failure that is not a verdict on the version (a download error) does not count.
    admin.resume("ctr")
    _report(states[2], 2, {"version": 2, "reason": "DownloadError", "at": 3000.0, "bad": False})
    assert admin.status("ctr")["rollout"]["state"] == "active"


def test_max_failures_parses_counts_and_shares():
    assert parse_threshold("3") == (3, None) and parse_threshold("10%") == (None, 10.0)
    assert parse_threshold(None) == (None, None)
    for bad in ("-1", "1.5", "100%", "ten"):
        with pytest.raises(ConfigError, match="--max-failures"):
            parse_threshold(bad)


def test_node_retry_forgets_bad_marks(sync_env):
    state = sync_env.enroll("edge-1")
    state.db.mark_bad("ctr", 2, "v2 failed its warm-up")
    state.db.mark_bad("ctr", 3, "v3 rolled back")
    state.close()
    out = subprocess.run([sys.executable, "-m", "edgerec.sdk.cli", "node", "retry", "--state-dir", str(state.dir),
                          "ctr", "--version", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "1 bad mark(s) forgotten" in out.stdout, out.stderr
    assert state.db.bad_versions() == {"ctr": {3: "v3 rolled back"}}
