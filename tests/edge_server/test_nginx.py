"""nginx (Debian's, started here) in front of two edge server processes, with the config in docs/operations.md."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from support.net import free_port
from support.nginx import Nginx, doc_config

from edgerec.edge_server import RunningServer

ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u1"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [3]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]},
]}


def _documented_nginx(binary: str, backends: list[RunningServer]) -> tuple[Nginx, int]:
    """nginx with docs/operations.md's edgerec-edge.conf in front of two edge servers; its port."""
    front = free_port()
    snippet = doc_config("edgerec-edge.conf")
    for documented, server in zip(("127.0.0.1:8081", "127.0.0.1:8082"), backends, strict=True):
        snippet = snippet.replace(documented, f"127.0.0.1:{server.port}")
    snippet = snippet.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{front};")
    return Nginx(binary, snippet, [front]), front


def _served(server: RunningServer) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "edgerec_requests_total" and s.labels.get("endpoint") == "v2.infer")


@pytest.mark.slow
def test_requests_spread_and_a_killed_server_loses_none(base_config, nginx_binary):
    backends = [RunningServer(base_config.replace(port=0)) for _ in range(2)]
    proxy, front = _documented_nginx(nginx_binary, backends)
    url = f"http://127.0.0.1:{front}/v2/models/ctr/infer"
    try:
        with httpx.Client(timeout=30) as http:
            codes = [http.post(url, json=ROW).status_code for _ in range(40)]
            ids = {http.post(url, json=ROW).headers["X-Request-ID"] for _ in range(5)}
        assert codes == [200] * 40
        assert len(ids) == 5 and all(len(i) == 32 for i in ids)  # nginx's $request_id reached the server
        spread = [_served(b) for b in backends]
        assert min(spread) >= 5 and sum(spread) >= 45, spread  # both took a share

        answers: list[int | str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        answers.append(http.post(url, json=ROW).status_code)
                    except httpx.HTTPError as exc:
                        answers.append(type(exc).__name__)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = len(answers)
        os.killpg(backends[0].pid, signal.SIGKILL)  # the server and its worker, at once
        time.sleep(2.5)
        stop.set()
        for t in threads:
            t.join(30)
        after_kill = answers[before:]
        assert before > 20 and len(after_kill) > 20, (before, len(after_kill))
        assert [a for a in answers if a != 200] == []  # not one request lost
        assert backends[0].proc.wait(10) == -signal.SIGKILL
    finally:
        proxy.stop()
        for b in backends:
            b.close()


@pytest.mark.slow
def test_trickled_bodies_take_no_request_thread_behind_nginx_or_straight(base_config, nginx_binary):
    """2 request threads per server and 24 clients that send a head and trickle the body: through the documented
    nginx (which reads whole bodies first) and straight at a server (whose front reads them without a thread), a
    normal client is served within a second."""
    import json
    import socket

    backends = [RunningServer(base_config.replace(port=0, http_threads=2)) for _ in range(2)]
    proxy, front = _documented_nginx(nginx_binary, backends)
    body = json.dumps(ROW).encode()
    slow: list[socket.socket] = []

    def trickle(port: int) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v2/models/ctr/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        slow.append(s)

    try:
        for _ in range(24):
            trickle(front)
        time.sleep(0.5)
        with httpx.Client(timeout=5) as http:
            t0 = time.monotonic()
            assert http.post(f"http://127.0.0.1:{front}/v2/models/ctr/infer", json=ROW).status_code == 200
            assert time.monotonic() - t0 < 1.0
            # The same trickle straight at one server.
            for _ in range(24):
                trickle(backends[0].port)
            time.sleep(0.5)
            t0 = time.monotonic()
            assert http.post(f"{backends[0].url}/v2/models/ctr/infer", json=ROW, timeout=5).status_code == 200
            assert time.monotonic() - t0 < 1.0
    finally:
        for s in slow:
            s.close()
        proxy.stop()
        for b in backends:
            b.close()
