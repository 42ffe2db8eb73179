"""The HTTP front (granian's RSGI interface in front of a WSGI app), through a real granian server on loopback:
bodies read before the app within their limit and deadline, the environ the app sees, streamed answers, a
failing app, and a parked request giving its thread to another."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.front_app import BIG_CHUNK, BIG_CHUNKS
from support.net import free_port, wait_http_ok

from edgerec.sdk.wsgi_front import AppThreads

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("front") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from support.front_app import main; main()", str(port)],
                                env={**os.environ, "PYTHONPATH": str(TESTS)}, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/health", proc, log, 30)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


def _trickle(port: int, path: str, length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + b"{")
    return s


def _answer(s: socket.socket) -> tuple[bytes, float]:
    t0 = time.monotonic()
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data, time.monotonic() - t0


def test_the_app_sees_the_body_read_before_it_and_the_request_as_wsgi_says(url):
    r = httpx.post(f"{url}/echo/a%20b%C3%A9", params={"x": "1"}, content=b"0123456789",
                   headers=[("X-Multi", "1"), ("X-Multi", "2")], timeout=5)
    assert r.status_code == 200
    doc = r.json()
    # PATH_INFO is the decoded path's bytes as latin-1 (PEP 3333); werkzeug turns it back into "/echo/a bé".
    assert doc["path"] == "/echo/a b\u00c3\u00a9"
    assert (doc["query"], doc["length"], doc["content_length"]) == ("x=1", 10, "10")
    assert doc["remote"] == "127.0.0.1" and doc["host"] == url.removeprefix("http://") and doc["multi"] == "1,2"


def test_a_chunked_body_is_read_within_the_route_limit_and_refused_past_it(url):
    def chunks(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"x" * 100

    r = httpx.post(f"{url}/echo", content=chunks(5), timeout=5)
    assert r.status_code == 200 and r.json()["length"] == 500 and r.json()["content_length"] == "500"
    r = httpx.post(f"{url}/echo", content=chunks(20), timeout=5)  # 2,000 bytes, the limit is 1 KiB
    assert r.status_code == 413
    assert r.json() == {"error": "payload_too_large", "detail": "request body exceeds the limit of 1024 bytes",
                        "field": "body"}


def test_a_trickled_body_gets_408_at_the_deadline_and_holds_no_app_thread(url):
    port = int(url.rsplit(":", 1)[1])
    slow = [_trickle(port, "/echo", 500) for _ in range(5)]  # the app has one thread
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{url}/echo", content=b"{}", timeout=5)
        assert r.status_code == 200 and time.monotonic() - t0 < 0.5
        for s in slow:
            data, _ = _answer(s)  # answered, then closed by the server
            assert data.startswith(b"HTTP/1.1 408"), data[:100]
            assert b'"error": "request_timeout"' in data and b"connection: close" in data.lower()
        assert 0.8 <= time.monotonic() - t0 <= 3.0
    finally:
        for s in slow:
            s.close()


def test_bodies_held_at_once_are_bounded_in_bytes(url):
    port = int(url.rsplit(":", 1)[1])
    slow = [_trickle(port, "/echo", 1000) for _ in range(4)]  # 4,000 of the 4,096 bytes reserved
    try:
        time.sleep(0.2)
        r = httpx.post(f"{url}/echo", content=b"x" * 200, timeout=5)
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "unavailable", "1")
        assert r.headers["connection"] == "close"
        assert httpx.post(f"{url}/echo", content=b"x" * 90, timeout=5).status_code == 200  # what is left fits
        for s in slow:
            assert _answer(s)[0].startswith(b"HTTP/1.1 408")
    finally:
        for s in slow:
            s.close()
    # given back once answered: the same body is served now
    r = httpx.post(f"{url}/echo", content=b"x" * 200, timeout=5)
    assert r.status_code == 200 and r.json()["length"] == 200


def test_a_body_the_app_reads_itself_streams_and_each_read_has_the_deadline(url):
    r = httpx.post(f"{url}/upload", content=b"u" * 5000, timeout=5)  # over the 1 KiB limit of read-first bodies
    assert r.status_code == 200 and r.json()["length"] == 5000
    port = int(url.rsplit(":", 1)[1])
    s = _trickle(port, "/upload", 5000)
    try:
        data, took = _answer(s)
        assert data.startswith(b"HTTP/1.1 408") and b"request_timeout" in data and 0.8 <= took <= 3.0
    finally:
        s.close()
    assert httpx.post(f"{url}/echo", content=b"{}", timeout=5).status_code == 200


def test_a_large_answer_is_streamed_whole(url):
    with httpx.stream("GET", f"{url}/big", timeout=10) as r:
        assert r.status_code == 200
        got = b"".join(r.iter_bytes())
    assert len(got) == BIG_CHUNKS * BIG_CHUNK
    assert all(got[i * BIG_CHUNK] == i % 256 and got[(i + 1) * BIG_CHUNK - 1] == i % 256 for i in range(BIG_CHUNKS))


@pytest.mark.parametrize("path", ["/boom", "/boom-later"])
def test_an_app_that_raises_answers_500_and_the_server_goes_on(url, path):
    r = httpx.get(f"{url}{path}", timeout=5)
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert "boom" not in r.text and "part" not in r.text  # nothing of the failed answer goes to the client
    assert httpx.get(f"{url}/echo", timeout=5).status_code == 200


def test_a_parked_request_lends_its_thread(url):
    answers: dict[str, float] = {}

    def park() -> None:
        t0 = time.monotonic()
        assert httpx.get(f"{url}/park?1.5", timeout=10).status_code == 200
        answers["park"] = time.monotonic() - t0

    t = threading.Thread(target=park)
    t.start()
    time.sleep(0.3)  # the parked request holds the only slot's thread, asleep
    t0 = time.monotonic()
    r = httpx.post(f"{url}/echo", content=b"{}", timeout=10)
    answers["echo"] = time.monotonic() - t0
    t.join(10)
    assert r.status_code == 200 and json.loads(r.text)["length"] == 2
    assert answers["echo"] < 0.5 and answers["park"] >= 1.5, answers


def test_a_whole_answer_is_sent_by_the_app_thread_without_waiting_for_the_event_loop(url):
    """The app stalls the worker's event loop for 1 s just before it answers (as a flood of request heads and
    bodies would keep it busy): its answer still arrives at once, and the loop serves again after."""
    t0 = time.monotonic()
    r = httpx.get(f"{url}/stall-loop", timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["path"] == "/stall-loop"
    assert took < 0.7, took  # 1.1 s or more when the answer waited for the loop
    assert httpx.get(f"{url}/echo", timeout=10).status_code == 200


def test_an_idle_app_thread_holds_nothing_of_the_request_it_served():
    """A finished job goes with its request's protocol object, which owns the connection's body: an idle thread
    that kept its last job would keep a refused upload's connection open until the next request came."""

    class Request:
        pass

    threads = AppThreads(slots=1, spare=0)
    request = Request()
    gone = weakref.ref(request)
    served = threading.Event()
    threads.submit(lambda request=request: served.set())
    del request
    assert served.wait(5)
    deadline = time.monotonic() + 5
    while gone() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone() is None  # no gc.collect(): freed by reference counting as soon as the job is done
