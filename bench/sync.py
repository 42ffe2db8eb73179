"""Sync service under load: simulated nodes polling and reporting, and time to converge.

    python bench/sync.py [--store sqlite|postgres|both] [--nodes 1000] [--duration 120] [--interval 10]
                         [--converge-nodes 200] [--processes 1] [--no-write]
    python bench/sync.py --capacity --before REV|DIR [--store ...] [--start 200] [--rounds 3] [--step 10]
                         [--precision 0.05] [--client-cpus last|LIST|none]
    python bench/sync.py --scale [--replicas 2] [--nodes 500] [--start 25] [--rounds 3] [--step 6] [--precision 0.1]

For each store, on loopback:

1. ``edgerec admin init`` a data directory and start ``edgerec sync serve`` (its own
   process(es), 4 waitress threads each, the default); enroll ``--nodes`` nodes through the API
   (each with its own Ed25519 and X25519 keys); publish v1 and roll it out to 100 %.
2. Steady state: every node, at its own phase, every ``--interval`` seconds, for
   ``--duration`` seconds: fetches its signed assignments (RFC 9421 signed GET),
   polls TUF ``timestamp.json`` and posts a signed status report. Latency is
   measured per request from the first byte written to the last byte read; the
   request is signed (fresh nonce and time) just before and that cost is reported
   apart. Any non-2xx answer or transport failure counts as an error.
3. Convergence: ``--converge-nodes`` of the nodes run the real node-side checks
   (assignment signature, python-tuf ngclient refresh, target download and
   verification, envelope fetch) at the same interval; once all hold v1, the
   clock starts, v2 is published (upload, encryption, one envelope per node, TUF
   signing) and rolled out to 100 %; the clock stops when every one of them holds
   v2's verified target and its envelope.

The client is one asyncio process with a small HTTP/1.1 keep-alive pool (64
connections): simulated nodes share connections, the server sees the same
requests. The PostgreSQL cluster is a local one with default durability
(fsync and synchronous_commit on). Results go to docs/benchmarks.md (sync
section) unless ``--no-write``.

``--capacity`` measures instead the check-ins a second one process sustains
(p99 <= 100 ms, no error, the offered rate done), this tree's server against
the landed one (``--before``: a git revision such as ``2692ecf``, the last
waitress-based tree, or a directory holding ``edgerec/``), side by side on
one database: each server's rate is found by doubling then bisection, with
medians of rounds taken in turns (:func:`capacity_store`); latency is
open-loop (from each check-in's scheduled time), and the load generator is
pinned to one CPU and the servers to the others so that neither starves the
other (``--client-cpus``). Results go to the ``sync_capacity`` section.

``--overload [--rate N] [--overload-step 30]`` finds that rate the same way
(shedding on; or takes ``--rate``), then offers twice it with shedding off and
on, simulated nodes honouring Retry-After with the daemon's jitter
(:func:`overload_store`). Results go to the ``sync_overload`` section.
``--scale`` measures the same way, over one PostgreSQL holding all state
(``sync migrate --to-database``): one stateless replica (``sync serve
--key-file``) directly, the same replica behind nginx, and ``--replicas``
replicas behind nginx (docs/operations.md's ``edgerec-sync.conf``), the three
searched side by side; each round also records every process's CPU and the
database's transactions, rows written and WAL bytes. Then ``timestamp.json``
with wrk: from the static origin (``edgerec-origin.conf`` over a data
directory) and through the replicas' nginx. Results go to ``sync_scale``, and
docs/operations.md's sizing table is worked out from them by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the tests' loopback helpers and PostgreSQL launcher (tests/support), written once
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from _report import header, write_section
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.net import free_port, wait_for
from support.nginx import Nginx, doc_config, find_nginx, sync_config
from support.postgres import LocalPostgres
from support.sync_replica import Replica
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from edgerec.sdk.http_errors import OVERLOAD_STATUSES, retry_after_seconds
from edgerec.sdk.http_server import child_pids, raise_fd_limit
from edgerec.sdk.keys import generate_keypair, load_signing_key, load_verify_key, public_pem
from edgerec.sdk.testing import build_demo_package
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.daemon import DaemonConfig, next_delay
from edgerec.sync.node.fetcher import HttpxFetcher
from edgerec.sync.protocol.assignments import Accepted, verify_assignment
from edgerec.sync.protocol.httpsig import RequestSigner
from edgerec.sync.protocol.trust import TrustInfo
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.move_state import move_to_database
from edgerec.sync.service.replica_keys import add_replica_key
from edgerec.sync.service.store import Database

EDGEREC = str(Path(sys.executable).parent / "edgerec")
POOL = 64


# -- a lean HTTP/1.1 client -------------------------------------------------------------


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.headers: dict[str, str] = {}  # the last answer's, names in lower case

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        self.headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            self.headers[name] = value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    def __init__(self, urls: list[str], size: int) -> None:
        self.q: asyncio.Queue[Conn] = asyncio.Queue()
        for i in range(size):
            host, port = urls[i % len(urls)].removeprefix("http://").rsplit(":", 1)
            self.q.put_nowait(Conn(host, int(port)))

    @contextlib.asynccontextmanager
    async def conn(self) -> AsyncIterator[Conn]:
        c = await self.q.get()
        try:
            yield c
        except BaseException:
            c.close()
            raise
        finally:
            self.q.put_nowait(c)


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sign_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    by_second: dict[int, float] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)  # how late the client's event loop woke for a scheduled poll
    t0: float = field(default_factory=time.perf_counter)

    async def call(self, pool: Pool, kind: str, method: str, path: str, headers: dict[str, str],
                   body: bytes = b"", due: float | None = None) -> bytes | None:
        """One request; its latency from ``due`` (its scheduled ``perf_counter`` time) when given, so that
        waiting for a free connection or a late event loop counts, else from its first byte sent."""
        async with pool.conn() as c:
            t0 = time.perf_counter() if due is None else min(due, time.perf_counter())
            try:
                status, data = await c.request(method, path, headers, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                c.close()
                self.errors[kind] += 1
                self.error_samples.append(f"{kind}: {type(exc).__name__}: {exc}")
                return None
            took = time.perf_counter() - t0
            self.latency[kind].append(took)
            sec = int(t0 - self.t0)
            self.by_second[sec] = max(self.by_second.get(sec, 0.0), took)
        if not 200 <= status < 300:
            self.errors[kind] += 1
            self.error_samples.append(f"{kind}: HTTP {status} {data[:200]!r}")
            return None
        return data


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


# -- a simulated node --------------------------------------------------------------------


class SimNode:
    def __init__(self, node_id: str, key: Ed25519PrivateKey, base: str) -> None:
        self.id = node_id
        self.signer = RequestSigner(node_id, key)
        self.base = base  # signed URLs carry a host; the service checks method, path and query
        self.held: int | None = None
        self.accepted: Accepted | None = None
        self.signed: list[tuple[dict[str, str], bytes, dict[str, str]]] = []

    def sign(self, stats: Stats, method: str, path: str, body: bytes | None = None) -> dict[str, str]:
        t0 = time.perf_counter()
        headers = self.signer.sign(method, self.base + path, body,
                                   {"Content-Type": "application/json"} if body else {})
        stats.sign_s.append(time.perf_counter() - t0)
        return headers

    def presign(self, stats: Stats, cycles: int, protocol: str) -> None:
        """Sign this node's next ``cycles`` requests ahead of the run.

        Each has its own nonce and creation time (inside the service's 300 s
        window), so the service verifies every one for real; the load generator
        just does not pay the signing in its event loop. ``stats.sign_s`` keeps
        the cost a real node pays per request.
        """
        self.signed = []
        for _ in range(cycles):
            body = json.dumps(self.report_doc()).encode()
            if protocol == "checkin":
                self.signed.append(({}, body, self.sign(stats, "POST", "/api/v1/node/checkin", body)))
            else:
                poll = self.sign(stats, "GET", "/api/v1/node/assignments")
                self.signed.append((poll, body, self.sign(stats, "POST", "/api/v1/node/reports", body)))

    def report_doc(self) -> dict[str, Any]:
        return {"report_id": os.urandom(12).hex(), "kind": "status", "time": time.time(), "agent": "bench",
                "health": "ok", "accelerator": "cpu",
                "models": [{"name": "ctr", "installed_version": self.held or 1, "state": "serving",
                            "accelerator": "cpu"}]}

    async def cycle(self, pool: Pool, stats: Stats, protocol: str, due: float | None = None) -> bytes | None:
        """One poll: a check-in (report in, assignments out), or a poll and a report apart; and TUF.

        ``due``: when the poll was scheduled (:meth:`Stats.call`), for its first request."""
        if self.signed:
            poll, body, report = self.signed.pop(0)
        else:
            body = json.dumps(self.report_doc()).encode()
            poll = {} if protocol == "checkin" else self.sign(stats, "GET", "/api/v1/node/assignments")
            path = "/api/v1/node/checkin" if protocol == "checkin" else "/api/v1/node/reports"
            report = self.sign(stats, "POST", path, body)
        if protocol == "checkin":
            data = await stats.call(pool, "checkin", "POST", "/api/v1/node/checkin", report, body, due)
        else:
            data = await stats.call(pool, "assignments", "GET", "/api/v1/node/assignments", poll, due=due)
        await stats.call(pool, "timestamp.json", "GET", "/repository/metadata/timestamp.json", {})
        if protocol != "checkin":
            await stats.call(pool, "reports", "POST", "/api/v1/node/reports", report, body)
        return data


# -- phases ---------------------------------------------------------------------------------


async def enroll_all(urls: list[str], admin_token: str, n: int, concurrency: int = 16) -> list[SimNode]:
    pool = Pool(urls, concurrency)
    stats = Stats()
    sem = asyncio.Semaphore(concurrency)
    auth = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}

    async def one(i: int) -> SimNode:
        async with sem:
            body = json.dumps({"tags": [], "expires_s": 3600}).encode()
            tok = json.loads(await stats.call(pool, "token", "POST", "/api/v1/admin/enroll-tokens", auth, body)
                             or b"{}")["token"]
            key = Ed25519PrivateKey.generate()
            doc = {"token": tok, "signing_key": public_pem(key.public_key()).decode(),
                   "recipient_key": public_pem(X25519PrivateKey.generate().public_key()).decode(), "name": f"sim-{i}"}
            out = await stats.call(pool, "enroll", "POST", "/api/v1/enroll", {"Content-Type": "application/json"},
                                   json.dumps(doc).encode())
            return SimNode(json.loads(out or b"{}")["node_id"], key, urls[0])

    nodes = await asyncio.gather(*(one(i) for i in range(n)))
    if stats.errors:
        raise SystemExit(f"enrollment failed: {dict(stats.errors)} {stats.error_samples[:3]}")
    return list(nodes)


async def steady(urls: list[str], nodes: list[SimNode], duration: float, interval: float, protocol: str,
                 from_schedule: bool = False) -> Stats:
    """Every node polls every ``interval`` s for ``duration`` s at its own phase; ``from_schedule``: latency of a
    poll's first request from its scheduled time (an open-loop measure: a server that falls behind cannot hide
    the queue in the client's connection pool)."""
    pool = Pool(urls, POOL)
    stats = Stats()
    cycles = int(duration // interval) + 1
    for n in nodes:
        n.presign(stats, cycles, protocol)
    start = time.perf_counter() + 1.0
    end = start + duration

    async def run(node: SimNode, phase: float) -> None:
        k = 0
        while True:
            at = start + phase + k * interval
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            stats.lag.append(time.perf_counter() - at)
            await node.cycle(pool, stats, protocol, at if from_schedule else None)
            k += 1

    rnd = random.Random(7)
    await asyncio.gather(*(run(n, rnd.uniform(0, interval)) for n in nodes))
    return stats


@dataclass
class Converge:
    publish_s: float = 0.0
    rollout_s: float = 0.0
    all_hold_s: float = 0.0
    per_node_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def converge(urls: list[str], nodes: list[SimNode], work: Path, admin: AdminClient, pkg2: Path,
                   interval: float, root: bytes, timeout: float) -> Converge:
    pool = Pool(urls, 32)
    stats = Stats()
    trust = TrustInfo.from_root(Metadata[Root].from_bytes(root).signed)
    http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32))
    executor = ThreadPoolExecutor(16)
    loop = asyncio.get_running_loop()
    result = Converge()
    t_start: list[float] = []
    held_at: dict[str, float] = {}
    stop = asyncio.Event()

    def fetch_target(node: SimNode, target: str) -> None:
        d = work / node.id
        (d / "meta").mkdir(parents=True, exist_ok=True)
        up = Updater(str(d / "meta"), f"{urls[0]}/repository/metadata/", str(d / "targets"),
                     f"{urls[0]}/repository/targets/", fetcher=HttpxFetcher(http), bootstrap=root)
        info = up.get_targetinfo(target)
        if info is None:
            raise RuntimeError(f"{target} not in TUF metadata")
        up.find_cached_target(info) or up.download_target(info)

    async def run(node: SimNode, phase: float) -> None:
        await asyncio.sleep(phase)
        while not stop.is_set():
            tick = time.monotonic()
            data = await node.cycle(pool, stats, "checkin")
            if data:
                for doc in json.loads(data)["assignments"]:
                    a = verify_assignment(doc.encode(), trust.assignment_keys, node.id, node.accepted, node.held,
                                          time.time())
                    node.accepted = Accepted(a.serial, a.version)
                    if a.version != node.held:
                        try:
                            await loop.run_in_executor(executor, fetch_target, node, a.target)
                            path = f"/api/v1/node/envelopes/{a.model}/{a.version}"
                            env = await stats.call(pool, "envelopes", "GET", path, node.sign(stats, "GET", path))
                            if env is None:
                                continue
                        except Exception as exc:  # recorded; the node retries next round
                            result.failures.append(f"{node.id}: {type(exc).__name__}: {exc}")
                            continue
                        node.held = a.version
                        if a.version == 2 and t_start:
                            held_at[node.id] = time.monotonic() - t_start[0]
            await asyncio.sleep(max(0.0, tick + interval - time.monotonic()))

    rnd = random.Random(11)
    tasks = [asyncio.create_task(run(n, rnd.uniform(0, interval))) for n in nodes]
    ok = await asyncio.to_thread(wait_for, lambda: all(n.held == 1 for n in nodes), timeout, 0.2)
    if not ok:
        raise SystemExit(f"warm-up: not all nodes hold v1: {result.failures[:3]}")
    t_start.append(time.monotonic())
    t0 = time.perf_counter()
    await asyncio.to_thread(admin.publish, pkg2, "stable")
    result.publish_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    await asyncio.to_thread(admin.rollout, "ctr", 2, "stable", 100, [])
    result.rollout_s = time.perf_counter() - t1
    await asyncio.to_thread(wait_for, lambda: len(held_at) == len(nodes), timeout, 0.05)
    result.all_hold_s = max(held_at.values()) if len(held_at) == len(nodes) else float("inf")
    result.per_node_s = sorted(held_at.values())
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    executor.shutdown()
    http.close()
    return result


