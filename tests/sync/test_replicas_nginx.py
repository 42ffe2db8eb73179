"""Debian's nginx (the config in docs/operations.md) in front of two stateless sync replicas over one PostgreSQL.

Each replica is an ``edgerec sync serve`` process with only the database URL,
its own key file and its own empty work folder. Twenty node daemons follow a
rollout through nginx while one replica is killed with SIGKILL and started
again: every node converges on the new version and nothing is lost.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support.net import free_port, wait_for
from support.nginx import Nginx, sync_config
from support.sync_replica import Replica

from edgerec.sdk.keys import load_verify_key
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import NodeDaemon
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.move_state import move_to_database
from edgerec.sync.service.replica_keys import add_replica_key
from edgerec.sync.service.store import Database
from edgerec.sync.service.store.models import TufMetadata

NODES = 20



@pytest.mark.slow
@pytest.mark.postgres
def test_rollout_converges_through_nginx_while_a_replica_is_killed(pg_schema_url, tmp_path, publisher, packages,
                                                                  nginx_binary):
    db_url = pg_schema_url
    # The admin's machine: a data directory, moved into the database, then gone.
    init = init_service(tmp_path / "admin" / "data", tmp_path / "admin" / "root-keys",
                        [load_verify_key(publisher.public_path)], db_url)
    keys = [tmp_path / "a" / "replica.key", tmp_path / "b" / "replica.key"]
    for k in keys:
        k.parent.mkdir()
    move_to_database(init.data_dir, db_url, keys[0])
    db = Database(db_url)
    add_replica_key(db, keys[0], keys[1])
    db.dispose()
    import shutil

    shutil.rmtree(init.data_dir)

    replicas = [Replica(db_url, k, k.parent / "work", free_port(), k.parent / "serve.log") for k in keys]
    front = free_port()
    snippet = sync_config([r.port for r in replicas], front, tmp_path / "nginx-cache")
    proxy: Nginx | None = None
    daemons: list[NodeDaemon] = []
    stop = threading.Event()
    try:
        for r in replicas:
            r.start()
        assert [p for r in replicas for p in r.work.rglob("*") if p.is_file()] == []  # nothing kept locally
        proxy = Nginx(nginx_binary, snippet, [front])
        url = f"http://127.0.0.1:{front}"
        admin = AdminClient(Credentials(url, init.admin_token))
        for v in (1, 2):
            pkg = tmp_path / f"ctr-{v}.edgepkg"
            pkg.write_bytes(packages[v])
            admin.publish(pkg, "stable")
        for i in range(NODES):
            enroll_node(tmp_path / "nodes" / str(i), url, admin.create_enroll_token([], 600)["token"], f"n{i}")
            daemons.append(NodeDaemon(NodeState(tmp_path / "nodes" / str(i)), tmp_path / "nodes" / str(i) / "m"))
        admin.rollout("ctr", 1, "stable", 100, [])

        installed: dict[int, int] = {}
        unreachable = [0] * NODES
        errors: list[str] = []

        def follow(i: int) -> None:
            rng = random.Random(i)
            while not stop.is_set():
                try:
                    result = daemons[i].run_once()
                except Exception as exc:  # recorded: a node must never crash on a dying replica
                    errors.append(f"node {i}: {type(exc).__name__}: {exc}")
                    return
                for _model, version in result.installed:
                    installed[i] = version
                unreachable[i] += not result.reachable
                stop.wait(0.5 + rng.random())  # a poll with jitter: the rollout spreads over seconds

        threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(NODES)]
        for t in threads:
            t.start()
        assert wait_for(lambda: sum(v == 1 for v in installed.values()) == NODES or bool(errors), 60), installed
        assert errors == []

        assert all(r.checkins() > 0 for r in replicas)  # nginx spreads the nodes over both

        admin.rollout("ctr", 2, "stable", 100, [])
        assert wait_for(lambda: sum(v == 2 for v in installed.values()) >= 2, 30)  # under way
        replicas[0].kill()
        at_kill = sum(v == 2 for v in installed.values())
        time.sleep(1.5)  # nodes keep following through the other replica meanwhile
        replicas[0].start()
        assert wait_for(lambda: sum(v == 2 for v in installed.values()) == NODES or bool(errors), 60), installed
        # nginx tries the restarted replica again once its fail_timeout (10 s) is over; nodes keep polling.
        assert wait_for(lambda: replicas[0].checkins() > 0, 20, interval=0.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert errors == []
        assert installed == dict.fromkeys(range(NODES), 2)
        # One more cycle each with both replicas up: every node reaches the service and has no report left queued.
        assert all(d.run_once().reachable and d.db.pending() == [] for d in daemons)
        assert at_kill < NODES // 2, at_kill  # the kill came mid-rollout, not after it

        # nginx is the TUF files' static origin: the package comes from its cache, timestamp.json never does.
        target = next(p for p in admin.packages() if p["version"] == 2)
        path = f"/repository/targets/stable/ctr/{target['sha256']}.2.edgepkg"
        with httpx.Client(base_url=url, timeout=30) as http:
            fetched = [http.get(path) for _ in range(2)]
            stamps = [http.get("/repository/metadata/timestamp.json") for _ in range(2)]
        assert [r.status_code for r in fetched + stamps] == [200] * 4
        assert fetched[1].headers["X-Cache-Status"] == "HIT" and len(fetched[1].content) == target["size"]
        assert "HIT" not in {r.headers.get("X-Cache-Status") for r in stamps}

        # Every replica (the restarted one too) reports the same: desired 2, installed 2, everywhere.
        for r in replicas:
            with AdminClient(Credentials(r.url, init.admin_token)) as direct:
                rows = direct.status("ctr")["nodes"]
            assert len(rows) == NODES
            assert {(row["desired_version"], row["installed_version"]) for row in rows} == {(2, 2)}
        # One linear TUF history: each role's versions are 1..n with no gap and no fork.
        db = Database(db_url)
        with db.read() as s:
            versions: dict[str, list[int]] = {}
            for role, v in s.execute(select(TufMetadata.role, TufMetadata.version)):
                versions.setdefault(role, []).append(v)
        db.dispose()
        assert all(sorted(vs) == list(range(1, len(vs) + 1)) for vs in versions.values()), versions
        admin.close()
        for r in replicas:
            r.stop()
        cached = httpx.get(url + path, timeout=30)  # every replica down: the origin still has the package
        assert cached.status_code == 200 and cached.content == fetched[1].content
    finally:
        stop.set()
        for d in daemons:
            d.close()
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()


class _Upstream(ThreadingHTTPServer):
    """A replica stand-in on loopback: each answer takes ``delay_s``, with the service's cache headers, or is a
    503 as the service sheds load (``shedding``); it records how many requests it held at once."""

    daemon_threads = True

    def __init__(self, delay_s: float = 0.3, shedding: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.delay_s, self.shedding = delay_s, shedding
        self.lock = threading.Lock()
        self.inflight = self.most = self.served = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # nginx keeps its upstream connections alive

    def do_GET(self) -> None:
        srv = self.server
        assert isinstance(srv, _Upstream)
        with srv.lock:
            srv.inflight += 1
            srv.most = max(srv.most, srv.inflight)
            srv.served += 1
        time.sleep(srv.delay_s)
        with srv.lock:
            srv.inflight -= 1
        fresh = self.path.endswith(("/timestamp.json", "/root.json"))
        self.send_response(503 if srv.shedding else 200)
        if srv.shedding:
            self.send_header("Retry-After", "10")
        self.send_header("Cache-Control", "no-cache" if fresh else "public, max-age=31536000, immutable")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _sync_nginx(nginx_binary: str, tmp_path: Path, upstreams: list[_Upstream]) -> tuple[Nginx, str]:
    """docs/operations.md's edgerec-sync.conf in front of ``upstreams``; returns it and its URL."""
    front = free_port()
    proxy = Nginx(nginx_binary, sync_config([u.port for u in upstreams], front, tmp_path / "cache"), [front])
    return proxy, f"http://127.0.0.1:{front}"


