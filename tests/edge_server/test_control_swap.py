"""Control API and hot swap: auth, load/unload, refusals that keep the old version, swap under load."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edgerec.edge_server import create_app
from edgerec.sdk import testing as demo
from edgerec.sdk.encryption import encrypt_package
from edgerec.sdk.package import Package
from edgerec.sdk.port_keeper import RELAYED_FROM

ONE_ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u3"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [5]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 0.5, 0.5, 0.5]},
]}


def _score(weights) -> float:
    return float(demo.ctr_reference(weights, np.array([3]), np.array([5]), np.full((1, 4), 0.5, np.float32))[0, 0])


def test_control_needs_token_and_loopback(serve, base_config):
    live = serve()
    r = live.get("/control/v1/models")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = live.get("/control/v1/models", headers={"Authorization": "Bearer wrong-token-000000000"})
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    off = serve(control_token=None)
    assert off.control("GET", "/models").status_code == 403
    app = create_app(base_config, start=False)
    client = app.test_client()
    headers = {"Authorization": "Bearer test-control-token-0123456789"}
    remote = client.get("/control/v1/models", headers=headers, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert remote.status_code == 403 and remote.json["field"] == "remote_addr"
    local = client.get("/control/v1/models", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert local.status_code == 200 and local.json == {"models": []}
    # The port keeper's relay (any client, while a lone worker is replaced; sdk/port_keeper.py) is not local.
    for relayed in (RELAYED_FROM, "::ffff:" + RELAYED_FROM):
        r = client.get("/control/v1/models", headers=headers, environ_base={"REMOTE_ADDR": relayed})
        assert r.status_code == 403 and r.json["field"] == "remote_addr"


def test_a_worker_still_loading_answers_503_with_retry_after_not_404(base_config):
    app = create_app(base_config, start=False)
    srv = app.extensions["edgerec"]
    client = app.test_client()
    srv.repo.loading = True  # as start() sets it until the worker's first load is done
    for path, body in (("/v2/models/ctr/infer", ONE_ROW), ("/v1/rank", {"candidates": [3, 4]})):
        r = client.post(path, json=body)
        assert (r.status_code, r.json["error"], r.headers.get("Retry-After")) == (503, "model_loading", "1"), path
        assert r.json["field"] == "model" and "still loading" in r.json["detail"]
    srv.start()  # loads base_config's model directory, then clears the flag
    assert srv.repo.loading is False
    assert client.post("/v2/models/ctr/infer", json=ONE_ROW).status_code == 200
    unknown = client.post("/v2/models/nope/infer", json=ONE_ROW)
    assert (unknown.status_code, unknown.json["error"]) == (404, "model_not_found")
    srv.close()


def test_load_swaps_and_releases_the_old_version(serve, packages, weights_v2, ctr_weights):
    live = serve()
    (listed,) = live.control("GET", "/models").json()["models"]
    assert {k: listed[k] for k in ("name", "version", "state", "accelerator", "fully_delegated")} == {
        "name": "ctr", "version": 1, "state": "serving", "accelerator": "cpu", "fully_delegated": True}
    assert listed["loaded_at"].endswith("Z")
    assert live.post("/v2/models/ctr/infer", json=ONE_ROW).json()["outputs"][0]["data"][0] == pytest.approx(
        _score(ctr_weights), abs=1e-5)
    swaps = live.metric("edgerec_model_swaps_total", model="ctr")
    r = live.control("POST", "/models/load", json={"path": str(packages["v2"])})
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("name", "version", "accelerator", "state")} == {
        "name": "ctr", "version": 2, "accelerator": "cpu", "state": "serving"}
    doc = live.post("/v2/models/ctr/infer", json=ONE_ROW).json()
    assert doc["model_version"] == "2"
    assert doc["outputs"][0]["data"][0] == pytest.approx(_score(weights_v2), abs=1e-5)
    assert live.wait_released("ctr", 1)
    assert [m["version"] for m in live.versions()] == [2]
    assert live.metric("edgerec_model_swaps_total", model="ctr") == swaps + 1
    assert live.metric("edgerec_model_info", model="ctr", version="2", accelerator="cpu") == 1
    assert live.metric("edgerec_model_info", model="ctr", version="1") == 0
    assert live.post("/v2/models/ctr/versions/1/infer", json=ONE_ROW).status_code == 404
    again = live.control("POST", "/models/load", json={"path": str(packages["v2"])})
    assert again.status_code == 200 and live.metric("edgerec_model_swaps_total", model="ctr") == swaps + 1


@pytest.fixture(scope="module")
def bad_packages(tmp_path_factory, packages, ctr_weights, weights_v2, signing_key, other_key):
    root = tmp_path_factory.mktemp("bad")
    raw = bytearray(packages["v2"].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (root / "tampered.edgepkg").write_bytes(bytes(raw))
    demo.ctr_builder(weights_v2, version=2).write(root / "stranger.edgepkg", other_key)
    demo.ctr_builder(ctr_weights, version=1).write(root / "same-version.edgepkg", signing_key)
    b = demo.ctr_builder(weights_v2, version=5)
    b._files = [f for f in b._files if f.path != "warmup.npz"]
    b._blobs.pop("warmup.npz")
    b.set_warmup({"user_id": np.array(["u1"]), "item_id": np.array([1]), "ctx": np.zeros((1, 3), np.float32)})
    b.write(root / "bad-warmup.edgepkg", signing_key)
    (root / "notes.txt").write_text("hi")
    return root


@pytest.mark.parametrize(("name", "status", "kind", "words"), [
    ("tampered.edgepkg", 422, "load_refused", "verification failed"),
    ("stranger.edgepkg", 422, "load_refused", "no trusted key"),
    ("same-version.edgepkg", 409, "conflict", "different content"),
    ("bad-warmup.edgepkg", 422, "load_refused", "warm-up"),
    ("missing.edgepkg", 400, "invalid_request", "not a file"),
    ("notes.txt", 400, "invalid_request", ".edgepkg"),
])
def test_refused_loads_keep_the_old_version_serving(serve, bad_packages, ctr_weights, name, status, kind, words):
    live = serve()
    before = live.metric_sum("edgerec_model_loads_total", outcome="failed")
    r = live.control("POST", "/models/load", json={"path": str(bad_packages / name)})
    assert r.status_code == status, r.text
    assert r.json()["error"] == kind and words in r.json()["detail"] and r.json()["field"] == "path"
    doc = live.post("/v2/models/ctr/infer", json=ONE_ROW).json()
    assert doc["model_version"] == "1" and doc["outputs"][0]["data"][0] == pytest.approx(_score(ctr_weights), abs=1e-5)
    if status == 422:
        assert live.metric_sum("edgerec_model_loads_total", outcome="failed") == before + 1


def test_bad_control_bodies(serve):
    live = serve()
    for body, field in [({"path": "relative/x.edgepkg"}, "path"), ({}, "path"), ({"path": "/x.edgepkg", "serve": 1},
                                                                                  "serve")]:
        r = live.control("POST", "/models/load", json=body)
        assert r.status_code == 400 and r.json()["field"] == field
    assert live.control("POST", "/models/load", content=b"{").status_code == 400
    assert live.control("POST", "/models/ctr/versions/9/unload").status_code == 404


def test_unload_falls_back_to_the_remaining_version(serve, packages):
    live = serve()
    r = live.control("POST", "/models/load", json={"path": str(packages["v3"]), "serve": False})
    assert r.json()["state"] == "loaded"
    assert live.post("/v2/models/ctr/infer", json=ONE_ROW).json()["model_version"] == "1"
    assert live.post("/v2/models/ctr/versions/3/infer", json=ONE_ROW).json()["model_version"] == "3"
    assert live.control("POST", "/models/ctr/versions/1/unload").json() == {
        "name": "ctr", "version": 1, "state": "unloaded", "workers": 1}
    assert live.post("/v2/models/ctr/infer", json=ONE_ROW).json()["model_version"] == "3"
    assert live.control("POST", "/models/ctr/versions/3/unload").status_code == 200
    assert live.post("/v2/models/ctr/infer", json=ONE_ROW).status_code == 404
    assert live.get("/v2/health/ready").json() == {"ready": True}


@pytest.fixture(scope="module")
def more_versions(tmp_path_factory, ctr_weights, signing_key):
    root = tmp_path_factory.mktemp("more")
    return [demo.ctr_builder(demo.ctr_weights(seed=v), version=v).write(root / f"ctr-{v}.edgepkg", signing_key)
            for v in (4, 5, 6)]


def test_swap_under_load_loses_no_request(serve, more_versions):
    live = serve(max_batch=16, max_delay_ms=2, http_threads=8)
    stop = threading.Event()
    seen: dict[int, list[int]] = defaultdict(list)
    failures: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            for _ in range(5000):  # bounded; stops when the swaps are done
                if stop.is_set():
                    return
                r = http.post("/v2/models/ctr/infer", json=ONE_ROW)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen[k].append(int(r.json()["model_version"]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for path in more_versions:
            r = live.control("POST", "/models/load", json={"path": str(path)})
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10  # let every client reach the last version
        while time.monotonic() < deadline and not all(seen[k] and seen[k][-1] == 6 for k in range(4)):
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert all(v == sorted(v) for v in seen.values())  # no client ever went back to an older version
    assert all(seen[k][-1] == 6 for k in range(4))
    assert live.wait_released("ctr", 3)  # v1, v4 and v5
    assert [m["version"] for m in live.versions()] == [6]


def test_encrypted_package_with_the_node_key(serve, packages, signing_key, node_key, trusted_key, tmp_path,
                                             weights_v2):
    enc = encrypt_package(Package.open(packages["v2"], [signing_key.public_key()]), {"node-1": node_key.public_key()})
    path = tmp_path / "ctr-2.enc.edgepkg"
    path.write_bytes(enc.data)
    key_file = tmp_path / "node.key"
    key_file.write_bytes(node_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    key_file.chmod(0o600)
    live = serve(recipient_key=key_file, recipient_id="node-1")
    r = live.control("POST", "/models/load", json={"path": str(path)})
    assert r.status_code == 200, r.text
    doc = live.post("/v2/models/ctr/infer", json=ONE_ROW).json()
    assert doc["model_version"] == "2" and doc["outputs"][0]["data"][0] == pytest.approx(_score(weights_v2), abs=1e-5)
    plain = serve()
    r = plain.control("POST", "/models/load", json={"path": str(path)})
    assert r.status_code == 422 and "recipient key" in r.json()["detail"]


def _variants(live, users: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i in range(users):
        r = live.post("/v1/rank", json={"experiment": "ab", "user": {"id": f"user-{i}"}, "candidates": [1, 2, 3],
                                        "context": {"ctx": [0.1, 0.2, 0.3, 0.4]}})
        assert r.status_code == 200, r.text
        seen[r.json()["variant"]] = seen.get(r.json()["variant"], 0) + 1
    return seen


def test_experiments_set_and_cleared_through_control_on_every_worker(serve, packages):
    live = serve(workers=2)
    live.running.wait_ready(workers=2)
    body = {"model": "ctr", "salt": "s1", "variants": [{"name": "control", "version": 1, "weight": 3},
                                                        {"name": "treatment", "version": 2, "weight": 1}]}
    missing = live.control("PUT", "/experiments/ab", json=body)
    assert missing.status_code == 404 and missing.json()["field"] == "variants" and "v2" in missing.json()["detail"]
    r = live.control("POST", "/models/load", json={"path": str(packages["v2"]), "serve": False})
    assert r.status_code == 200 and r.json()["workers"] == 2, r.text
    r = live.control("PUT", "/experiments/ab", json=body)
    assert r.status_code == 200 and r.json()["workers"] == 2 and r.json()["name"] == "ab", r.text
    assert [e["name"] for e in live.control("GET", "/experiments").json()["experiments"]] == ["ab"]
    seen = _variants(live, 400)  # requests land on both workers; the split is by weight, sticky per user
    assert set(seen) == {"control", "treatment"} and 250 <= seen["control"] <= 350, seen
    assert _variants(live, 400) == seen
    bad = live.control("PUT", "/experiments/ab", json={**body, "variants": [{"name": "X", "version": 1}]})
    assert bad.status_code == 400 and bad.json()["field"] == "experiment"
    r = live.control("DELETE", "/experiments/ab")
    assert r.status_code == 200 and r.json()["workers"] == 2
    for _ in range(10):  # every worker stopped it
        gone = live.post("/v1/rank", json={"experiment": "ab", "candidates": [1]})
        assert gone.status_code == 404 and gone.json()["field"] == "experiment"
    for _ in range(10):  # v2 served nothing but the experiment: unloaded on every worker
        assert [m["version"] for m in live.versions()] == [1]
    assert live.control("DELETE", "/experiments/ab").status_code == 404
