"""Overload at the sync service's door: past its request threads and a short queue, requests get 503 with
Retry-After at once (counted in /metrics), the rest are served, and nodes back off."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.net import wait_for

from edgerec.sync.node.client import NodeClient, http_client
from edgerec.sync.node.daemon import CycleResult, DaemonConfig, NodeDaemon, next_delay
from edgerec.sync.node.fetcher import HttpxFetcher, RefusedDownloadError
from edgerec.sync.protocol.errors import OverloadedError
from edgerec.sync.service.server import RunningServer


@pytest.mark.slow
def test_past_the_queue_the_service_refuses_at_once(sync_env):
    env = sync_env
    from dataclasses import replace

    env.service.config = replace(env.service.config, threads=1, shed_max_waiting=1, shed_max_wait_s=0.001,
                                 shed_retry_after_s=9)
    busy = RunningServer(env.service, maintenance=False).start()
    try:
        headers = {"Authorization": f"Bearer {env.init.admin_token}"}

        def call(_: int) -> httpx.Response:
            with httpx.Client(timeout=30) as c:  # a connection each: requests arrive together
                return c.get(busy.url + "/api/v1/admin/nodes", headers=headers)

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(call, range(256)))
        codes = [r.status_code for r in answers]
        refused = [r for r in answers if r.status_code == 503]
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
        assert all(r.headers["Retry-After"] == "9" and r.json()["error"] == "unavailable" for r in refused)
        scrape = httpx.get(busy.url + "/metrics", timeout=10)  # the service is idle again: not refused
        assert scrape.status_code == 200
        metrics = scrape.text
        line = next(ln for ln in metrics.splitlines()
                    if ln.startswith("edgerec_sync_refusals_total{") and 'reason="overloaded"' in ln)
        assert float(line.rsplit(" ", 1)[1]) == len(refused)
    finally:
        busy.stop()


def test_next_delay_honours_retry_after_with_up_to_half_again_of_jitter():
    low, high = (lambda a, b: a), (lambda a, b: b)  # the jitter's two ends
    c = DaemonConfig(interval_s=30, retry_base_s=1, max_backoff_s=300)
    assert (next_delay(c, 0, rng=low), next_delay(c, 0, rng=high)) == (27, 33)  # polling: the interval +-10 %
    assert (next_delay(c, 3, rng=low), next_delay(c, 3, rng=high)) == (2, 4)  # unreachable: backoff 2^(n-1)
    assert (next_delay(c, 1, 10, rng=low), next_delay(c, 1, 10, rng=high)) == (10, 15)  # Retry-After 10 s
    assert (next_delay(c, 1, 86400, rng=low), next_delay(c, 1, 86400, rng=high)) == (300, 450)  # capped
    assert next_delay(c, 1, 0, rng=low) == 0.5  # Retry-After 0 is no busy loop: the backoff's lower bound
    assert next_delay(c, 9, 10, rng=low) == 128  # refused again and again: the backoff (256 s) takes over
    assert 10 <= next_delay(c, 1, 10) <= 15  # random.uniform by default


class _CountingDaemon(NodeDaemon):
    """The real daemon; each cycle's end, whether it was refused and the Retry-After it got are kept."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cycles: list[tuple[float, bool, float | None]] = []

    def run_once(self) -> CycleResult:
        result = super().run_once()
        self.cycles.append((time.monotonic(), result.overloaded, result.retry_after_s))
        return result


def _record_requests(daemon: NodeDaemon) -> list[tuple[str, float, int | None, str | None]]:
    """Every request the daemon sends on its HTTP client (node API and TUF alike): when it left, and each
    answer's status and Retry-After, in order (the daemon sends one at a time)."""
    seen: list[tuple[str, float, int | None, str | None]] = []
    daemon.http.event_hooks = {
        "request": [lambda req: seen.append(("request", time.monotonic(), None, None))],
        "response": [lambda resp: seen.append(("answer", time.monotonic(), resp.status_code,
                                               resp.headers.get("Retry-After")))],
    }
    return seen