@pytest.mark.parametrize(("path", "upstream_at_once"), [("/repository/metadata/timestamp.json", 6),
                                                        ("/repository/metadata/3.snapshot.json", 1)])
def test_nginx_sends_concurrent_timestamp_polls_on_at_once(nginx_binary, tmp_path, path, upstream_at_once):
    # The cache lock stays for what is cached (one fetch, however many nodes ask) and is off for the two
    # no-cache files: under it, concurrent timestamp.json polls went to a replica one at a time, each waiter
    # re-checking every 500 ms (bench/sync.py --scale measured a p99 of seconds at 20 polls a second).
    upstream = _Upstream()
    proxy, url = _sync_nginx(nginx_binary, tmp_path, [upstream])
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: httpx.get(url + path, timeout=30), range(6)))
        assert [(a.status_code, a.content) for a in answers] == [(200, b"{}")] * 6
        assert (upstream.most, upstream.served) == (upstream_at_once, upstream_at_once)
    finally:
        proxy.stop()
        upstream.close()


@pytest.mark.parametrize("path", ["/api/v1/node/assignments", "/repository/metadata/timestamp.json"])
def test_a_replica_shedding_load_stays_in_nginx_rotation(nginx_binary, tmp_path, path):
    # A 503 (the service shedding load, Retry-After) goes to the node as it is. Counted as a failure, it took the
    # replica out for 10 s and moved its load onto the other, which then shed too: 502 for everything.
    shedding, fine = _Upstream(0.0, shedding=True), _Upstream(0.0)
    proxy, url = _sync_nginx(nginx_binary, tmp_path, [shedding, fine])
    try:
        with httpx.Client(timeout=30) as http:
            got = sorted(http.get(url + path).status_code for _ in range(6))
        # round robin, the shedding one kept: half its answers, and never retried on the other
        assert (got, shedding.served, fine.served) == ([200] * 3 + [503] * 3, 3, 3)
    finally:
        proxy.stop()
        shedding.close()
        fine.close()
