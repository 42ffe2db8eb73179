"""What a service process keeps between requests never outlives a change another process made."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from edgerec.sync.node.client import NodeClient, http_client
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.service.server import RunningServer


def _client(url: str, state) -> NodeClient:
    ident = state.identity()
    return NodeClient(http_client(url), ident.node_id, state.signing_key())


def _report(n: int) -> dict:
    return {"report_id": f"cache-{n:04d}", "kind": "status", "health": "ok",
            "models": [{"name": "ctr", "installed_version": 1, "state": "serving"}]}


def _untimed(signed: dict) -> dict:
    return {k: v for k, v in signed.items() if k not in ("issued", "expires")}


def test_signed_assignments_follow_changes_made_through_another_process(sync_env):
    env = sync_env
    state, other = env.enroll("edge-1"), env.enroll("edge-2")
    env.publish(1)
    env.publish(2)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    second = RunningServer(env.service, maintenance=False).start()
    try:
        a, b = _client(env.url, state), _client(second.url, state)
        first_b = b.checkin(_report(1))
        time.sleep(1.1)  # a fresh signature would now say another "issued" second
        # Reused while the content is unchanged: the same signed document, byte for byte.
        assert b.checkin(_report(2)) == first_b
        assert json.loads(first_b[0])["signed"]["version"] == 1
        v1_serial = json.loads(first_b[0])["signed"]["serial"]

        env.admin().rollout("ctr", 2, "stable", 100, [])  # through the first process
        signed_b = json.loads(b.checkin(_report(3))[0])["signed"]
        assert (signed_b["version"], signed_b["rollback"]) == (2, False) and signed_b["serial"] > v1_serial
        # The same content; each process signs its own document, so the times may differ by a second.
        assert _untimed(json.loads(a.checkin(_report(4))[0])["signed"]) == _untimed(signed_b)

        env.admin().rollback("ctr", 1, "stable")  # a signed rollback, seen at once by both
        for client, n in ((b, 5), (a, 6)):
            signed = json.loads(client.checkin(_report(n))[0])["signed"]
            assert (signed["version"], signed["rollback"]) == (1, True)

        env.admin().revoke(state.identity().node_id)  # the key's node is read on every request
        for client, n in ((b, 7), (a, 8)):
            with pytest.raises(ApiError) as exc:
                client.checkin(_report(n))
            assert exc.value.status == 403
        # the other node still checks in on both
        for url in (env.url, second.url):
            assert json.loads(_client(url, other).checkin(_report(9 if url == env.url else 10))[0])["signed"][
                "version"] == 1
    finally:
        second.stop()


def test_signed_documents_are_reused_within_the_bound_and_bounded_in_number():
    from edgerec.sync.service.signed_cache import SignedAssignmentCache

    cache = SignedAssignmentCache(reuse_s=60, max_entries=3)
    signed: list[int] = []

    def sign(issued: int) -> str:
        signed.append(issued)
        return f"doc@{issued}"

    key = ("n1", "ctr", 1, "stable", "ctr/1.edgepkg", 7, False)
    assert cache.get(key, 1000, sign) == "doc@1000"
    assert cache.get(key, 1060, sign) == "doc@1000"  # 60 s old: still reused
    assert cache.get(key, 1061, sign) == "doc@1061"  # older than the bound: signed again
    assert cache.get(key, 999, sign) == "doc@999"  # the clock went back: never an "issued" in the future
    assert cache.get((*key[:5], 8, False), 1000, sign) == "doc@1000"  # another serial: its own document
    assert signed == [1000, 1061, 999, 1000]
    for n in range(5):
        cache.get(("n2", "ctr", n, "stable", "t", n, False), 1000, sign)
    assert len(cache) == 3  # the oldest signed went first
    assert cache.get(key, 1000, sign) == "doc@1000" and signed[-1] == 1000 and len(signed) == 10


def test_metadata_is_the_file_another_process_wrote(sync_env):
    env = sync_env
    second = RunningServer(env.service, maintenance=False).start()
    try:
        path = env.data_dir / "repository" / "metadata" / "timestamp.json"
        old = path.read_bytes()
        for url in (env.url, second.url):  # both processes hold it in memory now
            got = httpx.get(url + "/repository/metadata/timestamp.json")
            assert got.status_code == 200 and got.content == old
            assert httpx.get(url + "/repository/metadata/timestamp.json",
                             headers={"If-None-Match": got.headers["ETag"]}).status_code == 304
        etag = got.headers["ETag"]
        env.publish(1)  # through the first process, which writes new metadata
        new = path.read_bytes()
        assert new != old
        for url in (second.url, env.url):
            fresh = httpx.get(url + "/repository/metadata/timestamp.json", headers={"If-None-Match": etag})
            assert fresh.status_code == 200 and fresh.content == new
            ranged = httpx.get(url + "/repository/metadata/timestamp.json", headers={"Range": "bytes=0-9"})
            assert ranged.status_code == 206 and ranged.content == new[:10]
        for bad in (".hidden.json", "timestamp.txt", "none.json", "%2e%2e%2fservice.json"):
            assert httpx.get(env.url + "/repository/metadata/" + bad).status_code == 404
    finally:
        second.stop()


def test_a_checkin_whose_failure_pauses_the_rollout_answers_with_the_assignment_after_it(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.publish(2)
    admin = env.admin()
    admin.rollout("ctr", 1, "stable", 100, [])
    client = _client(env.url, state)
    assert json.loads(client.checkin(_report(1))[0])["signed"]["version"] == 1
    admin.rollout("ctr", 2, "stable", 100, [], max_failures=0)
    assert json.loads(client.checkin(_report(2))[0])["signed"]["version"] == 2
    failed = {"report_id": "cache-fail-1", "kind": "status", "health": "ok",
              "models": [{"name": "ctr", "installed_version": 1, "state": "failed",
                          "failure": {"version": 2, "reason": "v2 failed its warm-up", "at": 2000.0, "bad": True}}]}
    # The same check-in that reports v2 bad pauses the rollout and gets v1 back, not the v2 it was read with.
    signed = json.loads(client.checkin(failed)[0])["signed"]
    assert (signed["version"], signed["serial"] > 0) == (1, True)
    status = admin.status("ctr")
    assert status["rollout"]["state"] == "paused" and status["rollout"]["paused_reason"].startswith(
        "paused automatically: 1 of 1 node(s) failed v2")
    assert status["nodes"][0]["last_failure"]["version"] == 2


def test_a_check_in_asks_for_experiments_only_while_one_runs(sync_env):
    """The running-experiment count rides on the check-in's first read: no statement of its own when none runs,
    and a started one reaches the next check-in (the statement comes back with it)."""
    from sqlalchemy import event

    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.publish(2)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    # The service's own WSGI app in this process (through httpx), so its statements can be counted here.
    from edgerec.sync.service.app import create_app

    ident = state.identity()
    http = httpx.Client(base_url=env.url, transport=httpx.WSGITransport(app=create_app(env.service).wsgi_app))
    client = NodeClient(http, ident.node_id, state.signing_key())
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    engine = env.service.db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        client.checkin(_report(1))
        without = [s for s in seen if "FROM experiments" in s and "count(" not in s.lower()]
        assert without == [] and any("running_experiments" in s for s in seen)
        env.admin().create_experiment("ab", "ctr", [{"name": "a", "version": 1, "weight": 1},
                                                    {"name": "b", "version": 2, "weight": 1}], [], None)
        seen.clear()
        docs = client.checkin(_report(2))
        assert [e["name"] for e in json.loads(docs[0])["signed"]["experiments"]] == ["ab"]
        assert any("FROM experiments" in s and "count(" not in s.lower() for s in seen)
    finally:
        event.remove(engine, "before_cursor_execute", count)