# -- one store --------------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """CPU seconds of ``pid``; ``reaped``: with its children that exited (PostgreSQL backends whose connection
    closed: their time moves to the postmaster once it has waited for them)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15 if reaped else 13]) / os.sysconf("SC_CLK_TCK")


def serve(data_dir: Path, log: Path, threads: int, source: Path | None = None,
          cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``edgerec sync serve`` on a free port; ``source``: an older tree to run instead (DIR/edgerec/...);
    ``cpus``: the CPUs it and every process and thread it starts may run on."""
    port = free_port()
    env = {**os.environ, "EDGEREC_SYNC_THREADS": str(threads)}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]
    if cpus is not None:  # taskset execs the command: same pid, and its threads and workers inherit the mask
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "sync", "serve", "--data-dir", str(data_dir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/api/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None
    if not wait_for(up, 60, 0.2) or proc.poll() is not None:
        raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")
    return proc, url


def run_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"edgerec-bench-{store}-"))
    pg = LocalPostgres(fast=False).start() if store == "postgres" else None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pub = generate_keypair(work, "publisher")
        key = load_signing_key(pub.private_path)
        init = init_service(work / "data", work / "root-keys", [load_verify_key(pub.public_path)],
                            pg.url if pg else None)
        urls = []
        for i in range(args.processes):
            proc, url = serve(init.data_dir, work / f"serve{i}.log", args.threads)
            procs.append(proc)
            urls.append(url)
        admin = AdminClient(Credentials(urls[0], init.admin_token))
        print(f"[{store}] enrolling {args.nodes} nodes ...", flush=True)
        t0 = time.perf_counter()
        nodes = asyncio.run(enroll_all(urls, init.admin_token, args.nodes))
        enroll_s = time.perf_counter() - t0
        for v in (1, 2):
            (work / f"ctr-{v}.edgepkg").write_bytes(build_demo_package("ctr", v, key, seed=v))
        admin.publish(work / "ctr-1.edgepkg", "stable")
        admin.rollout("ctr", 1, "stable", 100, [])

        steady_rows = []
        for protocol in args.protocols:
            print(f"[{store}] steady state ({protocol}): {args.nodes} nodes, every {args.interval:g} s, "
                  f"{args.duration:g} s ...", flush=True)
            cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            busy0, mine0, load0 = machine_busy_seconds(), time.process_time(), os.getloadavg()[0]
            t0 = time.perf_counter()
            stats = asyncio.run(steady(urls, nodes, args.duration, args.interval, protocol))
            wall = time.perf_counter() - t0
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
            busy, mine = machine_busy_seconds() - busy0, time.process_time() - mine0
            all_lat = [x for v in stats.latency.values() for x in v]
            worst = sorted(stats.by_second.items(), key=lambda kv: -kv[1])[:5]
            print(f"[{store}] slowest seconds (s from start, max ms): "
                  + ", ".join(f"{t}: {v * 1000:.0f}" for t, v in sorted(worst)), flush=True)
            for n in nodes:
                n.signed.clear()
            steady_rows.append({
                "protocol": protocol,
                "requests": len(all_lat),
                "rate_per_s": len(all_lat) / wall,
                "errors": sum(stats.errors.values()),
                "error_samples": stats.error_samples[:5],
                "p50_ms": pct(all_lat, 0.50),
                "p95_ms": pct(all_lat, 0.95),
                "p99_ms": pct(all_lat, 0.99),
                "max_ms": max(all_lat) * 1000 if all_lat else float("nan"),
                "by_kind": {k: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)}
                            for k, v in sorted(stats.latency.items())},
                "sign_ms_mean": statistics.fmean(stats.sign_s) * 1000 if stats.sign_s else 0.0,
                "server_cpu_share": cpu / wall,
                "client_cpu_share": mine / wall,
                "machine_busy_cores": busy / wall,
                "loadavg": (load0 + os.getloadavg()[0]) / 2,
            })
        conv = None
        if args.converge_nodes > 0:  # 0: the steady-state rates only
            print(f"[{store}] convergence: {args.converge_nodes} nodes ...", flush=True)
            root = (init.data_dir / "repository" / "metadata" / "1.root.json").read_bytes()
            conv = asyncio.run(converge(urls, nodes[: args.converge_nodes], work / "tuf", admin,
                                        work / "ctr-2.edgepkg", args.interval, root, args.interval * 10))
        admin.close()
        nan = float("nan")
        return {
            "store": store,
            "processes": args.processes,
            "nodes": args.nodes,
            "interval_s": args.interval,
            "duration_s": args.duration,
            "enroll_s": enroll_s,
            "steady": steady_rows,
            "converge_nodes": args.converge_nodes,
            "publish_s": conv.publish_s if conv else nan,
            "rollout_s": conv.rollout_s if conv else nan,
            "all_hold_s": conv.all_hold_s if conv else nan,
            "median_hold_s": statistics.median(conv.per_node_s) if conv and conv.per_node_s else nan,
            "converge_failures": conv.failures[:5] if conv else [],
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg is not None:
            pg.stop()


PROTOCOLS = {
    "checkin": "one signed check-in (`POST /api/v1/node/checkin`: status report in, signed assignments out), "
               "as the node daemon does",
    "separate": "a signed `GET /api/v1/node/assignments` and a signed status report `POST /api/v1/node/reports`",
}


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [header("Sync service: 1,000 polling nodes and time to converge").rstrip() + "\n",
           f"Steady state: {args.nodes:,} simulated nodes on loopback, each every {args.interval:g} s for "
           f"{args.duration:g} s: a TUF `timestamp.json` poll and, by protocol, "
           + "; or ".join(f"**{k}**: {v}" for k, v in PROTOCOLS.items() if k in args.protocols)
           + ". Requests are RFC 9421 signed ahead of the run, each with its own nonce and time, and the service "
           "verifies every one (the signing cost a node pays per request is listed apart). One `edgerec sync "
           f"serve` process ({args.threads} waitress threads), client and server on the same 2 cores, which 3 "
           "other agents were using at the same time: the machine columns show how busy it was (PostgreSQL "
           "backends count there, not as service CPU); with the machine saturated the tail is set by CPU "
           "scheduling more than by edgerec, and reruns vary by hundreds of ms at p99. Latency: first byte sent "
           "to last byte read. Targets: p99 <= 100 ms, no errors.\n",
           "| store | protocol | requests | req/s | errors | p50 ms | p95 ms | p99 ms | max ms | service CPU | "
           "load generator CPU | whole machine busy (of 2 cores), load avg | signing ms/request | "
           "p99 <= 100 ms, no errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for st in r["steady"]:
            ok = st["p99_ms"] <= 100 and st["errors"] == 0
            out.append(f"| {r['store']} | {st['protocol']} | {st['requests']:,} | {st['rate_per_s']:.0f} | "
                       f"{st['errors']} | {st['p50_ms']:.1f} | {st['p95_ms']:.1f} | {st['p99_ms']:.1f} | "
                       f"{st['max_ms']:.0f} | {st['server_cpu_share']:.2f} cores | "
                       f"{st['client_cpu_share']:.2f} cores | "
                       f"{st['machine_busy_cores']:.2f} cores, {st['loadavg']:.1f} | "
                       f"{st['sign_ms_mean']:.2f} | {'yes' if ok else 'NO'} |")
    out.append("\nPer request kind (p50 / p99 ms):\n")
    kinds = sorted({k for r in results for st in r["steady"] for k in st["by_kind"]})
    out.append("| store | protocol | " + " | ".join(kinds) + " |")
    out.append("|---|---|" + "---|" * len(kinds))
    for r in results:
        for st in r["steady"]:
            cells = [f"{st['by_kind'][k]['p50_ms']:.1f} / {st['by_kind'][k]['p99_ms']:.1f}"
                     if k in st["by_kind"] else "-" for k in kinds]
            out.append(f"| {r['store']} | {st['protocol']} | " + " | ".join(cells) + " |")
    if not results[0]["converge_nodes"]:
        return "\n".join(out) + "\n"
    out.append(f"\nConvergence: {results[0]['converge_nodes']} of the nodes check in and run the node-side checks "
               "for real (assignment signature, python-tuf ngclient refresh, target download and hash check, "
               f"envelope fetch) every {args.interval:g} s. Clock from the start of `publish` (upload, encryption, "
               f"{args.nodes:,} envelopes, TUF signing), then `rollout 100`, to the last node holding v2. "
               f"Target: <= 2 poll intervals ({2 * args.interval:g} s).\n")
    out.append("| store | publish s | rollout s | median node s | all nodes s | <= 2 intervals |")
    out.append("|---|---|---|---|---|---|")
    for r in results:
        out.append(f"| {r['store']} | {r['publish_s']:.2f} | {r['rollout_s']:.2f} | {r['median_hold_s']:.1f} | "
                   f"{r['all_hold_s']:.1f} | {'yes' if r['all_hold_s'] <= 2 * args.interval else 'NO'} |")
    out.append(f"\nEnrolling {args.nodes:,} nodes through the API took "
               + ", ".join(f"{r['enroll_s']:.0f} s ({r['store']})" for r in results) + ".")
    return "\n".join(out) + "\n"


@dataclass
class Search:
    """One server's search for the highest sustained rate: doubling from ``start`` to a first failure, then
    bisection between the highest rate that passed and the lowest that failed, to within ``precision``."""

    start: int
    precision: float
    ceiling: int
    passed: int = 0
    failed: int | None = None

    def next_rate(self) -> int | None:
        if self.failed is None:
            rate = self.passed * 2 if self.passed else self.start
            return rate if rate <= self.ceiling else None
        if self.failed - self.passed <= max(10, self.precision * self.passed):
            return None
        return round((self.passed + self.failed) / 2 / 10) * 10

    def record(self, rate: int, ok: bool) -> None:
        if ok:
            self.passed = max(self.passed, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)


def before_tree(source: str, work: Path) -> Path:
    """``--before``: a source tree (DIR/edgerec/{sdk,sync}) or a git revision, exported to ``work``."""
    if Path(source).is_dir():
        return Path(source)
    root = Path(__file__).resolve().parent.parent
    out = work / "before"
    (out / "edgerec").mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(root), "archive", source, "sdk", "sync", "edge_server", "converter"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out / "edgerec")], input=tar, check=True)
    return out


def init_with(tree: Path | None, work: Path, publisher_pub: Path, db_url: str | None) -> tuple[Path, str]:
    """A data directory and database initialised by ``tree``'s own code (this tree's when None): each server
    gets its own, as the landed one knows an older schema. Returns the data directory and an admin token."""
    code = ("import json, sys; from pathlib import Path; from edgerec.sdk.keys import load_verify_key; "
            "from edgerec.sync.service.admin_init import init_service; a = sys.argv[1:]; "
            "r = init_service(Path(a[0]), Path(a[1]), [load_verify_key(Path(a[2]))], a[3] or None); "
            "print(json.dumps({'data_dir': str(r.data_dir), 'token': r.admin_token}))")
    env = {**os.environ}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code, str(work / "data"), str(work / "root-keys"),
                          str(publisher_pub), db_url or ""], env=env, check=True, capture_output=True, text=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return Path(doc["data_dir"]), str(doc["token"])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server process and its workers (granian's worker processes are its children)."""
    total = 0.0
    for p in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def capacity_round(name: str, url: str, proc: subprocess.Popen[bytes], nodes: list[SimNode], rate: int,
                   args: argparse.Namespace) -> dict[str, Any]:
    """One round at ``rate`` check-ins a second against one server; passes when every request succeeded, the p99
    of all requests stayed within 100 ms (check-ins from their scheduled time) and >= 97 % of the offered
    check-ins were done."""
    cpu0, load0, busy0 = tree_cpu_seconds(proc.pid), os.getloadavg()[0], machine_busy_seconds()
    mine0 = time.process_time()
    t0 = time.perf_counter()
    stats = asyncio.run(steady([url], nodes, args.step, len(nodes) / rate, "checkin", from_schedule=True))
    wall = time.perf_counter() - t0
    for n in nodes:
        n.signed.clear()
    lat = [x for v in stats.latency.values() for x in v]
    checkins = stats.latency.get("checkin", [])
    row = {"server": name, "rate": rate, "checkins_per_s": len(checkins) / args.step,
           "requests_per_s": len(lat) / args.step, "errors": sum(stats.errors.values()),
           "error_samples": stats.error_samples[:3], "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
           "checkin_p99_ms": pct(checkins, 0.99), "client_lag_p99_ms": pct(stats.lag, 0.99),
           "server_cpu": (tree_cpu_seconds(proc.pid) - cpu0) / wall,
           "client_cpu": (time.process_time() - mine0) / wall,
           "machine_busy": (machine_busy_seconds() - busy0) / wall, "loadavg": (load0 + os.getloadavg()[0]) / 2}
    row["ok"] = row["errors"] == 0 and row["p99_ms"] <= 100 and row["checkins_per_s"] >= 0.97 * rate
    print(f"  {name} {rate}/s: {row['checkins_per_s']:.0f} done, p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms "
          f"(client loop lag p99 {row['client_lag_p99_ms']:.1f}), errors {row['errors']}, server CPU "
          f"{row['server_cpu']:.2f}, load {row['loadavg']:.1f}: {'pass' if row['ok'] else 'FAIL'}",
          file=sys.stderr, flush=True)
    return row


