"""What one check-in costs inside the sync service: CPU time and SQL statements, no HTTP server.

    python bench/sync_checkin.py [--store sqlite|postgres|both] [--nodes 200] [--requests 3000]
                                 [--rounds 5] [--profile N] [--threads 1]

Builds a service in a temporary data directory (SQLite, or a local
PostgreSQL cluster), enrolls ``--nodes`` nodes, publishes a model and rolls
it out to all of them, then presigns ``--requests`` check-ins (RFC 9421, each
with its own nonce; status reports that repeat the node's last one, as a
steady fleet sends) and hands them to the Flask app the server runs (without
the HTTP front, :mod:`edgerec.sdk.wsgi_front`) one after the other on
``--threads`` threads, ``--rounds`` times. Reported: CPU
microseconds per check-in in this process (median and minimum of the rounds;
PostgreSQL's own CPU is not in it), wall microseconds (median), and SQL
statements per check-in (counted on the engine in a round of their own:
what goes through a cursor, so BEGIN on SQLite but not COMMIT) and, on
PostgreSQL, the round trips a check-in waits for (libpq's trace); then the
CPU of the ``timestamp.json`` poll a node sends with each check-in. ``--profile N`` prints cProfile's N most expensive
functions (cumulative) of one run. This isolates the service's own cost
from the HTTP server and the load generator, which share the machine in
``bench/sync.py --capacity``; it is what the check-in optimisations were
measured with (docs/benchmarks.md, "Check-in cost").
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import event
from support.postgres import LocalPostgres
from werkzeug.test import EnvironBuilder

from edgerec.sdk.keys import generate_keypair, load_signing_key, load_verify_key, public_pem
from edgerec.sdk.testing import build_demo_package
from edgerec.sync.protocol.httpsig import RequestSigner
from edgerec.sync.service.admin_init import init_service
from edgerec.sync.service.app import create_app
from edgerec.sync.service.config import ServiceConfig
from edgerec.sync.service.core import SyncService

PATH = "/api/v1/node/checkin"


def report(installed: int) -> bytes:
    return json.dumps({"report_id": os.urandom(12).hex(), "kind": "status", "time": time.time(), "agent": "bench",
                       "health": "ok", "accelerator": "cpu",
                       "models": [{"name": "ctr", "installed_version": installed, "state": "serving",
                                   "accelerator": "cpu"}]}).encode()


def environ(signer: RequestSigner, body: bytes) -> dict[str, Any]:
    headers = signer.sign("POST", "http://edgerec" + PATH, body, {"Content-Type": "application/json"})
    return EnvironBuilder(path=PATH, method="POST", data=body, headers=headers.items()).get_environ()


def setup(work: Path, db_url: str | None, nodes: int) -> tuple[SyncService, list[RequestSigner]]:
    pub = generate_keypair(work, "publisher")
    init = init_service(work / "data", work / "root-keys", [load_verify_key(pub.public_path)], db_url)
    service = SyncService.open(init.data_dir, db_url, ServiceConfig())
    signers = []
    for i in range(nodes):
        key = Ed25519PrivateKey.generate()
        token = service.create_enroll_token([], 3600)["token"]
        out = service.enroll(token, public_pem(key.public_key()).decode(),
                             public_pem(X25519PrivateKey.generate().public_key()).decode(), f"n{i}")
        signers.append(RequestSigner(out.node_id, key))
    pkg = work / "ctr-1.edgepkg"
    pkg.write_bytes(build_demo_package("ctr", 1, load_signing_key(pub.private_path), seed=1))
    service.publish([pkg.read_bytes()], "stable")
    service.rollout("ctr", 1, "stable", 100, [])
    return service, signers


def run(app: Any, envs: list[dict[str, Any]], threads: int) -> list[str]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    def worker(part: list[dict[str, Any]]) -> None:
        for env in part:
            for _ in app(env, start_response):
                pass

    if threads == 1:  # on this thread, where cProfile sees it
        worker(envs)
        return statuses
    parts = [envs[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


@contextlib.contextmanager
def round_trips(engine: Any) -> Iterator[list[int]]:
    """Waits on PostgreSQL: the ReadyForQuery messages in libpq's protocol trace of every connection used.

    Each statement, BEGIN and COMMIT ends with one, so this counts what a check-in waits for.
    """
    found = [0]
    if engine is None:
        yield found
        return
    with tempfile.TemporaryFile("w+") as trace:

        def on(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.pgconn.trace(trace.fileno())

        def off(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.pgconn.untrace()

        event.listen(engine, "checkout", on)
        event.listen(engine, "checkin", off)
        try:
            yield found
        finally:
            event.remove(engine, "checkout", on)
            event.remove(engine, "checkin", off)
            trace.seek(0)
            found[0] = sum("ReadyForQuery" in line for line in trace)


def measure(store: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"edgerec-checkin-{store}-"))
    pg = LocalPostgres(fast=False).start() if store == "postgres" else None
    try:
        service, signers = setup(work, pg.url if pg else None, args.nodes)
        app = create_app(service).wsgi_app
        # one warm-up round per node: its first status report is stored, the rest repeat it
        run(app, [environ(s, report(1)) for s in signers], 1)
        statements = [0]

        def count(*_: Any) -> None:
            statements[0] += 1

        # statements (and, on PostgreSQL, round trips) counted in a round of their own: the listeners
        # are not in the timed rounds
        event.listen(service.db.engine, "before_cursor_execute", count)
        with round_trips(service.db.engine if pg else None) as trips:
            run(app, [environ(s, report(1)) for s in signers], 1)
        event.remove(service.db.engine, "before_cursor_execute", count)
        cpu_us, wall_us = [], []
        prof = cProfile.Profile() if args.profile else None
        for _ in range(args.rounds):
            envs = [environ(signers[i % len(signers)], report(1)) for i in range(args.requests)]
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            statuses = run(app, envs, args.threads)
            if prof:
                prof.disable()
            cpu_us.append((time.process_time() - c0) / args.requests * 1e6)
            wall_us.append((time.perf_counter() - w0) / args.requests * 1e6)
            bad = [s for s in statuses if not s.startswith("200")]
            if bad:
                raise SystemExit(f"{len(bad)} check-ins failed: {bad[:3]}")
        # the TUF timestamp poll a node sends with each check-in
        poll_us = []
        for _ in range(args.rounds):
            envs = [EnvironBuilder(path="/repository/metadata/timestamp.json").get_environ()
                    for _ in range(args.requests)]
            c0 = time.process_time()
            statuses = run(app, envs, args.threads)
            poll_us.append((time.process_time() - c0) / args.requests * 1e6)
            if any(not s.startswith("200") for s in statuses):
                raise SystemExit(f"timestamp.json failed: {statuses[:3]}")
        out = {"store": store, "requests": args.requests, "rounds": args.rounds,
               "timestamp_cpu_us_median": statistics.median(poll_us),
               "cpu_us_median": statistics.median(cpu_us), "cpu_us_min": min(cpu_us),
               "wall_us_median": statistics.median(wall_us), "statements": statements[0] / len(signers),
               **({"round_trips": trips[0] / len(signers)} if pg else {}),
               "loadavg": os.getloadavg()[0]}
        if prof:
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(args.profile)
            out["profile"] = text.getvalue()
        service.close()
        return out
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of --requests; medians and minimum")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    args = ap.parse_args()
    for store in (["sqlite", "postgres"] if args.store == "both" else [args.store]):
        r = measure(store, args)
        print(r.pop("profile", ""), file=sys.stderr)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