@pytest.mark.slow
@pytest.mark.sync_config(threads=1, shed_max_waiting=1, shed_max_wait_s=0.001, shed_retry_after_s=2)
def test_refused_nodes_come_back_after_retry_after_and_spread(sync_env, caplog):
    env = sync_env
    retry_after = 2.0
    caplog.set_level(logging.INFO, logger="edgerec.sync.node")
    env.publish(1)  # installing it during the flood: TUF, the target and the envelopes get refused too
    env.admin().rollout("ctr", 1, "stable", 100, [])
    config = DaemonConfig(interval_s=1.0, retry_base_s=0.1, max_backoff_s=30)
    daemons = [_CountingDaemon(s, s.dir / "models", config=config) for s in (env.enroll(f"n{i}") for i in range(8))]
    traffic = [_record_requests(d) for d in daemons]
    flooding, stop = threading.Event(), threading.Event()
    headers = {"Authorization": f"Bearer {env.init.admin_token}"}

    def flood() -> None:  # other clients keep the one request thread and its one waiting place taken
        with httpx.Client(timeout=30) as c:
            while flooding.is_set():
                c.get(env.url + "/api/v1/admin/nodes", headers=headers)

    flooding.set()
    flooders = [threading.Thread(target=flood) for _ in range(32)]
    runners = [threading.Thread(target=d.run_forever, args=(stop,), name=f"daemon-{i}") for i, d in
               enumerate(daemons)]
    try:
        for t in flooders:
            t.start()
        time.sleep(0.5)
        for t in runners:
            t.start()
        time.sleep(6)  # about three refusals each
        flooding.clear()
        for t in flooders:
            t.join(30)
        # Once the flood is over every node gets through: v1 installed, its queued reports sent, a cycle passed.
        assert wait_for(lambda: all(d.cycles and not d.cycles[-1][1] and not d.db.pending()
                                    and d.models.current("ctr") == 1 for d in daemons), 60), \
            [(d.cycles[-3:], d.db.failures()) for d in daemons]
    finally:
        flooding.clear()
        stop.set()
        for t in runners:
            t.join(30)
        for d in daemons:
            d.close()

    # After each 503 a node sent nothing for Retry-After seconds, then came back within half as long again
    # (plus 1.5 s for a busy machine), at a different moment from the others.
    late = []
    for seen in traffic:
        for k, (what, at, status, header) in enumerate(seen):
            if what == "answer" and status == 503:
                assert header == "2"
                after = next((t for w, t, _, _ in seen[k + 1:] if w == "request"), None)
                assert after is not None
                late.append(after - at - retry_after)
    refused_nodes = sum(any(s == 503 for _, _, s, _ in seen) for seen in traffic)
    assert refused_nodes >= 6 and len(late) >= 12, (refused_nodes, late)
    assert min(late) >= 0 and max(late) <= 0.5 * retry_after + 1.5, late
    assert max(late) - min(late) >= 0.2 * retry_after, late  # jitter: uniform over 0..1 s here

    # Logged once per episode (a refused cycle after one that got through), never as an outage.
    mine = [r for r in caplog.records if r.name == "edgerec.sync.node"]
    assert not [r for r in mine if r.levelno >= logging.WARNING], [r.getMessage() for r in mine][:5]
    for i, d in enumerate(daemons):
        refused = [over for _, over, _ in d.cycles]
        episodes = sum(over and (k == 0 or not refused[k - 1]) for k, over in enumerate(refused))
        said = [r.getMessage() for r in mine if r.threadName == f"daemon-{i}"]
        assert sum("sync service overloaded (Retry-After 2 s)" in m for m in said) == episodes, said
        assert sum("answers again" in m for m in said) == episodes, said
        assert {ra for _, over, ra in d.cycles if over} <= {retry_after}
        assert d.db.failures() == {} and d.db.bad("ctr", 1) is None  # a refusal is no failure of the version


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that answers every request 503 with the Retry-After values it is given, in turn
    (an overloaded proxy in front of the service)."""
    values: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = b'{"error": "unavailable", "detail": "overloaded", "field": null}'
            self.send_response(503)
            if values:
                self.send_header("Retry-After", values.pop(0))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", values
    server.shutdown()
    server.server_close()


def test_node_client_and_tuf_fetcher_carry_retry_after(refusing_server):
    url, values = refusing_server
    values += ["7", "Tue, 14 Nov 2023 22:14:05 GMT", "in a while", "12"]
    with http_client(url) as http:
        client = NodeClient(http, "node-1", Ed25519PrivateKey.generate())
        with pytest.raises(OverloadedError) as refused:
            client.checkin({"report_id": "r1"})
        assert (refused.value.status, refused.value.error, refused.value.retry_after_s) == (503, "unavailable", 7.0)
        with pytest.raises(OverloadedError) as refused:
            client.report({"report_id": "r2"})
        assert refused.value.retry_after_s == 0.0  # a date already past: now
        with pytest.raises(OverloadedError) as refused:
            client.assignments()
        assert refused.value.retry_after_s is None  # unreadable: ignored
        with pytest.raises(RefusedDownloadError) as dropped:  # python-tuf's fetcher, the same answer
            HttpxFetcher(http).fetch(url + "/repository/metadata/timestamp.json")
        assert (dropped.value.status_code, dropped.value.retry_after_s) == (503, 12.0)