def search_side_by_side(names: list[str], args: argparse.Namespace, label: str,
                        run_round: Callable[[str, int], dict[str, Any]]) -> tuple[
                            list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, Search]]:
    """Each of ``names`` its own :class:`Search`; at each step all run their next rate, ``--rounds`` rounds each
    (``run_round(name, rate)``), taking turns round by round in alternating order; a rate is sustained when most
    of its rounds pass. Returns every round, each rate's verdict by name, and the searches."""
    searches = {name: Search(args.start, args.precision, args.max_rate) for name in names}
    rows: list[dict[str, Any]] = []
    verdicts: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    step = 0
    while todo := {name: r for name, s in searches.items() if (r := s.next_rate()) is not None}:
        print(f"{label} step {step}: " + ", ".join(f"{n} at {r}/s" for n, r in todo.items()), file=sys.stderr,
              flush=True)
        got: dict[str, list[dict[str, Any]]] = {name: [] for name in todo}
        for k in range(args.rounds):
            for name in list(todo) if (step + k) % 2 == 0 else list(todo)[::-1]:
                row = run_round(name, todo[name])
                row["step"], row["round"] = step, k
                got[name].append(row)
                rows.append(row)
        for name, rs in got.items():
            ok = sum(r["ok"] for r in rs) * 2 > len(rs)
            searches[name].record(todo[name], ok)
            verdicts[name].append({"rate": todo[name], "ok": ok, "rounds": len(rs),
                                   "passed_rounds": sum(r["ok"] for r in rs),
                                   "p99_ms_median": statistics.median(r["p99_ms"] for r in rs),
                                   "checkins_per_s_median": statistics.median(r["checkins_per_s"] for r in rs),
                                   "server_cpu_median": statistics.median(r["server_cpu"] for r in rs),
                                   "errors": sum(r["errors"] for r in rs)})
        step += 1
    return rows, verdicts, searches


