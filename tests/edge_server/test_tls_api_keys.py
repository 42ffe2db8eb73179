"""The edge server's own TLS and API keys on the inference routes, with real servers and the real CLI."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from support.tls import self_signed

from edgerec.edge_server.api_keys import add_key, revoke_key

ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [3]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
]}
EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]


def _edgerec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEREC, *args], capture_output=True, text=True, timeout=120)


def test_api_key_cli_writes_hashes_and_never_prints_a_key(tmp_path):
    keys, out = tmp_path / "keys.txt", tmp_path / "alice.key"
    r = _edgerec("api-key", "add", str(keys), "alice", "--key-out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    key = out.read_text().strip()
    assert key.startswith("erk_") and len(key) == 4 + 43
    assert key not in r.stdout + r.stderr
    assert key not in keys.read_text()
    assert (keys.stat().st_mode & 0o777, out.stat().st_mode & 0o777) == (0o600, 0o600)
    assert "alice sha256:" in keys.read_text()

    again = _edgerec("api-key", "add", str(keys), "alice", "--key-out", str(tmp_path / "b.key"))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    kept = _edgerec("api-key", "add", str(keys), "bob", "--key-out", str(out))
    assert kept.returncode == 1 and str(out) in kept.stderr and out.read_text().strip() == key

    listed = _edgerec("api-key", "list", str(keys), "--json")
    assert [e["name"] for e in __import__("json").loads(listed.stdout)] == ["alice"]
    assert _edgerec("api-key", "revoke", str(keys), "alice").returncode == 0
    gone = _edgerec("api-key", "revoke", str(keys), "alice")
    assert gone.returncode == 1 and "no key named" in gone.stderr

    keys.write_text("alice sha256:nothex\n")
    bad = _edgerec("api-key", "list", str(keys))
    assert bad.returncode == 1 and "line 1" in bad.stderr and str(keys) in bad.stderr


@pytest.mark.slow
def test_inference_routes_need_a_key_on_every_worker_and_keys_change_live(serve, tmp_path):
    keys = tmp_path / "keys.txt"
    alice = add_key(keys, "alice")
    live = serve(api_key_file=keys, workers=2)
    live.running.wait_ready(workers=2)

    def infer(headers: dict[str, str]) -> httpx.Response:
        return live.post("/v2/models/ctr/infer", json=ROW, headers=headers)

    none = infer({})
    assert none.status_code == 401 and none.json()["error"] == "unauthorized"
    assert none.json()["field"] == "Authorization" and none.headers["WWW-Authenticate"].startswith("Bearer")
    assert infer({"Authorization": "Bearer erk_wrong"}).status_code == 401
    assert infer({"X-API-Key": alice + "x"}).status_code == 401
    # Several requests, so both workers answer some of them.
    assert {infer({"Authorization": f"Bearer {alice}"}).status_code for _ in range(20)} == {200}
    assert {infer({"X-API-Key": alice}).status_code for _ in range(20)} == {200}
    assert live.post("/v1/rank", json={"user_id": "u1", "candidates": [1, 2]}).status_code == 401
    assert live.get("/v2/models/ctr").status_code == 401
    # Probes, scraping and the control API (its own token) need no API key.
    assert live.get("/v2/health/ready").status_code == 200
    assert live.get("/metrics").status_code == 200
    assert live.control("GET", "/models").status_code == 200
    assert live.metric_sum("edgerec_errors_total", endpoint="unauthorized") >= 4

    # Refused before the body is read: a head announcing 100 MB and no body gets its answer at once.
    with socket.create_connection(("127.0.0.1", live.running.port), timeout=5) as s:
        s.sendall(b"POST /v2/models/ctr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        started = time.monotonic()
        assert s.recv(100).startswith(b"HTTP/1.1 401")
        assert time.monotonic() - started < 2

    bob = add_key(keys, "bob")
    revoke_key(keys, "alice")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        codes = ({infer({"X-API-Key": alice}).status_code for _ in range(10)},
                 {infer({"X-API-Key": bob}).status_code for _ in range(10)})
        if codes == ({401}, {200}):
            break
        time.sleep(0.2)
    assert codes == ({401}, {200}), codes


@pytest.mark.slow
def test_https_with_the_servers_own_tls(serve, tmp_path):
    cert, key = self_signed(tmp_path)
    live = serve(tls_cert=cert, tls_key=key)
    assert live.url.startswith("https://")
    trusted = ssl.create_default_context(cafile=str(cert))
    r = httpx.post(live.url + "/v2/models/ctr/infer", json=ROW, verify=trusted, timeout=10)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"]
    with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
        httpx.get(live.url + "/v2/health/ready", timeout=10)
    plain = live.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on a TLS port
        httpx.get(plain + "/v2/health/ready", timeout=5).raise_for_status()


def test_serve_refuses_tls_and_key_files_it_cannot_trust(packages, trusted_key, tmp_path):
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    args = ["serve", "--model-dir", str(packages["dir"]), "-k", str(trusted_key), "--port", "0"]
    r = _edgerec(*args, "--tls-cert", str(cert), "--tls-key", str(key))
    assert r.returncode != 0 and str(key) in r.stderr and "group or others" in r.stderr
    assert "Traceback" not in r.stderr
    key.chmod(0o600)
    r = _edgerec(*args, "--tls-cert", str(key), "--tls-key", str(key))
    assert r.returncode != 0 and "not a PEM certificate" in r.stderr and "Traceback" not in r.stderr
    r = _edgerec(*args, "--tls-cert", str(cert))
    assert r.returncode != 0 and "tls" in r.stderr.lower() and "Traceback" not in r.stderr
    keys = tmp_path / "keys.txt"
    keys.write_text("alice sha256:" + "0" * 64 + "\n")
    os.chmod(keys, 0o666)
    r = _edgerec(*args, "--api-key-file", str(keys))
    assert r.returncode != 0 and "writable by others" in r.stderr and "Traceback" not in r.stderr
