"""Edge server: CPU instructions per request, counted by valgrind's callgrind.

On a shared machine throughput and latency move with the other load by tens of
percent (bench/edge_server.py compares systems side by side for that reason);
the instructions a request executes do not, so they show a change to the
request path's cost within a percent or so. This builds the edge server's WSGI app in process
in the measured configuration of bench/edge_server.py (every feature on:
metrics, request ids and trace context, the JSON access log, batching, an A/B
experiment, user profiles behind the feature cache) and counts, under
callgrind, only the requests it sends after a warm-up: single-row infer (Open
Inference Protocol JSON) and ``/v1/rank`` with 100 candidates. ``--before DIR``
counts an older source tree (``DIR/edgerec/{sdk,edge_server}``, e.g. from
``git archive``) the same way, for a before/after.

The count covers the app (middleware, routes, validation, the ONNX Runtime
call), not granian's HTTP work or the kernel's. Writes the
``edge_server_instructions`` section of docs/benchmarks.md; raw numbers go to
build/bench/edge_server_instructions.json.

    python bench/edge_server_instructions.py [--requests 300] [--before DIR]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed import OptExcInfo

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "bench"
CASES = {"infer": "single-row infer", "rank": "rank, 100 candidates"}
WARMUP = 200


def assets(work: Path) -> None:
    """The packages (two versions: the experiment's variants), the publisher key and the settings."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import edge_server as bench  # bench/edge_server.py: the same models, bodies and settings
    from edgerec.sdk.keys import public_pem

    key = Ed25519PrivateKey.generate()
    (work / "publisher.pub").write_bytes(public_pem(key.public_key()))
    models = work / "light"
    models.mkdir()
    bench.package(bench.ctr_onnx(**bench.LIGHT), bench.LIGHT, "ctr", 1, key, models / "ctr-1.edgepkg")
    bench.package(bench.ctr_onnx(**bench.LIGHT, seed=1), bench.LIGHT, "ctr", 2, key, models / "ctr-2.edgepkg")
    bench.features_config(work, bench.LIGHT["users"])


def child(case: str, requests: int, work: Path) -> None:
    """Serve ``requests`` requests of ``case`` inside functools.reduce, the only calls callgrind counts."""
    import edge_server as bench
    from edgerec.edge_server.app import create_app
    from edgerec.edge_server.config import ServerConfig
    from edgerec.sdk.json_logs import configure_logging

    settings = ServerConfig.file_values(work / "edgerec.toml")
    config = ServerConfig(**settings, model_dir=work / "light", trusted_keys=(work / "publisher.pub",), threads=1,
                          log_flush_ms=bench.LOG_FLUSH_MS, max_batch=32, max_delay_ms=2.0)
    configure_logging("info", open(os.devnull, "w"), flush_ms=bench.LOG_FLUSH_MS)  # noqa: SIM115 - to the end
    app = create_app(config).wsgi_app
    path, text = bench.bodies("edgerec")[case]
    body = text.encode()

    def unused_write(_: bytes) -> None:  # WSGI's legacy write(): the app returns its body instead
        raise RuntimeError("the app called write()")

    def one(_: None, __: int) -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(body)), "HTTP_TRACEPARENT": bench.TRACEPARENT, "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(body)}
        status: list[str] = []

        def start_response(s: str, h: list[tuple[str, str]], e: OptExcInfo | None = None) -> Callable[[bytes], object]:
            status.append(s)
            return unused_write

        b"".join(app(environ, start_response))
        if not status[0].startswith("200"):
            raise SystemExit(f"{case}: {status[0]}")

    for i in range(WARMUP):  # not counted: outside functools.reduce
        one(None, i)
    functools.reduce(one, range(requests), None)


def count(case: str, requests: int, work: Path, tree: Path | None) -> float:
    """Instructions per request of ``case`` (this source tree, or ``tree``'s)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "valgrind.log"
        cmd = ["valgrind", "--tool=callgrind", "--toggle-collect=functools_reduce", f"--log-file={log}",
               f"--callgrind-out-file={tmp}/callgrind.out", sys.executable, __file__, "--child", case,
               str(requests), str(work)]
        done = subprocess.run(cmd, check=False, env=env, cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=3600)
        text = log.read_text() if log.exists() else ""
        found = re.search(r"Collected : (\d+)", text)
        if done.returncode != 0 or not found:
            raise RuntimeError(f"{case}: {done.stderr[-2000:]}{text[-1000:]}")
    return int(found[1]) / requests


def report(res: dict[str, Any]) -> str:
    from _report import header

    before = "before" in res["counts"]
    lines = [header("Edge server: instructions per request (bench/edge_server_instructions.py)", res["run"])]
    lines.append(
        f"The edge server's WSGI app in process, configured as bench/edge_server.py measures it (every feature "
        f"on), counted by valgrind's callgrind over {res['requests']} requests after {WARMUP} of warm-up: the app's "
        "own instructions per request (middleware, route, validation, the ONNX Runtime call), without granian's "
        "HTTP work or the kernel's. Unlike req/s on a shared machine the count is steady from run to run"
        + (f"; `before` is {res['before']}." if before else ".") + "\n")
    if before:
        lines += ["| request | before | now | change |", "|---|---|---|---|"]
        for case, label in CASES.items():
            old, new = res["counts"]["before"][case], res["counts"]["now"][case]
            lines.append(f"| {label} | {old:,.0f} | {new:,.0f} | {(new / old - 1) * 100:+.1f} % |")
    else:
        lines += ["| request | instructions |", "|---|---|"]
        lines += [f"| {label} | {res['counts']['now'][case]:,.0f} |" for case, label in CASES.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="Counted requests per case.")
    ap.add_argument("--before", type=Path, help="Source tree of an older edgerec (DIR/edgerec/...).")
    ap.add_argument("--before-label", help="What the report calls the --before tree (e.g. its commit).")
    ap.add_argument("--no-doc", action="store_true", help="Do not write docs/benchmarks.md.")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "REQUESTS", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    from _report import command, machine

    work = Path(tempfile.mkdtemp(prefix="edgerec-instructions-"))
    try:
        assets(work)
        trees: dict[str, Path | None] = {"now": None}
        if args.before is not None:
            trees["before"] = args.before.resolve()
        jobs = [(name, case) for name in trees for case in CASES]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            counted = dict(zip(jobs, pool.map(lambda j: count(j[1], args.requests, work, trees[j[0]]), jobs),
                               strict=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res: dict[str, Any] = {
        "requests": args.requests, "before": (args.before_label or str(args.before)) if args.before else None,
        "counts": {name: {case: counted[(name, case)] for case in CASES} for name in trees},
        "run": {"machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": command()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "edge_server_instructions.json").write_text(json.dumps(res, indent=2))
    text = report(res)
    if not args.no_doc:
        from _report import write_section

        write_section("edge_server_instructions", text)
    print(text)


if __name__ == "__main__":
    main()
