"""Data subject erasure: DELETE /v1/users/<id> drops the user's cached profile and assignments."""

from __future__ import annotations

import pytest
from support.net import wait_for

from edgerec.edge_server.experiments import Experiment, Variant

from .conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_delete_user_erases_the_cached_profile(serve, features_pkg, feature_db):
    db, _ = feature_db
    live = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}")
    assert live.post("/v1/rank", json={"user": {"id": "alice"}, "candidates": [3, 4]}).status_code == 200
    assert live.http.delete("/v1/users/alice").status_code == 401  # the control token is needed
    r = live.http.delete("/v1/users/alice", headers=AUTH)
    # the server runs in a child process: the counts say what its cache held, and that it holds it no more
    assert r.status_code == 200 and r.json() == {"erased": {"profiles": 1, "assignments": 0}, "workers": 1}
    again = live.http.delete("/v1/users/alice", headers=AUTH)
    assert again.json()["erased"] == {"profiles": 0, "assignments": 0}


def test_forgetting_a_user_drops_their_cached_assignment():
    exp = Experiment("e", "ctr", (Variant("a", 1, 1.0), Variant("b", 2, 1.0)), salt="s")
    first = exp.assign("carol")
    assert "carol" in exp._assigned
    assert exp.forget("carol") is True and "carol" not in exp._assigned
    assert exp.forget("carol") is False
    assert exp.assign("carol") == first  # the hash, not the cache, decides: the same variant if they return


@pytest.mark.redis
def test_redis_cache_delete(redis_url):
    from edgerec.edge_server.cache import MISSING, RedisCache

    cache = RedisCache(redis_url, prefix="edgerec:test-forget:")
    cache.set_many("user", {"dave": {"user": "u1"}}, 60)
    assert cache.delete("user", ["dave", "nobody"]) == 1
    assert cache.get_many("user", ["dave"]) == [MISSING]
    cache.close()


def test_node_forget_user_command_erases_on_the_edge_server(serve, features_pkg, feature_db, tmp_path):
    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli

    db, _ = feature_db
    live = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}")
    live.post("/v1/rank", json={"user": {"id": "bob"}, "candidates": [3]})
    token = tmp_path / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)  # a token file group or others may read is refused
    runner = CliRunner()
    out = runner.invoke(cli, ["node", "forget-user", "bob", "--edge-server", live.url, "--control-token-file",
                              str(token), "--json"])
    assert out.exit_code == 0, out.output
    assert '"profiles": 1' in out.stdout
    token.write_text("wrong-token-000000000000\n")
    bad = runner.invoke(cli, ["node", "forget-user", "bob", "--edge-server", live.url, "--control-token-file",
                              str(token)])
    assert bad.exit_code != 0 and "HTTP 401" in bad.output and bad.output.count("\n") == 1


def test_forget_user_with_no_daemon_running_rewrites_the_spool_itself(serve, packages, tmp_path):
    """Two workers spool the user's events; ``node forget-user --state-dir`` (no daemon holds the lock) leaves
    no trace of the id or its fingerprint in the node's state directory, and keeps everyone else's events."""
    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli
    from edgerec.sdk.event_spool import parse_line
    from edgerec.sdk.user_keys import ensure_user_key, user_fingerprint
    from edgerec.sync.node.state import NodeState

    state = NodeState(tmp_path / "state")
    key = ensure_user_key(state.user_key_file)
    live = serve(workers=2, events_spool_dir=state.spool_dir, user_key_file=state.user_key_file)
    live.running.wait_ready(workers=2)
    for user in ("erin", "frank") * 10:
        rank = live.post("/v1/rank", json={"user": {"id": user}, "candidates": [1, 2, 3]}).json()
        r = live.post("/v1/events", json={"type": "click", "response_id": rank["response_id"],
                                          "item": rank["items"][0]["item"]})
        assert r.status_code == 200 and r.json()["accepted"] == 1
    token = tmp_path / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    out = CliRunner().invoke(cli, ["node", "forget-user", "erin", "--state-dir", str(state.dir), "--edge-server",
                                   live.url, "--control-token-file", str(token), "--json"])
    assert out.exit_code == 0, out.output
    assert "10 erased from the spool" in out.stdout
    gone = user_fingerprint(key, "erin").encode()
    for p in state.dir.rglob("*"):
        if p.is_file():
            assert b"erin" not in p.read_bytes() and gone not in p.read_bytes(), p
    users = [rec.user for p in state.spool_dir.iterdir() for raw in p.read_bytes().splitlines()
             for rec in [parse_line(raw)] if hasattr(rec, "user")]
    assert users == [user_fingerprint(key, "frank")] * 10


def test_the_erased_id_does_not_stay_in_the_run_folder(serve, features_pkg, feature_db):
    """With two workers the erasure travels through the run folder's state file; once both applied it, the id
    is blanked there (the file outlives the call until the server stops)."""
    import contextlib
    import glob
    import json
    import tempfile
    import uuid
    from pathlib import Path

    db, _ = feature_db
    live = serve(model_dir=features_pkg.parent, feature_source=f"sqlite://{db}", workers=2)
    live.running.wait_ready(workers=2)
    user = f"erase-me-{uuid.uuid4().hex[:12]}"
    # A worker serves before its model is loaded (404 for it until then); ready means one worker is.
    assert wait_for(lambda: live.post("/v1/rank", json={"user": {"id": user}, "candidates": [3, 4]}).status_code
                    == 200, 60)
    r = live.http.delete(f"/v1/users/{user}", headers=AUTH)
    assert r.status_code == 200 and r.json()["workers"] == 2
    texts = {}
    for path in glob.glob(f"{tempfile.gettempdir()}/edgerec-serve-*/state.json"):
        with contextlib.suppress(FileNotFoundError):  # another test's server may stop meanwhile
            texts[path] = Path(path).read_text()
    ours = [p for p, text in texts.items() if any(op.get("op") == "forget_user" for op in json.loads(text)["ops"])]
    assert ours, "no state file records an erasure"
    assert not [p for p, text in texts.items() if user in text]


def test_forget_user_refuses_a_control_token_file_others_may_read(tmp_path):
    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli

    token = tmp_path / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    out = CliRunner().invoke(cli, ["node", "forget-user", "bob", "--edge-server", "http://127.0.0.1:1",
                                   "--control-token-file", str(token)])
    assert out.exit_code == 1 and out.output.count("\n") == 1, out.output
    assert f"{token}: control token file is accessible by group or others" in out.output
    assert TOKEN not in out.output and "Traceback" not in out.output
