"""Edge server benchmark: edgerec against the raw runtime call, two bare Flask floors and BentoML.

All in one run, one after another, on this machine and the same ONNX model:

1. the raw ONNX Runtime call in process (1 row, 100 rows);
2. single-row infer and ``/v1/rank`` with 100 candidates at 1 and 32 concurrent
   clients, for a bare Flask route that only makes that call, on waitress (16
   threads) and on granian (the settings ``edgerec serve`` uses), BentoML with
   adaptive batching (its own venv: bench/peers/setup_bentoml.sh; its
   configuration printed; a fresh server for each point unless ``--bento-keep``,
   as its batcher keeps what it learned across load phases; compared at its
   best round), edgerec
   with batching off and edgerec with batching on (and ``--before DIR``: the
   landed edgerec, e.g. on waitress);
3. edgerec with 2 worker processes against 1;
4. batching's gain at a fixed p99 budget for a light and a heavy model (and, for
   information, the heavy one on 2 workers and a heavier one);
5. hot swap: 10 swaps of a >= 50 MB model under load;
6. hostile clients: a normal client's latency while 2,000 slow connections are
   open (idle ones, request heads and bodies trickled a byte at a time).

edgerec runs in its measured configuration, every feature on: metrics,
request ids and trace context (wrk sends a ``traceparent``), the JSON access
log (one line per request, to a file, written in batches at most 200 ms apart:
``--log-flush-ms``; env EDGEREC_BENCH_LOG_FLUSH_MS), validation, an A/B experiment
(``/v1/rank`` names it; two versions are loaded) and the feature cache (user
profiles from SQLite behind the in-process LRU). ``--before DIR`` adds the
same server built from an older source tree (``DIR/edgerec/{sdk,edge_server}``,
e.g. ``git archive``) as system ``before``, for a before/after in one run.

Load comes from wrk (C, epoll) with a Lua script for the POST body; its CPU
time is reported next to the server's. Every server gets 1 ONNX Runtime
thread; waitress servers 16 HTTP threads, granian ones the defaults of
``edgerec serve``. Writes the ``edge_server`` section of docs/benchmarks.md;
raw numbers go to build/bench/edge_server.json.

    python bench/edge_server.py [--seconds 5] [--rounds 3] [--quick] [--before DIR] [--only-compare]
    python bench/edge_server.py --only-compare --systems bare,edgerec-on --points infer/1,rank/32
    python bench/edge_server.py --only-sweep [--rounds 2]   # the batching sweep alone, printed
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import httpx
import numpy as np
from _report import command, header, machine, write_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/support: hostile clients
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.hostile import Slowloris, raise_fd_limit

from edgerec.sdk.keys import public_pem
from edgerec.sdk.manifest import FeatureSpec, ModelSignature, TensorSpec
from edgerec.sdk.package import PackageBuilder

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
OUT = ROOT / "build" / "bench"
BENTO = Path(os.environ.get("EDGEREC_BENTOML_VENV", "/tmp/bentoml-venv"))
EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()", "serve"]
TOKEN = "bench-control-token-0123456789"
N_CTX = 4
HTTP_THREADS = 16
CANDIDATES = 100


class ModelSpec(TypedDict):
    """ctr_onnx's arguments; package() reads the id ranges from them."""

    users: int
    items: int
    dim: int
    hidden: list[int]


LIGHT: ModelSpec = {"users": 2000, "items": 1000, "dim": 16, "hidden": [32]}
HEAVY: ModelSpec = {"users": 2000, "items": 1000, "dim": 16, "hidden": [1536, 1536, 1536]}  # ~0.9 ms a row
HEAVIER: ModelSpec = {"users": 2000, "items": 1000, "dim": 16, "hidden": [2560, 2560, 2560]}  # ~2.3 ms a row
# Batching sweep: (label, model, worker processes).
SWEEP = (("light", "light", 1), ("heavy", "heavy", 1), ("heavy, 2 workers", "heavy", 2),
         ("heavier", "heavier", 1))
BUDGET_MS = 50.0
BIG: ModelSpec = {"users": 210_000, "items": 1000, "dim": 64, "hidden": []}  # 54 MB of embeddings
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LOG_FLUSH_MS = float(os.environ.get("EDGEREC_BENCH_LOG_FLUSH_MS", "200"))  # access log lines batched this long
EDGEREC_SYSTEMS = ("before", "edgerec-off", "edgerec-on")
BARE_SYSTEMS = ("bare", "bare-granian")
HOSTILE_SOCKETS = 2000
POINTS = ("infer/1", "infer/32", "rank/1", "rank/32")  # the comparison's points: case/clients


# -- models ------------------------------------------------------------------------


