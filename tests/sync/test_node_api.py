"""Bad input and attacks against the running service: each is a 4xx with a clear error, and nothing is stored."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import zipfile

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from edgerec.sdk.keys import public_pem
from edgerec.sdk.testing import build_demo_package
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.protocol.errors import ApiError
from edgerec.sync.protocol.httpsig import RequestSigner
from edgerec.sync.service.store.models import EnvelopeRow, Node, PackageVersion, Report


def _count(env, model) -> int:
    with env.service.db.read() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def _signed_get(env, state, path, key=None, created=None, nonce=None):
    ident = state.identity()
    signer = RequestSigner(ident.node_id, key or state.signing_key())
    headers = signer.sign("GET", env.url + path, None, {}, nonce=nonce, created=created)
    return httpx.get(env.url + path, headers=headers)


def _err(resp) -> tuple[int, str, str]:
    doc = resp.json()
    return resp.status_code, doc["error"], doc["detail"]


# -- enrollment ---------------------------------------------------------------------------


def test_enrollment_token_is_one_time(sync_env):
    env = sync_env
    token = env.token(["eu", "store-1"])
    ident = enroll_node(env.tmp / "a", env.url, token, "a")
    assert ident.tags == ["eu", "store-1"] and ident.node_id.startswith("n")
    for f in ("signing.key", "recipient.key"):
        assert ((env.tmp / "a" / "keys" / f).stat().st_mode & 0o777) == 0o600
    with pytest.raises(ApiError) as exc:
        enroll_node(env.tmp / "b", env.url, token, "b")
    assert (exc.value.status, exc.value.error) == (401, "unauthorized") and "already used" in exc.value.detail
    assert _count(env, Node) == 1 and not (env.tmp / "b" / "node.json").exists()


def test_wrong_or_expired_enrollment_token_is_refused(sync_env):
    env = sync_env
    with pytest.raises(ApiError) as exc:
        enroll_node(env.tmp / "a", env.url, "ert_not-a-token", "a")
    assert exc.value.status == 401 and "not valid" in exc.value.detail
    token = env.token(expires_s=0.5)
    time.sleep(0.7)
    with pytest.raises(ApiError) as exc:
        enroll_node(env.tmp / "b", env.url, token, "b")
    assert exc.value.status == 401 and "expired" in exc.value.detail
    assert _count(env, Node) == 0


def test_enrollment_with_bad_keys_is_refused(sync_env):
    env = sync_env
    token = env.token()
    ed = public_pem(Ed25519PrivateKey.generate().public_key()).decode()
    for signing, recipient, why in [("junk", ed, "signing_key"), (ed, ed, "X25519")]:
        r = httpx.post(env.url + "/api/v1/enroll", json={"token": token, "signing_key": signing,
                                                          "recipient_key": recipient})
        status, error, detail = _err(r)
        assert (status, error) == (400, "bad_request") and why in detail
    assert _count(env, Node) == 0
    # The token was not spent by the refused attempts.
    assert enroll_node(env.tmp / "ok", env.url, token).node_id


# -- signed node requests --------------------------------------------------------------------


def test_unsigned_request_is_refused(sync_env):
    r = httpx.get(sync_env.url + "/api/v1/node/assignments")
    status, error, detail = _err(r)
    assert (status, error) == (401, "unauthorized") and "not signed" in detail


def test_badly_signed_requests_are_refused(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    r = _signed_get(env, state, "/api/v1/node/assignments", key=Ed25519PrivateKey.generate())
    assert _err(r)[:2] == (401, "unauthorized")
    # A valid signature for one path, sent to another.
    ident = state.identity()
    headers = RequestSigner(ident.node_id, state.signing_key()).sign("GET", env.url + "/api/v1/node/assignments")
    r = httpx.get(env.url + "/api/v1/node/envelopes/ctr/1", headers=headers)
    assert _err(r)[:2] == (401, "unauthorized")
    # Unknown key id.
    headers = RequestSigner("n0000000000000000", state.signing_key()).sign("GET", env.url + "/api/v1/node/assignments")
    r = httpx.get(env.url + "/api/v1/node/assignments", headers=headers)
    assert _err(r)[:2] == (401, "unauthorized")


def test_replayed_and_stale_requests_are_refused(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    ident = state.identity()
    signer = RequestSigner(ident.node_id, state.signing_key())
    doc = {"report_id": "r-0001-abcdef", "kind": "status", "models": []}
    body = json.dumps(doc).encode()
    headers = signer.sign("POST", env.url + "/api/v1/node/reports", body, {"Content-Type": "application/json"})
    first = httpx.post(env.url + "/api/v1/node/reports", content=body, headers=headers)
    assert first.status_code == 201 and first.json() == {"report_id": "r-0001-abcdef", "duplicate": False}
    again = httpx.post(env.url + "/api/v1/node/reports", content=body, headers=headers)
    assert _err(again)[:2] == (401, "replayed")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    r = _signed_get(env, state, "/api/v1/node/assignments", created=old)
    status, error, detail = _err(r)
    assert (status, error) == (401, "unauthorized") and "age" in detail
    assert _count(env, Report) == 1


def test_report_is_idempotent(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    from .helpers import node_client

    client = node_client(state)
    doc = {"report_id": "metrics-42-abc", "kind": "metrics", "window": [0, 60], "counts": {"clicks": 3}}
    assert client.report(doc) == {"report_id": "metrics-42-abc", "duplicate": False}
    assert client.report(doc) == {"report_id": "metrics-42-abc", "duplicate": True}
    rows = env.admin().reports("metrics")
    assert len(rows) == 1 and rows[0]["body"]["counts"] == {"clicks": 3}
    with pytest.raises(ApiError) as exc:
        client.report({"report_id": "x", "kind": "status"})
    assert exc.value.status == 400 and "report_id" in exc.value.detail


@pytest.mark.sync_config(max_report_bytes=1024)
def test_oversized_report_is_refused(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    from .helpers import node_client

    with pytest.raises(ApiError) as exc:
        node_client(state).report({"report_id": "big-report-1", "kind": "metrics", "pad": "x" * 2000})
    assert (exc.value.status, exc.value.error) == (413, "payload_too_large")
    assert _count(env, Report) == 0


def test_revoked_node_is_refused_and_gets_no_new_keys(sync_env):
    env = sync_env
    state, other = env.enroll("edge-1"), env.enroll("edge-2")
    env.admin().revoke(state.identity().node_id)
    r = _signed_get(env, state, "/api/v1/node/assignments")
    status, error, detail = _err(r)
    assert (status, error) == (403, "forbidden") and "revoked" in detail
    assert env.publish(1)["envelopes"] == 1  # only the active node
    with env.service.db.read() as s:
        owners = set(s.execute(select(EnvelopeRow.node_id)).scalars())
    assert owners == {other.identity().node_id}


# -- admin and publishing ----------------------------------------------------------------------


def test_admin_calls_need_a_valid_token(sync_env):
    env = sync_env
    for headers in ({}, {"Authorization": "Bearer era_wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.get(env.url + "/api/v1/admin/nodes", headers=headers)
        assert _err(r)[:2] == (401, "unauthorized")


@pytest.mark.sync_config(max_upload_bytes=4096)
def test_oversized_upload_is_refused(sync_env):
    env = sync_env
    with pytest.raises(ApiError) as exc:
        env.publish(1)
    assert (exc.value.status, exc.value.error) == (413, "payload_too_large")
    assert _count(env, PackageVersion) == 0
    assert not list((env.data_dir / "blobs").rglob("*.*")) and not any((env.data_dir / "tmp").iterdir())


def _upload(env, data: bytes, channel: str = "stable") -> httpx.Response:
    return httpx.post(env.url + "/api/v1/admin/packages", params={"channel": channel}, content=data,
                      headers={"Authorization": f"Bearer {env.init.admin_token}"})


def test_bad_or_untrusted_package_signatures_are_refused(sync_env, other_key):
    env = sync_env
    untrusted = build_demo_package("ctr", 1, other_key)
    status, error, detail = _err(_upload(env, untrusted))
    assert (status, error) == (422, "untrusted_package") and "trusted" in detail
    # A trusted signature over a manifest that was changed afterwards.
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(env.packages[1])) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "manifest.json":
                data = data.replace(b'"version":1', b'"version":7')
            dst.writestr(info, data)
    status, error, detail = _err(_upload(env, buf.getvalue()))
    assert (status, error) == (422, "untrusted_package") and "does not match" in detail
    status, error, _ = _err(_upload(env, b"not a zip at all"))
    assert (status, error) == (400, "bad_request")
    assert _count(env, PackageVersion) == 0 and not list((env.data_dir / "blobs").rglob("*"))[1:]


def test_version_already_published(sync_env, publisher):
    env = sync_env
    first = env.publish(1)
    with pytest.raises(ApiError) as exc:
        env.publish(1)
    assert exc.value.status == 409 and "already published" in exc.value.detail
    other = build_demo_package("ctr", 1, publisher.key, seed=9)
    status, error, detail = _err(_upload(env, other, "beta"))
    assert (status, error) == (409, "conflict") and "other content" in detail
    # The same version on a second channel reuses the one stored blob.
    second = env.publish(1, "beta")
    assert second["sha256"] == first["sha256"] and second["new_version"] is False
    assert len([p for p in (env.data_dir / "blobs").rglob("*") if p.is_file()]) == 1
    assert _count(env, PackageVersion) == 1


def test_names_with_path_separators_are_refused(sync_env):
    env = sync_env
    for channel in ("a/b", "../etc", "Stable", ""):
        status, error, _ = _err(_upload(env, env.packages[1], channel))
        assert (status, error) == (400, "bad_request")
    auth = {"Authorization": f"Bearer {env.init.admin_token}"}
    r = httpx.post(env.url + "/api/v1/admin/rollouts", headers=auth,
                   json={"model": "../ctr", "version": 1, "channel": "stable"})
    assert _err(r)[:2] == (400, "bad_request")
    r = httpx.get(env.url + "/api/v1/admin/models/..%2Fnodes", headers=auth)
    assert r.status_code in (400, 404) and "error" in r.json()
    r = httpx.get(env.url + "/repository/targets/../service.json")
    assert r.status_code == 404
    assert _count(env, PackageVersion) == 0


def test_unknown_model_and_bad_rollout_input(sync_env):
    env = sync_env
    admin = env.admin()
    with pytest.raises(ApiError) as exc:
        admin.rollout("nope", 1, "stable", 100, [])
    assert exc.value.status == 404 and "unknown model" in exc.value.detail
    env.publish(1)
    with pytest.raises(ApiError) as exc:
        admin.rollout("ctr", 2, "stable", 100, [])
    assert exc.value.status == 404 and "not published" in exc.value.detail
    with pytest.raises(ApiError) as exc:
        admin.rollout("ctr", 1, "stable", 0, [])
    assert exc.value.status == 400
    with pytest.raises(ApiError) as exc:
        admin.status("nope")
    assert exc.value.status == 404


def test_checkin_stores_the_report_and_returns_signed_assignments(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    env.publish(1)
    env.admin().rollout("ctr", 1, "stable", 100, [])
    from .helpers import node_client

    client = node_client(state)
    report = {"report_id": "checkin-0001", "kind": "status", "health": "ok",
              "models": [{"name": "ctr", "installed_version": None, "state": "pending"}]}
    first = [json.loads(d)["signed"] for d in client.checkin(report)]
    assert [(a["model"], a["version"], a["rollback"]) for a in first] == [("ctr", 1, False)]
    again = [json.loads(d)["signed"] for d in client.checkin(report)]  # a retry: the report is kept once
    assert [a["serial"] for a in again] == [a["serial"] for a in first]
    assert len(env.admin().reports("status")) == 1
    # A heartbeat that says the same under a new id marks the node seen, and is not stored again.
    client.checkin({**report, "report_id": "checkin-0003"})
    assert _count(env, Report) == 1
    changed = {**report, "report_id": "checkin-0004",
               "models": [{"name": "ctr", "installed_version": 1, "state": "serving"}]}
    client.checkin(changed)
    assert _count(env, Report) == 2
    assert env.admin().status("ctr")["nodes"][0]["installed_version"] == 1
    with pytest.raises(ApiError) as exc:
        client.checkin({"report_id": "checkin-0002", "kind": "metrics"})
    assert exc.value.status == 400 and _count(env, Report) == 2


def test_last_seen_survives_nonce_pruning(sync_env):
    env = sync_env
    state = env.enroll("edge-1")
    from edgerec.sync.service.store.models import Nonce

    from .helpers import node_client

    node_client(state).checkin({"report_id": "seen-0001", "kind": "status", "models": []})
    before = env.admin().nodes()[0]["last_seen"]
    assert before is not None and before > time.time() - 60
    env.service.maintain(now=time.time() + 3600)  # past the replay window: nonces go
    assert _count(env, Nonce) == 0
    assert env.admin().nodes()[0]["last_seen"] == pytest.approx(before)