def capacity_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    """Check-ins a second each server sustains (p99 <= 100 ms, no error): this tree's against ``--before``'s.

    Each serves its own data directory and database (on PostgreSQL: two databases
    of one cluster), with the same number of enrolled nodes and the same
    published model rolled out to all. Each server has its own :class:`Search`; at each
    step both run their next rate, ``--rounds`` rounds each, taking turns round by
    round in alternating order; a rate is sustained when most of its rounds pass.
    """
    work = Path(tempfile.mkdtemp(prefix=f"edgerec-capacity-{store}-"))
    pg = LocalPostgres(fast=False).start() if store == "postgres" else None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    everything = os.sched_getaffinity(0)
    try:
        pub = generate_keypair(work, "publisher")
        key = load_signing_key(pub.private_path)
        (work / "ctr-1.edgepkg").write_bytes(build_demo_package("ctr", 1, key, seed=1))
        urls: dict[str, str] = {}
        nodes: dict[str, list[SimNode]] = {}
        for name, source in (("granian", None), ("landed", args.before)):
            if name == "landed" and source is None:
                continue
            tree = before_tree(source, work) if source is not None else None
            db_url = pg.create_database(name) if pg else None
            data_dir, token = init_with(tree, work / name, pub.public_path, db_url)
            procs[name], urls[name] = serve(data_dir, work / f"{name}.log", args.threads, tree,
                                            args.server_cpus if args.client_cpus else None)
            nodes[name] = asyncio.run(enroll_all([urls[name]], token, args.nodes))
            with AdminClient(Credentials(urls[name], token)) as admin:
                admin.publish(work / "ctr-1.edgepkg", "stable")
                admin.rollout("ctr", 1, "stable", 100, [])
        if args.client_cpus:  # PostgreSQL (started above) keeps every CPU; the servers were started on theirs
            os.sched_setaffinity(0, args.client_cpus)
        # Each node's first status report is stored (later ones repeat it: heartbeats). Sent here, one round
        # per server in which every node checks in once, so the search measures the steady state and a first
        # step that failed on those writes cannot cap it.
        for name, url in urls.items():
            warm = capacity_round(name, url, procs[name], nodes[name], max(1, round(args.nodes / args.step)), args)
            print(f"[{store}] warm-up {name}: each node's first status report sent, errors {warm['errors']}",
                  file=sys.stderr, flush=True)
        rows, verdicts, searches = search_side_by_side(
            list(urls), args, f"[{store}]",
            lambda name, rate: capacity_round(name, urls[name], procs[name], nodes[name], rate, args))
        return {"store": store, "rows": rows, "verdicts": verdicts,
                "sustained": {name: s.passed for name, s in searches.items()},
                "failed": {name: s.failed for name, s in searches.items()}, "nodes": args.nodes}
    finally:
        os.sched_setaffinity(0, everything)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)  # data directories, databases, the exported landed tree