def ctr_onnx(users: int, items: int, dim: int, hidden: list[int], seed: int = 0) -> bytes:
    """A CTR model: two embeddings and context, an MLP, a sigmoid score [B, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (users, dim)).astype(np.float32), "user_emb"),
             numpy_helper.from_array(rng.normal(0, 0.3, (items, dim)).astype(np.float32), "item_emb")]
    nodes = [helper.make_node("Gather", ["user_emb", "user_id"], ["ue"], axis=0),
             helper.make_node("Gather", ["item_emb", "item_id"], ["ie"], axis=0),
             helper.make_node("Concat", ["ue", "ie", "ctx"], ["h0"], axis=1)]
    width, x = 2 * dim + N_CTX, "h0"
    for i, h in enumerate([*hidden, 1]):
        w = rng.normal(0, 1 / np.sqrt(width), (width, h)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        x = f"m{i}"
        if h != 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
        width = h
    nodes.append(helper.make_node("Sigmoid", [x], ["score"]))
    graph = helper.make_graph(nodes, "ctr", [
        helper.make_tensor_value_info("user_id", TensorProto.INT64, ["b"]),
        helper.make_tensor_value_info("item_id", TensorProto.INT64, ["b"]),
        helper.make_tensor_value_info("ctx", TensorProto.FLOAT, ["b", N_CTX]),
    ], [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def package(onnx: bytes, spec: ModelSpec, name: str, version: int, key: Ed25519PrivateKey, path: Path) -> Path:
    b = PackageBuilder(name, version, ModelSignature(
        inputs=(TensorSpec("user_id", "int64", (None,)), TensorSpec("item_id", "int64", (None,)),
                TensorSpec("ctx", "float32", (None, N_CTX))),
        outputs=(TensorSpec("score", "float32", (None, 1)),)))
    b.add_artifact("model.onnx", onnx, "onnx")
    b.add_feature(FeatureSpec("user_id", "user", "user_id", id_range=(0, spec["users"] - 1)))
    b.add_feature(FeatureSpec("item_id", "item", "item_id", id_range=(0, spec["items"] - 1)))
    b.add_feature(FeatureSpec("ctx", "context", "ctx", default=0.0))
    b.set_item_table({"item_id": np.arange(spec["items"], dtype=np.int64)})
    b.set_warmup({"user_id": np.arange(8), "item_id": np.arange(8),
                  "ctx": np.full((8, N_CTX), 0.5, np.float32)})
    return b.write(path, key)


def features_config(work: Path, users: int) -> Path:
    """Settings of the measured configuration: an A/B experiment over v1 and v2, user profiles in SQLite."""
    db = work / "features.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS user_features (id TEXT PRIMARY KEY, features TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS item_features (id TEXT PRIMARY KEY, features TEXT)")
        conn.executemany("INSERT OR REPLACE INTO user_features VALUES (?, ?)",
                         [(str(u), json.dumps({"segment": u % 7})) for u in range(users)])
    conn.close()
    path = work / "edgerec.toml"
    path.write_text(f'''[features]
source = "sqlite://{db}"

[[experiments]]
name = "ab"
model = "ctr"
[[experiments.variants]]
name = "a"
version = 1
weight = 1
[[experiments.variants]]
name = "b"
version = 2
weight = 1
''')
    return path


# -- request bodies per system ---------------------------------------------------------

USER, ITEM, CTX = 17, 42, [0.1, 0.2, 0.3, 0.4]
ITEMS = list(range(0, 3 * CANDIDATES, 3))


def bodies(system: str) -> dict[str, tuple[str, str]]:
    """case -> (path, JSON body)."""
    if system in BARE_SYSTEMS:
        return {"infer": ("/infer", json.dumps({"user_id": [USER], "item_id": [ITEM], "ctx": [CTX]})),
                "rank": ("/rank", json.dumps({"user_id": USER, "candidates": ITEMS, "ctx": CTX, "top_k": 10}))}
    if system == "bentoml":
        return {"infer": ("/infer", json.dumps({"rows": [[USER, ITEM, *CTX]]})),
                "rank": ("/rank", json.dumps({"rows": [[USER, i, *CTX] for i in ITEMS]}))}
    oip = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [USER]},
                      {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [ITEM]},
                      {"name": "ctx", "shape": [1, N_CTX], "datatype": "FP32", "data": CTX}]}
    rank = {"model": "ctr", "experiment": "ab", "user": {"id": USER}, "candidates": ITEMS, "context": {"ctx": CTX},
            "top_k": 10}
    return {"infer": ("/v2/models/ctr/infer", json.dumps(oip)), "rank": ("/v1/rank", json.dumps(rank))}


# -- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Server:
    """A server process under test; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, cmd: list[str], port: int, ready: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, body: str | None = None) -> None:
        """``ready``: a path that answers 200 once the server serves (POSTed ``body`` when given)."""
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{cmd[:4]} exited: {self.log.read().decode()[-2000:]}")
            try:
                probe = (httpx.post(self.url + ready, content=body, timeout=1) if body is not None
                         else httpx.get(self.url + ready, timeout=1))
                if probe.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{cmd[:4]} not ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# -- load -----------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def lua_script(body: str) -> str:
    """A wrk script that POSTs ``body`` as JSON with a W3C traceparent (a path's name)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                  f'wrk.headers["traceparent"] = "{TRACEPARENT}"\nwrk.body = [==[{body}]==]\n')
    return lua.name


def wrk(url: str, body: str, conns: int, seconds: float, server_pid: int | None = None) -> dict[str, float]:
    """One wrk run: throughput, p50/p99 (ms), failures, client and server CPU seconds."""
    script = lua_script(body)
    threads = 1 if conns == 1 else 2
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    proc = subprocess.Popen(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                             "-s", script, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    os.unlink(script)
    cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
    return parse_wrk(out) | {"client_cpu": usage.ru_utime + usage.ru_stime, "server_cpu": cpu1 - cpu0,
                             "seconds": seconds}


def parse_wrk(out: str) -> dict[str, float]:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m[1]) * _UNITS[m[2]] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps[1]) if rps else 0.0, "p50": latency("50"), "p99": latency("99"),
            "requests": float(total[1]) if total else 0.0, "non2xx": float(non2xx[1]) if non2xx else 0.0,
            "socket_errors": float(sum(int(x) for x in sock.groups())) if sock else 0.0}


def measure(server: Server, case_body: tuple[str, str], conns: int, seconds: float) -> dict[str, float]:
    path, body = case_body
    wrk(server.url + path, body, conns, 1.0)  # warm up threads, connections and caches
    return wrk(server.url + path, body, conns, seconds, server.pid)


# -- systems --------------------------------------------------------------------------


def start(system: str, onnx: Path, model_dir: Path, pub: Path, *, workers: int = 1, extra: Sequence[str] = (),
          settings: Path | None = None, before: Path | None = None, before_threads: int = HTTP_THREADS) -> Server:
    """A server under test; edgerec systems with ``settings`` (the measured configuration's file)."""
    port = free_port()
    if system in BARE_SYSTEMS:
        path, body = bodies("bare")["infer"]
        server = "granian" if system == "bare-granian" else "waitress"
        return Server([sys.executable, str(PEERS / "bare_flask.py"), str(onnx), str(port), str(HTTP_THREADS), server],
                      port, path, body=body)
    if system == "bentoml":
        return Server([str(BENTO / "bin" / "bentoml"), "serve", "bento_service:CTR", "--port", str(port),
                       "--host", "127.0.0.1"], port, "/readyz", env={"EDGEREC_BENCH_ONNX": str(onnx),
                                                                     "BENTOML_DO_NOT_TRACK": "true"}, cwd=PEERS)
    batching = ["--max-batch", "1"] if system == "edgerec-off" else ["--max-batch", "32", "--max-delay-ms", "2"]
    env = {"EDGEREC_CONTROL_TOKEN": TOKEN}
    if system == "before":
        if before is None:
            raise ValueError("the before system needs --before")
        env["PYTHONPATH"] = os.pathsep.join([str(before), os.environ.get("PYTHONPATH", "")])
    config = ["--config", str(settings)] if settings is not None else []
    config += ["--log-flush-ms", str(LOG_FLUSH_MS)]
    # The landed server ran on waitress with 16 HTTP threads (its default); the new one on granian with its
    # defaults (the RSGI front, 2 app threads); a granian-era tree is compared at its defaults too
    # (--before-http-threads 0): there the option sets the front's app threads, not waitress's.
    threads = ["--http-threads", str(before_threads)] if system == "before" and before_threads > 0 else []
    # The access log is on (the default): one JSON line per request into the server's log file.
    return Server([*EDGEREC, "--model-dir", str(model_dir), "--port", str(port), "-k", str(pub), "--threads", "1",
                   *threads, "--log-level", "info", *config,
                   "--workers", str(workers), *batching, *extra], port, "/v2/health/ready", env=env)


_BENTO_CONFIG = (
    "import json, bentoml; from bento_service import CTR; print(json.dumps({'bentoml': bentoml.__version__, "
    "'service': CTR.config, 'apis': {n: {k: getattr(a, k, None) for k in ('batchable', 'max_batch_size', "
    "'max_latency_ms')} for n, a in CTR.apis.items()}}))")


def bento_config(onnx: Path) -> dict[str, Any]:
    """The BentoML peer's configuration as its own code declares it (version, workers, each API's batching)."""
    out = subprocess.run([str(BENTO / "bin" / "python"), "-c", _BENTO_CONFIG], cwd=PEERS, capture_output=True,
                         text=True, check=True, timeout=120,
                         env={**os.environ, "EDGEREC_BENCH_ONNX": str(onnx), "BENTOML_DO_NOT_TRACK": "true"})
    config: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return config


def raw_call(onnx: Path, rows: int, repeats: int = 3000) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    feeds = {"user_id": np.full(rows, USER, np.int64), "item_id": np.asarray((ITEMS * 2)[:rows], np.int64),
             "ctx": np.tile(np.asarray(CTX, np.float32), (rows, 1))}
    for _ in range(200):
        sess.run(["score"], feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(["score"], feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p50": statistics.median(times), "p99": times[int(len(times) * 0.99)], "rps": 1e3 / statistics.mean(times)}


# -- the run --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="Length of each measured wrk run.")
    ap.add_argument("--quick", action="store_true", help="Shorter runs, fewer points (a smoke test).")
    ap.add_argument("--no-doc", action="store_true", help="Do not write docs/benchmarks.md.")
    ap.add_argument("--only-swap", action="store_true", help="Run only the hot-swap part (no report).")
    ap.add_argument("--only-sweep", action="store_true",
                    help="Run only the batching sweep (off and on side by side; printed, no report).")
    ap.add_argument("--only-compare", action="store_true",
                    help="Run only the raw call and the system comparison (no report).")
    ap.add_argument("--systems", help="Comma-separated systems to compare (default: all).")
    ap.add_argument("--points", help="With --only-compare: comma-separated CASE/CLIENTS points of the comparison "
                                     "(e.g. infer/1,rank/32; default: all four).")
    ap.add_argument("--rounds", type=int, default=3,
                    help="Comparison rounds (every system at every point each round); the report gives medians.")
    ap.add_argument("--before", type=Path, help="Source tree of an older edgerec (DIR/edgerec/...): system 'before'.")
    ap.add_argument("--before-http-threads", type=int, default=HTTP_THREADS,
                    help="--http-threads for the 'before' system (the landed waitress server's 16; 0: the tree's "
                         "default, for a tree on granian, where the option sets the front's app threads).")
    ap.add_argument("--bento-keep", action="store_true",
                    help="Keep one BentoML server for the whole comparison (default: a fresh one for each point).")
    ap.add_argument("--from-json", type=Path,
                    help="Write the report of a saved run (build/bench/edge_server.json) instead of measuring.")
    args = ap.parse_args()
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        write_section("edge_server", report(res))
        print(report(res))
        return
    if args.points:
        wanted = args.points.split(",")
        if not args.only_compare or not set(wanted) <= set(POINTS):
            ap.error(f"--points takes some of {','.join(POINTS)}, with --only-compare")
        args.points = [p for p in POINTS if p in wanted]
    else:
        args.points = list(POINTS)
    if args.quick:
        args.rounds = 1
    if shutil.which("wrk") is None:
        ap.error("wrk is not installed (Debian: apt-get install wrk); it drives every measured point")
    work = Path(tempfile.mkdtemp(prefix="edgerec-bench-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # models and packages (150 MB with the swap part)


def run(args: argparse.Namespace, work: Path) -> None:
    secs = 2.0 if args.quick else args.seconds
    key = Ed25519PrivateKey.generate()
    pub = work / "publisher.pub"
    pub.write_bytes(public_pem(key.public_key()))
    results: dict[str, Any] = {"seconds": secs, "rounds": args.rounds, "before": args.before is not None,
                               "load": [os.getloadavg()[0]],
                               "run": {"machine": machine(), "date": f"{time.strftime('%Y-%m-%d', time.gmtime())}",
                                       "command": command()}}
    if args.only_swap:
        hot_swap(work, key, pub, secs, args.quick)
        return

    light_onnx = work / "light.onnx"
    light_onnx.write_bytes(ctr_onnx(**LIGHT))
    heavy_onnx = work / "heavy.onnx"
    heavy_onnx.write_bytes(ctr_onnx(**HEAVY))
    heavier_onnx = work / "heavier.onnx"
    heavier_onnx.write_bytes(ctr_onnx(**HEAVIER))
    dirs = {}
    for name, onnx, spec in (("light", light_onnx, LIGHT), ("heavy", heavy_onnx, HEAVY),
                             ("heavier", heavier_onnx, HEAVIER)):
        dirs[name] = work / name
        dirs[name].mkdir()
        package(onnx.read_bytes(), spec, "ctr", 1, key, dirs[name] / "ctr-1.edgepkg")
        package(ctr_onnx(**spec, seed=1), spec, "ctr", 2, key, dirs[name] / "ctr-2.edgepkg")  # the B variant
    settings = features_config(work, LIGHT["users"])
    if args.only_sweep:
        sweep = batching_sweep(dirs, pub, secs, args.quick, settings, min(args.rounds, 2))
        for label, r in sweep.items():
            best = r["best"]
            print("sweep", label, " ".join(f"{p['conns']}:{p['rps']:.0f}/{p['p99']:.1f}" for p in r["points"]),
                  "best", "-" if best is None else f"{best['rps']:.0f} req/s at {best['conns']}", flush=True)
        return
    results["model_bytes"] = {"light": light_onnx.stat().st_size, "heavy": heavy_onnx.stat().st_size}
    print(f"models: light {light_onnx.stat().st_size / 1e3:.0f} KB, heavy {heavy_onnx.stat().st_size / 1e6:.1f} MB",
          flush=True)

    results["raw"] = {"1": raw_call(light_onnx, 1), "100": raw_call(light_onnx, CANDIDATES),
                      "heavy1": raw_call(heavy_onnx, 1, 500), "heavier1": raw_call(heavier_onnx, 1, 300)}
    print("raw", json.dumps(results["raw"]), flush=True)

    systems = ["bare", "bare-granian", "bentoml", "before", "edgerec-off", "edgerec-on"]
    if args.before is None:
        systems.remove("before")
    if not (BENTO / "bin" / "bentoml").exists():
        print(f"BentoML venv missing at {BENTO}: run bench/peers/setup_bentoml.sh; skipping it", flush=True)
        systems.remove("bentoml")
    if args.systems:
        systems = [s for s in systems if s in args.systems.split(",")]
    if "bentoml" in systems:
        results["bentoml_config"] = bento_config(light_onnx)
        print("bentoml configuration", json.dumps(results["bentoml_config"]), flush=True)
    # All systems are up at once and take turns (in a rotating order) point by point, round after round,
    # so a change in the machine's other load hits every system alike; each point's figure is its median.
    servers: dict[str, Server] = {}
    rounds: dict[str, list[dict[str, float]]] = {}
    try:
        for system in systems:
            servers[system] = start(system, light_onnx, dirs["light"], pub, settings=settings, before=args.before,
                                    before_threads=args.before_http_threads)
        for i in range(args.rounds):
            for point in args.points:
                case, conns = point.split("/")[0], int(point.split("/")[1])
                order = systems[i % len(systems):] + systems[:i % len(systems)]
                for system in order:
                    if system == "bentoml" and not args.bento_keep:
                        # BentoML's adaptive batcher keeps the waits it learned in earlier phases (a fresh
                        # server answered 1 client at p50 2 ms, one that had served 32 clients at 35-40 ms):
                        # a fresh server for each point, warmed by measure() at that point's load.
                        servers[system].stop()
                        servers[system] = start(system, light_onnx, dirs["light"], pub)
                    body = bodies("edgerec" if system in EDGEREC_SYSTEMS else system)[case]
                    r = measure(servers[system], body, conns, secs)
                    rounds.setdefault(f"{system}/{case}/{conns}", []).append(r)
                    print(f"round {i + 1}", system, case, conns, _fmt(r), flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    rounds = {f"{sy}/{case}/{conns}": rounds[f"{sy}/{case}/{conns}"]
              for sy in systems for case, conns in (p.split("/") for p in args.points)}
    results["compare_rounds"] = rounds
    results["compare"] = {k: median_point(v) for k, v in rounds.items()}
    results["bentoml_best"] = {k: best_round(v) for k, v in rounds.items() if k.startswith("bentoml/")}
    results["bentoml_restarted"] = not args.bento_keep
    if args.only_compare:
        for key, r in results["compare"].items():
            print("median", key, _fmt(r))
        print("\n".join(compare_targets(results)))
        return

    results["workers"] = workers_compare(light_onnx, dirs, pub, secs, settings, args.rounds)
    results["hostile"] = hostile(light_onnx, dirs, pub, secs, settings)
    results["batching"] = batching_sweep(dirs, pub, secs, args.quick, settings, min(args.rounds, 2))
    results["swap"] = hot_swap(work, key, pub, secs, args.quick)
    results["load"].append(os.getloadavg()[0])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "edge_server.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc:
        write_section("edge_server", report(results))
    print(report(results))


def median_point(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def best_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round with the highest throughput (a peer compared at its best)."""
    return max(runs, key=lambda r: r["rps"])


def _fmt(r: dict[str, float]) -> str:
    return (f"{r['rps']:,.0f} req/s p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms "
            f"server cpu {r['server_cpu'] / r['seconds']:.2f} ({cpu_us(r):,.0f} us/req) "
            f"client cpu {r['client_cpu'] / r['seconds']:.2f} "
            f"fail {r['non2xx'] + r['socket_errors']:.0f}")




def workers_compare(onnx: Path, dirs: dict[str, Path], pub: Path, secs: float, settings: Path,
                    rounds: int) -> dict[str, Any]:
    """edgerec with 1 and 2 worker processes, both up, taking turns (single-row infer, 32 clients)."""
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict[str, float]]] = {"1": [], "2": []}
    try:
        for workers in (1, 2):
            servers[str(workers)] = start("edgerec-on", onnx, dirs["light"], pub, workers=workers, settings=settings)
        time.sleep(2.0)  # the second worker's models loaded too
        for i in range(rounds):
            for w in (("1", "2") if i % 2 == 0 else ("2", "1")):
                r = measure(servers[w], bodies("edgerec")["infer"], 32, secs)
                runs[w].append(r)
                print("workers", w, _fmt(r), flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    return {w: median_point(v) for w, v in runs.items()}


def hostile(onnx: Path, dirs: dict[str, Path], pub: Path, secs: float, settings: Path) -> dict[str, Any]:
    """A normal client (wrk, 4 keep-alive connections; and new connections one after another) without and
    with ``HOSTILE_SOCKETS`` slow connections open: half idle, a quarter trickling a request head, a quarter
    trickling a body (every feature on, one worker)."""
    raise_fd_limit(HOSTILE_SOCKETS + 1000)
    srv = start("edgerec-on", onnx, dirs["light"], pub, settings=settings)
    path, body = bodies("edgerec")["infer"]
    out: dict[str, Any] = {"sockets": HOSTILE_SOCKETS}

    port = int(srv.url.rsplit(":", 1)[1])

    def fresh(n: int = 200) -> dict[str, float]:
        """A new connection for each request (http.client: no client-side set-up to time)."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            conn.close()
            times.append((time.perf_counter() - t0) * 1e3)
            if r.status != 200:
                raise RuntimeError(f"normal client refused: {r.status} {data[:200]!r}")
        times.sort()
        return {"p50": statistics.median(times), "p99": times[int(len(times) * 0.99)], "max": times[-1]}

    try:
        out["quiet"] = measure(srv, (path, body), 4, secs)
        out["quiet_fresh"] = fresh()
        n = HOSTILE_SOCKETS
        attack = Slowloris("127.0.0.1", port, path, idle=n // 2, heads=n // 4,
                           bodies=n - n // 2 - n // 4)
        try:
            time.sleep(12.0)  # past the header timeout (10 s): cut heads come back
            out["attacked"] = measure(srv, (path, body), 4, secs)
            out["attacked_fresh"] = fresh()
            out["open"] = attack.open_count
            out["heads_cut"] = attack.stats.closed["head"]
        finally:
            attack.close()
        print("hostile", json.dumps(out, default=str)[:600], flush=True)
        return out
    finally:
        srv.stop()


def batching_sweep(dirs: dict[str, Path], pub: Path, secs: float, quick: bool, settings: Path,
                   rounds: int) -> dict[str, Any]:
    """Best throughput with p99 within the budget, batching off and on, per model and worker count.

    Off and on are up at once and take turns at each point (``rounds`` times, in
    alternating order); each point is the median of its rounds, so a slow
    minute of the machine hits both alike.
    """
    levels = (1, 8, 32) if quick else (1, 4, 16, 32, 64)
    modes = ("edgerec-off", "edgerec-on")
    out: dict[str, Any] = {}
    for label, model, workers in SWEEP:
        servers: dict[str, Server] = {}
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        try:
            for mode in modes:
                servers[mode] = start(mode, Path(), dirs[model], pub, settings=settings, workers=workers)
            for conns in levels:
                for i in range(rounds):
                    for mode in (modes if i % 2 == 0 else modes[::-1]):
                        r = measure(servers[mode], bodies("edgerec")["infer"], conns, max(2.0, secs * 0.6))
                        runs.setdefault((mode, conns), []).append(r)
                        print("sweep", label, mode, conns, _fmt(r), flush=True)
        finally:
            for srv in servers.values():
                srv.stop()
        for mode in modes:
            points = [{"conns": conns, **median_point(runs[(mode, conns)])} for conns in levels]
            ok = [p for p in points if p["p99"] <= BUDGET_MS and p["non2xx"] + p["socket_errors"] == 0]
            best = max(ok, key=lambda p: p["rps"]) if ok else None
            out[f"{label}/{mode}"] = {"points": points, "best": best}
    return out


def hot_swap(work: Path, key: Ed25519PrivateKey, pub: Path, secs: float, quick: bool) -> dict[str, Any]:
    """10 swaps of a >= 50 MB model (alternating two versions) while 32 clients send requests."""
    big = work / "big"
    big.mkdir()
    onnx = ctr_onnx(**BIG)
    v1 = package(onnx, BIG, "ctr", 1, key, big / "ctr-1.edgepkg")
    v2 = package(ctr_onnx(**BIG, seed=1), BIG, "ctr", 2, key, work / "ctr-2.edgepkg")
    srv = start("edgerec-on", Path(), big, pub)
    swaps = 4 if quick else 10
    try:
        steady = measure(srv, bodies("edgerec")["infer"], 32, secs)
        print("swap steady", _fmt(steady), flush=True)
        rss_before = rss_mb(srv.pid)
        path, body = bodies("edgerec")["infer"]
        window = max(20, swaps * 3)
        script = lua_script(body)
        load = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{window}s", "--latency", "--timeout", "10s", "-s", script,
                                 srv.url + path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)
        durations, codes = [], []
        headers = {"Authorization": f"Bearer {TOKEN}"}
        t_start = time.monotonic()
        for i in range(swaps):
            target = v2 if i % 2 == 0 else v1
            t0 = time.monotonic()
            r = httpx.post(srv.url + "/control/v1/models/load", json={"path": str(target)}, headers=headers,
                           timeout=120)
            durations.append(time.monotonic() - t0)
            codes.append(r.status_code)
            # Spread the swaps over the load window.
            pause = (i + 1) * (window - 3.0) / swaps - (time.monotonic() - t_start)
            if pause > 0:
                time.sleep(pause)
        out = load.stdout.read() if load.stdout else ""
        load.wait()
        os.unlink(script)
        during = parse_wrk(out)
        time.sleep(2.0)  # let the last retired version be released
        rss_after = rss_mb(srv.pid)
        result = {"steady": steady, "during": during, "swaps": swaps, "load_s": durations, "codes": codes,
                  "rss_before_mb": rss_before, "rss_after_mb": rss_after,
                  "package_mb": v1.stat().st_size / 1e6}
        print("swap", json.dumps({k: v for k, v in result.items() if k not in ("steady",)}), flush=True)
        return result
    finally:
        srv.stop()


# -- the report -----------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    c, raw = res["compare"], res["raw"]
    lines = [header("Edge server (bench/edge_server.py)", res.get("run"))]
    lines.append(
        f"Models: synthetic CTR ONNX ({res['model_bytes']['light'] / 1e3:.0f} KB: user and item embeddings, "
        f"context, a 32-unit MLP; the MovieLens package of examples/movielens needs a TensorFlow training run, so "
        f"the same-sized synthetic model keeps every system on one identical ONNX file). Every server: 1 ONNX "
        f"Runtime thread, one worker process unless said; waitress servers (bare, the landed edgerec as `before`) "
        f"{HTTP_THREADS} HTTP threads, granian ones (bare-granian, edgerec) the defaults of `edgerec serve` (granian's "
        f"RSGI interface, bodies read on its event loop, 2 app threads: edgerec.sdk.wsgi_front). "
        f"{res.get('load_note', '')} Load: wrk "
        f"({res['seconds']:.0f} s per point after 1 s of warm-up). The machine is a 2-core VM whose speed drifts "
        f"from minute to minute, so absolute numbers are noisy: in the comparison all systems were up at once and took "
        f"turns at each point, {res.get('rounds', 1)} rounds in a rotating order, and each figure is the median of "
        "its rounds. edgerec runs with every feature on: metrics, request ids and W3C trace context (wrk sends a "
        "`traceparent`), the JSON access log (a line per request into the server's log file, written in batches "
        f"at most {LOG_FLUSH_MS:.0f} ms apart, `--log-flush-ms`), validation, an A/B experiment over two loaded "
        "versions (`/v1/rank` names it) and user profiles from SQLite behind the feature cache.\n")
    if res.get("load"):
        lines.append(f"Machine load (1-minute load average) at the start: {res['load'][0]:.2f}, at the end: "
                     f"{res['load'][1]:.2f}.\n")
    bento = res.get("bentoml_config")
    if bento:
        apis = "; ".join(f"`{n}`: batchable {a['batchable']}, max_batch_size {a['max_batch_size']}, "
                         f"max_latency_ms {a['max_latency_ms']}" for n, a in bento["apis"].items())
        lines.append(f"BentoML peer: BentoML {bento['bentoml']}, service config {json.dumps(bento['service'])}; "
                     f"{apis} (bench/peers/bento_service.py, its own venv: bench/peers/setup_bentoml.sh). "
                     + ("A fresh BentoML server for each measured point, warmed at that point's load (its adaptive "
                        "batcher keeps the waits it learned in earlier phases); " if res.get("bentoml_restarted")
                        else "One BentoML server for the whole comparison; ")
                     + "the comparison rows below take its best round.\n")
    lines.append(f"Raw ONNX Runtime call in process: 1 row p50 {raw['1']['p50'] * 1e3:.0f} us "
                 f"(p99 {raw['1']['p99'] * 1e3:.0f} us), 100 rows p50 {raw['100']['p50'] * 1e3:.0f} us; heavy model "
                 f"1 row p50 {raw['heavy1']['p50']:.2f} ms.\n")
    lines.append("| system | case | clients | req/s | p50 ms | p99 ms | server CPU (cores) | server CPU us/request "
                 "| client CPU (cores) | failed |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for key, r in c.items():
        system, case, conns = key.split("/")
        lines.append(table_row(system, case, conns, r))
    for key, r in res.get("bentoml_best", {}).items():
        _, case, conns = key.split("/")
        lines.append(table_row("bentoml, best round", case, conns, r))
    lines.append("")
    lines += targets(res)
    return "\n".join(lines)


def table_row(system: str, case: str, conns: str, r: dict[str, float]) -> str:
    return (f"| {system} | {'single-row infer' if case == 'infer' else 'rank, 100 candidates'} | {conns} "
            f"| {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['server_cpu'] / r['seconds']:.2f} "
            f"| {cpu_us(r):,.0f} | {r['client_cpu'] / r['seconds']:.2f} | {r['non2xx'] + r['socket_errors']:.0f} |")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def compare_targets(res: dict[str, Any]) -> list[str]:
    """The single-worker targets (edgerec with every feature on against the floors); with a ``before``
    system (the landed edgerec), its figure next to the new one."""
    c, raw = res["compare"], res["raw"]
    before = "before" if any(k.startswith("before/") for k in c) else None
    out = (["| target | landed edgerec | measured | met |", "|---|---|---|---|"] if before
           else ["| target | measured | met |", "|---|---|---|"])

    def row(name: str, value: Any, fmt: Any, ok: Any) -> None:
        """``value(system)`` -> figure, ``fmt(figure)`` -> text, ``ok(figure)`` -> met (None: information).

        A row whose points were not measured (``--points``, ``--systems``) is left out."""
        try:
            mine = value("edgerec-on")
            cells = [name, fmt(value(before)), fmt(mine)] if before else [name, fmt(mine)]
        except KeyError:
            return
        met = ok(mine)
        out.append("| " + " | ".join(cells) + f" | {'n/a' if met is None else 'yes' if met else 'no'} |")

    def ratio(case: str, conns: int, floor: str) -> Any:
        return lambda sy: c[f"{sy}/{case}/{conns}"]["rps"] / c[f"{floor}/{case}/{conns}"]["rps"]

    def x(v: float) -> str:
        return f"{math.floor(v * 100) / 100:.2f}x"  # cut, not rounded: 1.397 must not read as a met 1.40

    row("single-row infer, 32 clients: >= 1.6x the bare Flask + waitress route's throughput (moonshot 2x)",
        ratio("infer", 32, "bare"), x, lambda v: v >= 1.6)
    row("single-row infer, 32 clients: p99 <= 25 ms", lambda sy: c[f"{sy}/infer/32"]["p99"],
        lambda v: f"{v:.1f} ms", lambda v: v <= 25)
    row("single-row infer, 1 client: p50 <= 0.8x the bare Flask + waitress route's",
        lambda sy: c[f"{sy}/infer/1"]["p50"] / c["bare/infer/1"]["p50"],
        x, lambda v: v <= 0.8)
    row("rank, 100 candidates, 32 clients: >= 1.4x the bare Flask + waitress route's throughput",
        ratio("rank", 32, "bare"), x, lambda v: v >= 1.4)
    if "bare-granian/infer/32" in c:
        for case, conns in (("infer", 32), ("rank", 32)):
            row(f"{case}, {conns} clients: throughput against bare Flask on granian (information)",
                ratio(case, conns, "bare-granian"), x, lambda v: None)
        row("single-row infer, 1 client: p50 against bare Flask on granian (information)",
            lambda sy: c[f"{sy}/infer/1"]["p50"] / c["bare-granian/infer/1"]["p50"], x, lambda v: None)
    row("p50 overhead over the raw call, 1 client, single row (information)",
        lambda sy: c[f"{sy}/infer/1"]["p50"] - raw["1"]["p50"], lambda v: f"{v:.3f} ms", lambda v: None)
    best = res.get("bentoml_best", {})
    if "bentoml/infer/32" in best:
        for case in ("infer", "rank"):
            row(f"32 clients: throughput against BentoML's best round ({case}; information)",
                lambda sy, case=case: c[f"{sy}/{case}/32"]["rps"] / best[f"bentoml/{case}/32"]["rps"], x,
                lambda v: None)
        row("1 client: p50 against BentoML's best round (single-row infer; information)",
            lambda sy: c[f"{sy}/infer/1"]["p50"] / best["bentoml/infer/1"]["p50"], x, lambda v: None)
    for case in ("infer", "rank"):
        row(f"32 clients: server CPU per request against the bare waitress route's ({case}; information)",
            lambda sy, case=case: cpu_us(c[f"{sy}/{case}/32"]) / cpu_us(c[f"bare/{case}/32"]), x, lambda v: None)
    return [*out, ""]


def cpu_us(r: dict[str, float]) -> float:
    """Server CPU microseconds per answered request (steadier than req/s on a shared machine)."""
    return r["server_cpu"] / max(1.0, r["requests"]) * 1e6


def targets(res: dict[str, Any]) -> list[str]:
    out = compare_targets(res)
    out.pop()  # the blank line; the rows go on

    before = any(k.startswith("before/") for k in res["compare"])

    def row(name: str, value: str, ok: bool | None) -> None:
        cells = [name, "", value] if before else [name, value]
        out.append("| " + " | ".join(cells) + f" | {'yes' if ok else 'no' if ok is not None else 'n/a'} |")

    w = res["workers"]
    row("2 workers >= 1.7x one worker (single-row infer, 32 clients)",
        f"{_ratio(w['2']['rps'], w['1']['rps'])} ({w['2']['rps']:,.0f} vs {w['1']['rps']:,.0f} req/s)",
        w["2"]["rps"] >= 1.7 * w["1"]["rps"])
    h = res.get("hostile")
    if h:
        row(f"{h['sockets']:,} slow connections open: a normal client's p99 <= 1 s (wrk, 4 keep-alive connections)",
            f"p50 {h['attacked']['p50']:.2f} ms, p99 {h['attacked']['p99']:.1f} ms (without them: "
            f"{h['quiet']['p50']:.2f} / {h['quiet']['p99']:.1f} ms)", h["attacked"]["p99"] <= 1000)
        row(f"{h['sockets']:,} slow connections open: new connections one after another, p99 <= 1 s",
            f"p50 {h['attacked_fresh']['p50']:.2f} ms, p99 {h['attacked_fresh']['p99']:.1f} ms, max "
            f"{h['attacked_fresh']['max']:.1f} ms (without them: {h['quiet_fresh']['p50']:.2f} / "
            f"{h['quiet_fresh']['p99']:.1f} ms)", h["attacked_fresh"]["p99"] <= 1000)
    raw = res["raw"]
    compute = {"light": f"{raw['1']['p50'] * 1e3:.0f} us", "heavy": f"{raw['heavy1']['p50']:.1f} ms",
               "heavier": f"{raw['heavier1']['p50']:.1f} ms"}
    # The target's model: the first that takes >= 1 ms a row on this machine (the "heavy").
    per_row = {"heavy": raw["heavy1"]["p50"], "heavier": raw["heavier1"]["p50"]}
    target_model = next((m for m in ("heavy", "heavier") if per_row[m] >= 1.0), "heavier")
    for label, model, workers in SWEEP:
        off, on_ = res["batching"][f"{label}/edgerec-off"]["best"], res["batching"][f"{label}/edgerec-on"]["best"]
        if off and on_:
            gain = on_["rps"] / off["rps"]
            value = (f"{gain:.2f}x ({on_['rps']:,.0f} req/s at {on_['conns']} clients vs {off['rps']:,.0f} at "
                     f"{off['conns']})")
            target = model == target_model and workers == 1
            on_workers = f", {workers} workers" if workers > 1 else ""
            row(f"batching gain at p99 <= {BUDGET_MS:.0f} ms, {model} model ({compute[model]} a row){on_workers}"
                + (" (>= 2x)" if target else "; information"), value, gain >= 2 if target else None)
    s = res["swap"]
    fails = s["during"]["non2xx"] + s["during"]["socket_errors"] + sum(code != 200 for code in s["codes"])
    row(f"{s['swaps']} swaps of a {s['package_mb']:.0f} MB package under load: no failed request",
        f"{fails:.0f} failed of {s['during']['requests']:,.0f}", fails == 0)
    ratio = s["during"]["p99"] / s["steady"]["p99"]
    row("p99 during swaps <= 2x steady p99", f"{s['during']['p99']:.1f} vs {s['steady']['p99']:.1f} ms ({ratio:.2f}x)",
        ratio <= 2)
    rss = s["rss_after_mb"] / s["rss_before_mb"]
    row("RSS after the swaps <= 1.1x before", f"{s['rss_after_mb']:.0f} vs {s['rss_before_mb']:.0f} MB ({rss:.2f}x)",
        rss <= 1.1)
    out.append("")
    out.append("Batching sweep (req/s, p99 ms per client count; off and on up at once, taking turns at each point, "
               "each figure the median of its rounds):\n")
    out.append("| model | batching | " + " | ".join(f"{p['conns']} clients" for p in
                                                   res["batching"]["light/edgerec-off"]["points"]) + " |")
    out.append("|---|---|" + "---|" * len(res["batching"]["light/edgerec-off"]["points"]))
    for key, v in res["batching"].items():
        label, mode = key.split("/")
        out.append(f"| {label} | {mode.split('-')[1]} | " + " | ".join(
            f"{p['rps']:,.0f} / {p['p99']:.1f}" for p in v["points"]) + " |")
    out.append(f"\nSwap loads took {statistics.median(s['load_s']):.1f} s each (median: verify, load, warm up, swap).")
    return out


if __name__ == "__main__":
    main()