def render_capacity(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    pinning = (f"the load generator pinned to CPU {sorted(args.client_cpus)} (`sched_setaffinity`), so it uses "
               f"at most that core, and the two servers (`taskset`, inherited by their workers and threads) to CPU "
               f"{sorted(args.server_cpus)}; PostgreSQL unpinned" if args.client_cpus else "nothing pinned")
    out = [header("Sync service: check-ins one process sustains, granian against the landed server").rstrip()
           + "\n",
           f"{results[0]['nodes']:,} simulated nodes check in (`POST /api/v1/node/checkin`, RFC 9421 signed ahead "
           "of the run, each request with its own nonce) and poll TUF `timestamp.json`, spread evenly over the "
           "interval that gives each rate. Two `edgerec sync serve` processes, each on its own data directory and "
           "database (initialised by its own code; on PostgreSQL two databases of one local cluster with default "
           "durability) with the same nodes enrolled and v1 rolled out, and each node's first status report sent "
           "(a warm-up round: first reports are stored, later ones are heartbeats): this tree (granian, one worker) "
           "and the "
           f"landed server (`--before {args.before}`: waitress, {args.threads} threads). Each server's sustained "
           "rate is searched on its own: offered load doubles "
           f"from {args.start}/s to a first failure, then bisection between the highest rate that passed and the "
           f"lowest that failed, down to {args.precision:.0%} (or 10/s); at each step both servers run their "
           f"rate, {args.rounds} rounds of {args.step:g} s each, taking turns round by round in alternating order, "
           "and a rate is sustained when most of its rounds pass. A round passes when every request succeeded, "
           "the p99 of all requests stayed within 100 ms and at least 97 % of the offered check-ins were done. "
           "Latency is open-loop: a check-in's from the time it was scheduled (waiting for one of the client's 64 "
           "connections or a late event loop counts), a `timestamp.json` poll's from its first byte sent. "
           f"Machine: {pinning}.\n",
           "| store | server | sustained check-ins/s | lowest failed | ratio to landed | >= 2x |",
           "|---|---|---|---|---|---|"]
    for res in results:
        landed = res["sustained"].get("landed") or 0
        for name, v in res["sustained"].items():
            ratio = f"{v / landed:.2f}x" if landed and name != "landed" else "-"
            meets = ("yes" if v >= 2 * landed else "no") if landed and name != "landed" else "-"
            out.append(f"| {res['store']} | {name} | {v:,} | {res['failed'][name] or '-'} | {ratio} | {meets} |")
    out += ["", "Each rate tried (medians of its rounds):", "",
            "| store | server | offered/s | rounds passed | done check-ins/s | p99 ms | errors | server CPU (cores) |",
            "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for name, vs in res["verdicts"].items():
            for v in sorted(vs, key=lambda v: v["rate"]):
                out.append(f"| {res['store']} | {name} | {v['rate']:,} | {v['passed_rounds']}/{v['rounds']} | "
                           f"{v['checkins_per_s_median']:,.0f} | {v['p99_ms_median']:.1f} | {v['errors']} | "
                           f"{v['server_cpu_median']:.2f} |")
    loads = [r["loadavg"] for res in results for r in res["rows"]]
    lags = [r["client_lag_p99_ms"] for res in results for r in res["rows"]]
    clients = [r["client_cpu"] for res in results for r in res["rows"]]
    out.append(f"\nLoad average during the rounds: {min(loads):.1f} to {max(loads):.1f} ({os.cpu_count()} cores; "
               f"other agents' tests ran at the same time). Load generator: at most {max(clients):.2f} cores; the p99 "
               f"of how late a poll started after its scheduled time (a busy client, or the node's previous poll "
               f"still waiting on the server) {statistics.median(lags):.1f} ms (median of rounds), {max(lags):.1f} "
               "ms at worst.")
    return "\n".join(out) + "\n"


# -- overload: twice the sustained rate, with shedding and without (issue 12 item 7) -------------------

# Connections of the overload load generator: about one per simulated node in flight, as real nodes each have
# their own (with the 64 of the capacity rounds the queue would sit in the client, where the server cannot
# shed it).
OVERLOAD_POOL = 512
# Time in the overload steps runs TIME_SCALE times faster than on a fleet, so that a few thousand simulated
# nodes offer twice what one process sustains: the daemon's default poll interval (30 s) and the service's
# default Retry-After (10 s) become 3 s and 1 s, in the same ratio (a refused node misses a third of an interval).
TIME_SCALE = 10
OVERLOAD_INTERVAL_S = DaemonConfig().interval_s / TIME_SCALE
SHED_ON = {"EDGEREC_SYNC_SHED_RETRY_AFTER_S": str(max(1, ServiceConfig().shed_retry_after_s // TIME_SCALE))}
# The service's shedding switched off: every request waits for a thread, however long.
SHED_OFF = {"EDGEREC_SYNC_SHED_MAX_WAITING": "1000000", "EDGEREC_SYNC_SHED_MAX_WAIT_S": "3600"}


@dataclass
class OverloadStats:
    """One overload step, from the simulated nodes' side (seconds)."""

    accepted: list[float] = field(default_factory=list)  # check-ins answered 2xx, from their scheduled time
    accepted_sent: list[float] = field(default_factory=list)  # the same, from their first byte sent
    served: int = 0  # of those, answered before the step's end
    refused: list[float] = field(default_factory=list)  # check-ins answered 503/429, from their first byte sent
    refused_polls: int = 0  # timestamp.json polls refused (the node backs off as after a refused check-in)
    polls: list[float] = field(default_factory=list)  # timestamp.json polls answered 2xx
    retry_after: set[str] = field(default_factory=set)  # the Retry-After values seen
    attempts: int = 0  # check-ins sent, retries included
    errors: int = 0  # transport failures and answers other than 2xx, 503, 429
    error_samples: list[str] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)  # a refused node's wait before its next check-in
    lag: list[float] = field(default_factory=list)


async def _send(pool: Pool, out: OverloadStats, method: str, path: str, headers: dict[str, str],
                body: bytes = b"") -> tuple[int, float, str | None]:
    """One request: its status (0: transport failure), seconds from its first byte sent, its Retry-After."""
    async with pool.conn() as c:
        t0 = time.perf_counter()
        try:
            status, data = await c.request(method, path, headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            c.close()
            out.errors += 1
            out.error_samples.append(f"{path}: {type(exc).__name__}: {exc}")
            return 0, time.perf_counter() - t0, None
        took = time.perf_counter() - t0
        after = c.headers.get("retry-after")  # before the connection goes back to the pool
    if not 200 <= status < 300 and status not in OVERLOAD_STATUSES:
        out.errors += 1
        out.error_samples.append(f"{path}: HTTP {status} {data[:200]!r}")
    return status, took, after


async def overload_step(url: str, nodes: list[SimNode], rate: float, duration: float) -> OverloadStats:
    """``rate`` check-ins a second offered for ``duration`` s: each node checks in at its own phase every
    ``len(nodes) / rate`` s (a late one at once, so the offered rate holds), then polls ``timestamp.json``, as
    the daemon does. A node refused (503/429) waits what the daemon's :func:`next_delay` gives for its
    Retry-After (at least that, plus up to half again) and goes on from there."""
    pool = Pool([url], min(OVERLOAD_POOL, len(nodes)))
    out = OverloadStats()
    interval = len(nodes) / rate
    sign = Stats()
    for n in nodes:  # refused nodes try more often: past these, a node signs in the event loop
        n.presign(sign, int(duration // interval) + 2, "checkin")
    # The daemon's backoff runs at the steps' pace too (1 s doubling to 300 s on a fleet).
    base = DaemonConfig()
    config = DaemonConfig(interval_s=interval, retry_base_s=base.retry_base_s / TIME_SCALE,
                          max_backoff_s=base.max_backoff_s / TIME_SCALE)
    start = time.perf_counter() + 1.0
    end = start + duration
    polled = {"User-Agent": "bench"}

    async def run(node: SimNode, phase: float) -> None:
        due, misses = start + phase, 0
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            out.lag.append(time.perf_counter() - due)
            if node.signed:
                _, body, headers = node.signed.pop(0)
            else:
                body = json.dumps(node.report_doc()).encode()
                headers = node.sign(sign, "POST", "/api/v1/node/checkin", body)
            out.attempts += 1
            status, took, after = await _send(pool, out, "POST", "/api/v1/node/checkin", headers, body)
            if 200 <= status < 300:
                done = time.perf_counter()
                out.accepted.append(done - due)
                out.accepted_sent.append(took)
                out.served += done <= end
                status, took, after = await _send(pool, out, "GET", "/repository/metadata/timestamp.json", polled)
                if 200 <= status < 300:
                    out.polls.append(took)
                elif status in OVERLOAD_STATUSES:
                    out.refused_polls += 1
            elif status in OVERLOAD_STATUSES:
                out.refused.append(took)
            if status in OVERLOAD_STATUSES:
                out.retry_after.add(after or "none")
                misses += 1
                wait = next_delay(config, misses, retry_after_seconds(after))
                out.waits.append(wait)
                due = time.perf_counter() + wait
                continue
            misses = 0
            due += interval

    rnd = random.Random(13)
    await asyncio.gather(*(run(n, rnd.uniform(0, interval)) for n in nodes))
    for n in nodes:
        n.signed.clear()
    return out


def refusals_counted(url: str) -> float:
    """The service's own count of overload refusals (``/metrics``), to check the load generator's."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgerec_sync_refusals_total{") and 'reason="overloaded"' in line)


def overload_row(shedding: bool, url: str, proc: subprocess.Popen[bytes], nodes: list[SimNode], sustained: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    """One overload step at twice ``sustained`` against one server, measured from both sides."""
    counted0, cpu0 = refusals_counted(url), tree_cpu_seconds(proc.pid)
    t0 = time.perf_counter()
    st = asyncio.run(overload_step(url, nodes, 2 * sustained, args.overload_step))
    wall = time.perf_counter() - t0
    d = args.overload_step
    row = {"shedding": shedding, "offered_rate": 2 * sustained, "sustained": sustained, "nodes": len(nodes),
           "attempts_per_s": st.attempts / d, "served_per_s": st.served / d, "served_ratio": st.served / d / sustained,
           "accepted_p50_ms": pct(st.accepted, 0.5), "accepted_p99_ms": pct(st.accepted, 0.99),
           "accepted_sent_p99_ms": pct(st.accepted_sent, 0.99),
           "refused": len(st.refused), "refused_per_s": len(st.refused) / d, "refused_polls": st.refused_polls,
           "refusal_p50_ms": pct(st.refused, 0.5), "refusal_p90_ms": pct(st.refused, 0.9),
           "refusal_p99_ms": pct(st.refused, 0.99),
           "refused_at_once": sum(t < 0.1 for t in st.refused),
           "retry_after": sorted(st.retry_after), "wait_min_s": min(st.waits, default=float("nan")),
           "wait_max_s": max(st.waits, default=float("nan")),
           "poll_p99_ms": pct(st.polls, 0.99), "errors": st.errors, "error_samples": st.error_samples[:3],
           "service_counted": refusals_counted(url) - counted0, "client_lag_p99_ms": pct(st.lag, 0.99),
           "server_cpu": (tree_cpu_seconds(proc.pid) - cpu0) / wall, "loadavg": os.getloadavg()[0]}
    print(f"  shedding {'on' if shedding else 'off'}, {2 * sustained}/s offered: {row['served_per_s']:.0f} "
          f"check-ins/s served ({row['served_ratio']:.2f}x), p99 {row['accepted_p99_ms']:.0f} ms; {row['refused']} "
          f"refused, p99 {row['refusal_p99_ms']:.1f} ms; errors {row['errors']}", file=sys.stderr, flush=True)
    return row


def warm(url: str, nodes: list[SimNode], rate: int) -> None:
    """One check-in of each node at ``rate`` a second (answers not counted)."""
    asyncio.run(steady([url], nodes, len(nodes) / rate, len(nodes) / rate, "checkin"))
    for n in nodes:
        n.signed.clear()


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def service_env(variables: dict[str, str]) -> Iterator[None]:
    """``variables`` in this process's environment for the block: a :func:`serve` within passes them on (the
    service reads its config from ``EDGEREC_SYNC_*``)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def overload_store(store: str, args: argparse.Namespace) -> dict[str, Any]:
    """The check-in rate one process sustains (``--rate``, or searched as ``--capacity`` does), then twice that
    for ``--overload-step`` s with shedding off, then on (from a fresh process on the same data directory and
    database)."""
    work = Path(tempfile.mkdtemp(prefix=f"edgerec-overload-{store}-"))
    pg = LocalPostgres(fast=False).start() if store == "postgres" else None
    proc: subprocess.Popen[bytes] | None = None
    raise_fd_limit(4 * OVERLOAD_POOL)
    try:
        pub = generate_keypair(work, "publisher")
        (work / "ctr-1.edgepkg").write_bytes(build_demo_package("ctr", 1, load_signing_key(pub.private_path), seed=1))
        data_dir, token = init_with(None, work / "sync", pub.public_path, pg.url if pg else None)
        # Enrollment, the search and the first step on a process that does not shed: on a busy machine an
        # enrollment can wait past shed_max_wait_s with 16 at once.
        with service_env(SHED_OFF):
            proc, url = serve(data_dir, work / "shed-off.log", args.threads)
        nodes = asyncio.run(enroll_all([url], token, args.nodes))
        with AdminClient(Credentials(url, token)) as admin:
            admin.publish(work / "ctr-1.edgepkg", "stable")
            admin.rollout("ctr", 1, "stable", 100, [])
        # Not counted: each node's first status report is stored (later ones are heartbeats), which a single
        # round at the start would pay alone.
        print(f"[{store}] warm-up round", file=sys.stderr, flush=True)
        capacity_round("granian", url, proc, nodes, min(args.start, args.rate or args.start), args)
        verdicts: list[dict[str, Any]] = []
        sustained = args.rate
        if sustained is None:
            search = Search(args.start, args.precision, args.max_rate)
            while (rate := search.next_rate()) is not None:
                rows = [capacity_round("granian", url, proc, nodes, rate, args) for _ in range(args.rounds)]
                ok = sum(r["ok"] for r in rows) * 2 > len(rows)
                search.record(rate, ok)
                verdicts.append({"rate": rate, "ok": ok, "p99_ms_median": statistics.median(r["p99_ms"] for r in rows),
                                 "errors": sum(r["errors"] for r in rows)})
            sustained = search.passed
        if not sustained:
            raise SystemExit(f"[{store}] no rate from {args.start}/s up was sustained")
        need = round(2 * sustained * OVERLOAD_INTERVAL_S)
        print(f"[{store}] sustained {sustained}/s; enrolling {max(0, need - len(nodes))} more nodes to offer "
              f"{2 * sustained}/s for {args.overload_step:g} s", file=sys.stderr, flush=True)
        if need > len(nodes):
            more = asyncio.run(enroll_all([url], token, need - len(nodes)))
            warm(url, more, sustained)  # their first status reports are stored, unlike later ones
            nodes += more
        nodes = nodes[:need]
        off = overload_row(False, url, proc, nodes, sustained, args)
        stop_server(proc)
        proc = None
        with service_env(SHED_ON):
            proc, url = serve(data_dir, work / "shed-on.log", args.threads)
        warm(url, nodes, sustained)  # a fresh process: what it caches per node, as the first one had
        rows = [overload_row(True, url, proc, nodes, sustained, args), off]
        return {"store": store, "search_nodes": args.nodes, "sustained": sustained, "searched": args.rate is None,
                "verdicts": verdicts, "rows": rows}
    finally:
        if proc is not None:
            stop_server(proc)
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def render_overload(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    res0 = results[0]
    how = (f"searched as the capacity section does (doubling from {args.start}/s, then bisection to "
           f"{args.precision:.0%}; {args.rounds} round(s) of {args.step:g} s per rate with {res0['search_nodes']:,} "
           "nodes and shedding off, after one warm-up round; a round passes with p99 <= 100 ms and no error)"
           if res0["searched"] else "given with `--rate`")
    out = [header("Sync service under overload: twice the sustained check-in rate, shedding on and off").rstrip()
           + "\n",
           "Simulated nodes (RFC 9421 signed check-ins, each with its own nonce, then a TUF `timestamp.json` poll, "
           "as the daemon does) against one `edgerec sync serve` process (granian, one worker, "
           f"{args.threads} request threads), SQLite or PostgreSQL as the store column says, on loopback, nothing "
           f"pinned. The check-in rate it sustains is {how}. Then twice that is offered for "
           f"{args.overload_step:g} s: each node checks in every {OVERLOAD_INTERVAL_S:g} s at its own phase (as "
           f"many nodes as that takes), with shedding off (`{' '.join(f'{k}={v}' for k, v in SHED_OFF.items())}`), "
           "then, from a fresh process on the same database, with shedding on (the defaults: at most 64 requests "
           "wait for a thread, none longer than 0.5 s, the rest get 503 at once). "
           f"Time runs {TIME_SCALE}x "
           "faster than on a fleet so that a few thousand nodes make the load: the daemon's 30 s poll interval "
           f"is {OVERLOAD_INTERVAL_S:g} s, its backoff 0.1 s doubling to 30 s, and the service's Retry-After 10 s "
           f"is {SHED_ON['EDGEREC_SYNC_SHED_RETRY_AFTER_S']} s "
           f"(`{' '.join(f'{k}={v}' for k, v in SHED_ON.items())}`). A refused node (check-in or poll) waits what "
           "the daemon's `next_delay` gives (Retry-After plus 0-50 % jitter) and goes on from there; the others "
           f"keep their schedule. The load generator holds up to {OVERLOAD_POOL} connections, so the queue forms "
           "at the server, which can refuse it. Served: check-ins answered 2xx before the step's end, a "
           "second. Accepted latency is open-loop (from a check-in's scheduled time, so a late load generator "
           "counts: its own lag is listed), and from its first byte sent; a refusal's from its first byte sent. "
           "Targets (issue 12): served >= 0.9x the sustained rate, p99 of what is accepted <= 1 s, refusals at "
           "once.\n",
           "| store | shedding | nodes | sustained/s | offered/s | check-ins sent/s (retries incl.) | served/s | "
           "served / sustained | accepted p50 / p99 ms | accepted p99 ms from sent | load generator lag p99 ms | "
           "refused check-ins | refused < 100 ms | refusal p50 / p90 / p99 ms | refused polls | errors | "
           "service counted | server CPU | served >= 0.9x, p99 <= 1 s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            ok = r["served_ratio"] >= 0.9 and r["accepted_p99_ms"] <= 1000 and r["errors"] == 0
            at_once = f"{r['refused_at_once'] / r['refused']:.0%}" if r["refused"] else "-"
            refusal = (f"{r['refusal_p50_ms']:.1f} / {r['refusal_p90_ms']:.1f} / {r['refusal_p99_ms']:.1f}"
                       if r["refused"] else "-")
            out.append(f"| {res['store']} | {'on' if r['shedding'] else 'off'} | {r['nodes']:,} | "
                       f"{r['sustained']:,} | {r['offered_rate']:,} | {r['attempts_per_s']:,.0f} | "
                       f"{r['served_per_s']:,.0f} | {r['served_ratio']:.2f}x | {r['accepted_p50_ms']:.0f} / "
                       f"{r['accepted_p99_ms']:,.0f} | {r['accepted_sent_p99_ms']:,.0f} | "
                       f"{r['client_lag_p99_ms']:,.0f} | {r['refused']:,} | {at_once} | {refusal} | "
                       f"{r['refused_polls']:,} | "
                       f"{r['errors']} | {r['service_counted']:,.0f} | {r['server_cpu']:.2f} | "
                       f"{'yes' if ok else 'NO'} |")
    tried = [f"{v['rate']}/s {'pass' if v['ok'] else 'fail'} (p99 {v['p99_ms_median']:.0f} ms)"
             for res in results for v in sorted(res["verdicts"], key=lambda v: v["rate"])]
    if tried:
        out.append("\nRates tried in the search: " + ", ".join(tried) + ".")
    waits = [(r["wait_min_s"], r["wait_max_s"]) for res in results for r in res["rows"] if r["refused"]]
    loads = [r["loadavg"] for res in results for r in res["rows"]]
    out.append("\nRefused nodes waited " + ", ".join(f"{lo:.2f}-{hi:.2f} s" for lo, hi in waits)
               + f" before trying again (Retry-After {SHED_ON['EDGEREC_SYNC_SHED_RETRY_AFTER_S']} s). "
               f"Load average at the end of the steps: {min(loads):.1f} "
               f"to {max(loads):.1f} ({os.cpu_count()} cores, shared with other agents' work). \"Service "
               "counted\": the service's own `edgerec_sync_refusals_total{reason=\"overloaded\"}` over the step "
               "(check-ins and polls).")
    return "\n".join(out) + "\n"


# -- --scale: stateless replicas behind nginx over one PostgreSQL -----------------------------


def split_cpus(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """``--client-cpus`` and ``--server-cpus`` as sets: the load generator on its CPUs, the servers on the rest
    (or on all of them); nothing pinned with one CPU or ``none``."""
    cpus = os.sched_getaffinity(0)
    if args.client_cpus == "none" or len(cpus) < 2:
        args.client_cpus, args.server_cpus = set(), cpus
        return
    args.client_cpus = {max(cpus)} if args.client_cpus == "last" else {int(c) for c in args.client_cpus.split(",")}
    args.server_cpus = cpus if args.server_cpus == "all" else cpus - args.client_cpus
    if not args.server_cpus or not args.client_cpus <= cpus:
        ap.error("--client-cpus: leave the servers at least one of this process's CPUs")


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin a started process and its children (nginx's master and workers: one thread each) to ``cpus``."""
    if cpus:
        for p in [pid, *child_pids(pid)]:
            os.sched_setaffinity(p, cpus)


PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")


def pg_counters(dsn: str) -> dict[str, int]:
    """This database's transaction and row counters (pg_stat_database) and the cluster's WAL bytes (pg_stat_wal).

    A backend reports its counts when it goes idle, at most once a second: read them a second after the load."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
        wal = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    assert row is not None and wal is not None
    return {**dict(zip(PG_COUNTERS, map(int, row), strict=True)), "wal_bytes": int(wal[0])}


def wrk(url: str, cpus: set[int], seconds: int = 10, connections: int = 32) -> dict[str, Any]:
    """``wrk -t1 -cN -dS --latency URL`` (on ``cpus``): requests a second, p50/p99 ms, non-2xx and socket errors."""
    pin = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []
    out = subprocess.run([*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return float("nan")
        return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"url": url, "requests_per_s": float(rps[1]) if rps else float("nan"),
            "requests": int(total[1]) if total else 0, "p50_ms": ms("50"), "p99_ms": ms("99"),
            "errors": (int(bad[1]) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0),
            "connections": connections, "seconds": seconds}


@dataclass
class ScaleRig:
    """What ``--scale`` runs: replicas (each its own key file), the nginx in front of them, PostgreSQL."""

    pg: LocalPostgres
    replicas: list[Replica]
    proxies: list[Nginx] = field(default_factory=list)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each replica (process and workers), every nginx together, and PostgreSQL."""
        postmaster = int((self.pg.dir / "data" / "postmaster.pid").read_text().split()[0])
        out = {f"replica {i + 1}": tree_cpu_seconds(r.proc.pid) for i, r in enumerate(self.replicas) if r.proc}
        out["nginx"] = sum(tree_cpu_seconds(p.proc.pid) for p in self.proxies)
        out["postgres"] = tree_cpu_seconds(postmaster) + cpu_seconds(postmaster, reaped=True) - cpu_seconds(postmaster)
        return out


def scale_round(name: str, url: str, proc: subprocess.Popen[bytes], rig: ScaleRig, nodes: list[SimNode], rate: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """:func:`capacity_round` with each process's CPU seconds and the database's counters around it."""
    cpu0, db0 = rig.cpu(), pg_counters(rig.pg.url.replace("+psycopg", ""))
    row = capacity_round(name, url, proc, nodes, rate, args)
    time.sleep(1.1)  # the backends' counters reach pg_stat_database once they are idle (at most once a second)
    row["cpu_s"] = {k: v - cpu0[k] for k, v in rig.cpu().items()}
    row["db"] = {k: v - db0[k] for k, v in pg_counters(rig.pg.url.replace("+psycopg", "")).items()}
    row["checkins"] = round(row["checkins_per_s"] * args.step)
    return row


def run_scale(args: argparse.Namespace) -> dict[str, Any]:
    """Check-ins a second sustained by one replica directly, one behind nginx and ``--replicas`` behind nginx,
    all over one PostgreSQL, searched side by side (:class:`Search`, rounds in turns as :func:`capacity_store`);
    then ``timestamp.json`` requests a second from the static origin and through the replicas' nginx (wrk)."""
    nginx = find_nginx()
    if nginx is None or shutil.which("wrk") is None:
        raise SystemExit("--scale needs nginx (on PATH, in /usr/sbin, or $EDGEREC_TEST_NGINX) and wrk on PATH")
    work = Path(tempfile.mkdtemp(prefix="edgerec-scale-"))
    everything = os.sched_getaffinity(0)
    pg = LocalPostgres(fast=False).start()
    rig = ScaleRig(pg, [])
    origin: Nginx | None = None
    try:
        pub = generate_keypair(work, "publisher")
        (work / "ctr-1.edgepkg").write_bytes(build_demo_package("ctr", 1, load_signing_key(pub.private_path),
                                                                seed=1))
        init = init_service(work / "admin" / "data", work / "admin" / "root-keys",
                            [load_verify_key(pub.public_path)], pg.url)
        keys = [work / f"replica{i + 1}" / "replica.key" for i in range(args.replicas)]
        for k in keys:
            k.parent.mkdir()
        move_to_database(init.data_dir, pg.url, keys[0])
        db = Database(pg.url)
        for k in keys[1:]:
            add_replica_key(db, keys[0], k)
        db.dispose()
        # the service's own defaults (maintenance every 30 s), not the tests' 1 s; threads as --threads
        env = {"EDGEREC_SYNC_THREADS": str(args.threads), "EDGEREC_SYNC_MAINTENANCE_INTERVAL_S": "30"}
        for k in keys:
            rig.replicas.append(Replica(pg.url, k, k.parent / "work", free_port(), k.parent / "serve.log",
                                        args.server_cpus if args.client_cpus else None, env).start())
        fronts: list[int] = []
        for n in (1, args.replicas):
            fronts.append(free_port())
            snippet = sync_config([r.port for r in rig.replicas[:n]], fronts[-1], work / f"cache{n}")
            rig.proxies.append(Nginx(nginx, snippet, [fronts[-1]]))
            pin_tree(rig.proxies[-1].proc.pid, args.server_cpus if args.client_cpus else set())
        direct = rig.replicas[0].url
        # 4 at a time: a replica pinned to one core sheds 16 (503 after 0.5 s waiting), and this is set-up
        nodes = asyncio.run(enroll_all([direct], init.admin_token, args.nodes, concurrency=4))
        with AdminClient(Credentials(direct, init.admin_token)) as admin:
            admin.publish(work / "ctr-1.edgepkg", "stable")
            admin.rollout("ctr", 1, "stable", 100, [])
        # every node's first status report is stored (later ones are heartbeats): sent once here, not in a round
        asyncio.run(steady([direct], nodes, args.nodes / 100, args.nodes / 100, "checkin"))
        for n in nodes:
            n.signed.clear()
        first = rig.replicas[0].proc
        assert first is not None
        setups: dict[str, tuple[str, subprocess.Popen[bytes]]] = {
            "1 replica, direct": (direct, first),
            "1 replica, nginx": (f"http://127.0.0.1:{fronts[0]}", rig.proxies[0].proc),
            f"{args.replicas} replicas, nginx": (f"http://127.0.0.1:{fronts[1]}", rig.proxies[1].proc)}
        if args.client_cpus:  # PostgreSQL keeps every CPU; the replicas and nginx were put on theirs
            os.sched_setaffinity(0, args.client_cpus)
        rows, verdicts, searches = search_side_by_side(
            list(setups), args, "[scale]",
            lambda name, rate: scale_round(name, *setups[name], rig, nodes, rate, args))
        # timestamp.json: the static origin (docs' edgerec-origin.conf over the files init wrote: older than the
        # database's, as large), then the
        # replicas' nginx (no-cache there: every request reaches a replica and the database)
        port = free_port()
        snippet = doc_config("edgerec-origin.conf").replace("listen 127.0.0.1:8480;", f"listen 127.0.0.1:{port};")
        origin = Nginx(nginx, snippet.replace("/var/lib/edgerec/sync/repository", str(init.data_dir / "repository")),
                       [port])
        pin_tree(origin.proc.pid, args.server_cpus if args.client_cpus else set())
        cpu0 = tree_cpu_seconds(origin.proc.pid)
        stamps = {"static origin (nginx, a file)": wrk(f"http://127.0.0.1:{port}/metadata/timestamp.json",
                                                       args.client_cpus)}
        stamps["static origin (nginx, a file)"]["cpu_s"] = {"nginx": tree_cpu_seconds(origin.proc.pid) - cpu0}
        rig_cpu0 = rig.cpu()
        name = f"{args.replicas} replicas, nginx (no-cache)"
        # 8 connections: 32 make every replica shed (4 threads each), which measures the 503s
        stamps[name] = wrk(f"http://127.0.0.1:{fronts[1]}/repository/metadata/timestamp.json", args.client_cpus,
                           connections=8)
        stamps[name]["cpu_s"] = {k: v - rig_cpu0[k] for k, v in rig.cpu().items()}
        return {"rows": rows, "verdicts": verdicts, "sustained": {n: s.passed for n, s in searches.items()},
                "failed": {n: s.failed for n, s in searches.items()}, "nodes": args.nodes,
                "replicas": args.replicas, "timestamp": stamps}
    finally:
        os.sched_setaffinity(0, everything)
        for proxy in [*rig.proxies, *([origin] if origin else [])]:
            proxy.stop()
        for r in rig.replicas:
            r.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def at_sustained(res: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The rounds of setup ``name`` at its sustained rate (at its lowest rate tried when none passed)."""
    mine = [r for r in res["rows"] if r["server"] == name]
    rate = res["sustained"][name] or min(r["rate"] for r in mine)
    return [r for r in mine if r["rate"] == rate]


def per_checkin(rows: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
    """Median over ``rows`` of ``get(row)`` divided by that round's check-ins."""
    return statistics.median(get(r) / max(1, int(r["checkins"])) for r in rows)


def render_scale(res: dict[str, Any], args: argparse.Namespace) -> str:
    n = res["replicas"]
    pinning = (f"the load generator and wrk pinned to CPU {sorted(args.client_cpus)}, the replicas (`taskset`, "
               f"inherited by their workers and threads) and nginx (master and worker, `sched_setaffinity`) to CPU "
               f"{sorted(args.server_cpus)}; PostgreSQL unpinned" if args.client_cpus else "nothing pinned")
    names = list(res["sustained"])
    base = res["sustained"][names[0]] or 0
    out = [header(f"Sync service: {n} stateless replicas behind nginx over one PostgreSQL").rstrip() + "\n",
           f"{res['nodes']:,} simulated nodes check in and poll `timestamp.json` as in the capacity section "
           "(open-loop latency, RFC 9421 signed ahead, a round passes with no error, p99 <= 100 ms and >= 97 % of "
           "the offered check-ins done). One local PostgreSQL cluster (default durability) holds everything: "
           "`edgerec admin init`, `sync migrate --to-database`, one replica key per replica; each replica is "
           f"`edgerec sync serve --key-file` (granian, one worker, {args.threads} threads, maintenance every 30 s). "
           f"Three setups on that one database and the same enrolled nodes: replica 1 directly, replica 1 behind "
           f"nginx, and {n} replicas behind nginx (docs/operations.md's `edgerec-sync.conf`, one nginx worker; "
           "`timestamp.json` is `no-cache` there, so every poll reaches a replica). Each setup's rate is searched on "
           f"its own (doubling from {args.start}/s, then bisection to {args.precision:.0%}), {args.rounds} rounds of "
           f"{args.step:g} s per rate and setup, the setups taking turns round by round in alternating order. "
           f"Machine: {pinning}. CPU per check-in: each process's CPU seconds over the round divided by the "
           "check-ins done (the `timestamp.json` poll that goes with each included); database: "
           "`pg_stat_database` and `pg_stat_wal` deltas over the round.\n",
           "| setup | sustained check-ins/s | lowest failed | ratio to 1 direct | >= 1.5x | replica CPU us/check-in "
           "| nginx us | PostgreSQL us | replica cores | nginx cores | PostgreSQL cores | load generator cores | "
           "transactions/check-in | rows written/check-in | WAL bytes/check-in |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        v, rs = res["sustained"][name], at_sustained(res, name)
        reps = [k for k in rs[0]["cpu_s"] if k.startswith("replica")]
        ratio = f"{v / base:.2f}x" if base and name != names[0] else "-"
        meets = ("yes" if v >= 1.5 * base else "no") if name == names[-1] and base else "-"

        def cores(key: str, rows: list[dict[str, Any]] = rs) -> str:
            return f"{statistics.median(r['cpu_s'][key] for r in rows) / args.step:.2f}"

        def replicas_s(r: dict[str, Any], keys: list[str] = reps) -> float:
            return float(sum(r["cpu_s"][k] for k in keys))

        out.append(
            f"| {name} | {v:,} | {res['failed'][name] or '-'} | {ratio} | {meets} | "
            f"{per_checkin(rs, replicas_s) * 1e6:,.0f} | "
            f"{per_checkin(rs, lambda r: r['cpu_s']['nginx']) * 1e6:,.0f} | "
            f"{per_checkin(rs, lambda r: r['cpu_s']['postgres']) * 1e6:,.0f} | "
            f"{' + '.join(cores(k) for k in reps)} | {cores('nginx')} | {cores('postgres')} | "
            f"{statistics.median(r['client_cpu'] for r in rs):.2f} | "
            f"{per_checkin(rs, lambda r: r['db']['xact_commit'] + r['db']['xact_rollback']):.2f} | "
            f"{per_checkin(rs, lambda r: sum(r['db'][k] for k in PG_COUNTERS[2:])):.2f} | "
            f"{per_checkin(rs, lambda r: r['db']['wal_bytes']):,.0f} |")
    out += ["", "Each rate tried (medians of its rounds):", "",
            "| setup | offered/s | rounds passed | done check-ins/s | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name, vs in res["verdicts"].items():
        for v in sorted(vs, key=lambda v: v["rate"]):
            out.append(f"| {name} | {v['rate']:,} | {v['passed_rounds']}/{v['rounds']} | "
                       f"{v['checkins_per_s_median']:,.0f} | {v['p99_ms_median']:.1f} | {v['errors']} |")
    out += ["", "`timestamp.json` alone (`wrk -t1 -cN -d10s --latency`, wrk on the load generator's CPU):", "",
            "| origin | connections | requests/s | p50 ms | p99 ms | errors (non-2xx, socket) | CPU us/request |",
            "|---|---|---|---|---|---|---|"]
    for name, w in res["timestamp"].items():
        us = {k: v / max(1, w["requests"]) * 1e6 for k, v in w["cpu_s"].items()}
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in us.items() if v >= 0.5)
        out.append(f"| {name} | {w['connections']} | {w['requests_per_s']:,.0f} | {w['p50_ms']:.2f} | "
                   f"{w['p99_ms']:.2f} | {w['errors']} | {sum(us.values()):,.0f} ({parts}) |")
    loads = [r["loadavg"] for r in res["rows"]]
    out.append(f"\nLoad average during the rounds: {min(loads):.1f} to {max(loads):.1f} ({os.cpu_count()} cores; "
               "anything above the benchmark's own processes is other load).")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--converge-nodes", type=int, default=200)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=4,
                    help="EDGEREC_SYNC_THREADS: database connections per process (the landed server: its threads)")
    ap.add_argument("--protocols", default="checkin,separate",
                    help="comma-separated: checkin (one signed check-in per poll, as the daemon does) and/or "
                         "separate (a signed assignments GET and a signed report POST)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--capacity", action="store_true",
                    help="Instead: check-ins a second sustained (p99 <= 100 ms, no error), searched by bisection, "
                         "against the landed server of --before, side by side.")
    ap.add_argument("--before", help="The landed edgerec: a source tree (DIR/edgerec/{sdk,sync}) or a git "
                                     "revision of this repository (exported with git archive).")
    ap.add_argument("--start", type=int, default=200, help="First offered check-ins a second (--capacity).")
    ap.add_argument("--max-rate", type=int, default=6400, help="Highest offered rate tried (--capacity).")
    ap.add_argument("--precision", type=float, default=0.05, help="Bisection stops within this fraction.")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds per rate and server (--capacity).")
    ap.add_argument("--step", type=float, default=10.0, help="Seconds per round (--capacity).")
    ap.add_argument("--client-cpus", default="last",
                    help="CPUs of the load generator (--capacity): 'last' (the highest-numbered one), a comma list, "
                         "or 'none' (no pinning).")
    ap.add_argument("--server-cpus", choices=["rest", "all"], default="rest",
                    help="CPUs of the servers (--capacity): those the load generator does not have, or all of them "
                         "(they may then run beside the load generator).")
    ap.add_argument("--overload", action="store_true",
                    help="Instead: twice the sustained check-in rate (--rate, or searched as --capacity does) with "
                         "shedding off, then on; nodes honour Retry-After.")
    ap.add_argument("--rate", type=int, help="Sustained check-ins a second (--overload); default: searched.")
    ap.add_argument("--overload-step", type=float, default=30.0, help="Seconds of each overload step.")
    ap.add_argument("--scale", action="store_true",
                    help="Instead: check-ins a second sustained by one replica directly, one behind nginx and "
                         "--replicas behind nginx over one PostgreSQL, side by side; timestamp.json through nginx.")
    ap.add_argument("--replicas", type=int, default=2, help="Replicas behind nginx (--scale).")
    args = ap.parse_args()
    if args.scale and args.replicas < 2:
        ap.error("--replicas: at least 2")
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]

    def report(section: str, results: Any, render_section: Callable[[Any, argparse.Namespace], str]) -> None:
        print(json.dumps(results, indent=2))
        if not args.no_write:
            write_section(section, render_section(results, args))

    if args.overload:
        report("sync_overload", [overload_store(s, args) for s in stores], render_overload)
        return
    if args.scale:
        split_cpus(args, ap)
        report("sync_scale", run_scale(args), render_scale)
        return
    if args.capacity:
        split_cpus(args, ap)
        report("sync_capacity", [capacity_store(s, args) for s in stores], render_capacity)
        return
    args.protocols = [p for p in args.protocols.split(",") if p]
    if not args.protocols or set(args.protocols) - set(PROTOCOLS):
        ap.error(f"--protocols: choose from {', '.join(PROTOCOLS)}")
    report("sync", [run_store(s, args) for s in stores], render)

if __name__ == "__main__":
    main()
