"""LiteRT GPU path of the edge server, end to end, on a machine with a GPU.

Two steps, because the GPU machine has no TensorFlow and no network:

    python bench/edge_server_gpu.py build DIR     # here: the signed package of bench/sdk_gpu.py into DIR
    python bench/edge_server_gpu.py check DIR     # there: real `edgerec serve` processes, over HTTP
    python bench/edge_server_gpu.py report JSON   # here: docs/results/edge_server_gpu_<gpu>.json + docs section

``check`` starts two real ``edgerec serve`` processes on loopback ports over DIR
(``--accelerator gpu`` and ``--accelerator cpu``, both ``--backend litert``),
waits for ``/v2/health/ready``, POSTs Open Inference Protocol v2 JSON batches to
``/v2/models/heavy/infer`` and compares the scores with an in-process CPU
``EdgeModel`` run of the same package, reads what each server says it runs on
(``edgerec_model_info`` of ``/metrics`` and the control API's ``/control/v1/models``),
then times sequential requests per batch size (GPU and CPU rounds interleaved).
It prints one JSON document and writes it to ``$OUT/edge_server_gpu.json`` (or
``--out``), with both servers' logs beside it. A GPU server that fell back to the
CPU is reported as such (``gpu_served: false``, exit status 2), never hidden.

Where ``edgerec`` is not installed (the GPU machine gets the working tree, not a
wheel), ``check`` maps the tree's folders into an ``edgerec`` namespace in a
temporary folder, for itself and the servers (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sdk_gpu  # the builder of the package this check serves

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sdk", "edge_server")  # what the servers and the check import: committed, not half-edited
MODEL = "heavy"
CHECK_BATCHES = (1, 16, 200, 256)  # 200: padded to the 256 bucket on the GPU
TIME_BATCHES = (1, 256)
# Log lines LiteRT prints on every load that say nothing about this run.
NOISE = ("compiler_plugin.cc", "libopenvino", "npu_registry.cc", "accelerator_registry.cc")
# Log lines that say where the model ended up, and why.
EVIDENCE = ("Selected adapter", "running on the CPU", "will run on the GPU", "not supported by GPU delegate",
            "Failed to initialize WebGPU", "vkCreateInstance", "prepared ")


def build(folder: Path) -> None:
    """The committed sdk and edge_server (HEAD) into ``folder/src/edgerec``, then the package, built with them."""
    src = folder / "src"
    shutil.rmtree(src, ignore_errors=True)
    (src / "edgerec").mkdir(parents=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *SOURCES], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit, *SOURCES], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src / "edgerec")], input=archive, check=True)
    (src / "COMMIT").write_text(commit + (" (working tree had uncommitted changes, not used)" if dirty else "") + "\n")
    use_source(src)
    sdk_gpu.build(folder)


def use_source(src: Path) -> None:
    """Import ``edgerec`` from ``src`` (a folder holding edgerec/sdk, ...), ahead of any installed copy."""
    for name in [m for m in sys.modules if m == "edgerec" or m.startswith("edgerec.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src.resolve()))
    import edgerec.sdk

    if not Path(edgerec.sdk.__file__).resolve().is_relative_to(src.resolve()):
        raise RuntimeError(f"edgerec.sdk comes from {edgerec.sdk.__file__}, not {src}")


# -- the edgerec namespace where the project is not installed ---------------------------


def edgerec_path() -> str | None:
    """A folder to put on sys.path/PYTHONPATH so that ``edgerec.*`` is the working tree; None if installed."""
    try:
        if importlib.util.find_spec("edgerec.sdk") is not None:
            return None
    except ModuleNotFoundError:
        pass
    ns = Path(tempfile.mkdtemp(prefix="edgerec-ns-"))
    (ns / "edgerec").mkdir()
    for sub in ("sdk", "edge_server", "converter", "sync"):
        if (ROOT / sub).is_dir():
            (ns / "edgerec" / sub).symlink_to(ROOT / sub)
    sys.path.insert(0, str(ns))
    return str(ns)


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``edgerec serve`` process; its log goes to a file."""

    def __init__(self, label: str, folder: Path, accelerator: str, threads: int, log_dir: Path,
                 env: dict[str, str]) -> None:
        import httpx

        self.label, self.port, self.token = label, free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{label}_server.log"
        self.cmd = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()", "serve",
                    "--model-dir", str(folder), "--host", "127.0.0.1", "--port", str(self.port),
                    "-k", str(folder / "publisher.pub"), "--accelerator", accelerator, "--backend", "litert",
                    "--threads", str(threads), "--no-access-log", "--log-level", "info"]
        self._log = self.log_path.open("wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **env, "EDGEREC_CONTROL_TOKEN": self.token,
                                          "PYTHONUNBUFFERED": "1"})
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.ready_s: float | None = None
        self.exit_code: int | None = None

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} server exited with {self.proc.returncode} before ready")
            try:
                if self.client.get("/v2/health/ready", timeout=2).status_code == 200:
                    self.ready_s = time.perf_counter() - self.t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} server not ready after {timeout:g} s")

    def infer(self, body: bytes) -> np.ndarray:
        r = self.client.post(f"/v2/models/{MODEL}/infer", content=body, headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            raise RuntimeError(f"{self.label} infer: HTTP {r.status_code}: {r.text[:500]}")
        out = next(o for o in r.json()["outputs"] if o["name"] == "score")
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    def model_info_metric(self) -> list[dict[str, str]]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.client.get("/metrics").text
        return [dict(s.labels) for fam in text_string_to_metric_families(text) if fam.name == "edgerec_model_info"
                for s in fam.samples if s.value == 1]

    def control_models(self) -> list[dict[str, Any]]:
        r = self.client.get("/control/v1/models", headers={"Authorization": f"Bearer {self.token}"})
        return r.json().get("models", []) if r.status_code == 200 else [{"error": f"HTTP {r.status_code}"}]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self._log.close()

    def log_lines(self, limit: int = 25) -> list[str]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        keep = [ln for ln in lines if ln.strip() and not any(n in ln for n in NOISE)]
        return [ln[:400] for ln in keep[-limit:]]

    def evidence(self) -> list[str]:
        """The log lines that say which accelerator the model runs on, and why (first 12)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln[:400] for ln in lines if any(e in ln for e in EVIDENCE)][:12]


# -- requests -----------------------------------------------------------------------------


def make_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"user_id": rng.integers(0, sdk_gpu.N_USERS, n).astype(np.int32),
            "item_id": rng.integers(0, sdk_gpu.N_ITEMS, n).astype(np.int32),
            "dense": rng.random((n, sdk_gpu.N_DENSE)).astype(np.float32)}


def oip_body(inputs: dict[str, np.ndarray]) -> bytes:
    types = {"int32": "INT32", "float32": "FP32"}
    return json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": types[v.dtype.name],
                                   "data": v.ravel().tolist()} for k, v in inputs.items()]}).encode()


def percentiles(ms: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(ms, n=10)
    return {"p50_ms": round(statistics.median(ms), 4), "p90_ms": round(qs[8], 4), "n": len(ms)}


def time_calls(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def device_name() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            return subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"no nvidia-smi; {platform.machine()} {os.cpu_count()} cores"


def check(folder: Path, accelerator: str, threads: int, requests: int, rounds: int, log_dir: Path,
          working_tree: bool = False) -> dict[str, Any]:
    folder = folder.resolve()
    src = folder / "src"
    path: str | None
    if src.is_dir() and not working_tree:
        use_source(src)
        ns: str | None = None
        path, source = str(src), "snapshot " + (src / "COMMIT").read_text().strip()
    else:
        ns = path = edgerec_path()
        source = "working tree (temporary namespace)" if ns else "installed"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)} if path else {}
    from edgerec.sdk import EdgeModel, load_verify_key

    # Where a server process imports edgerec from (the same environment as the servers').
    probe = subprocess.run([sys.executable, "-c", "import edgerec.sdk as s, edgerec.edge_server as e; "
                            "print(s.__file__); print(e.__file__)"], capture_output=True, text=True, check=False,
                           env={**os.environ, **env})

    try:
        from importlib.metadata import version
        litert = version("ai-edge-litert")
    except Exception:  # only a label
        litert = "unknown"
    doc: dict[str, Any] = {
        "device": device_name(), "python": platform.python_version(), "ai_edge_litert": litert,
        "edgerec_source": source, "server_imports": (probe.stdout or probe.stderr).split(),
        "package": {"file": "heavy.edgepkg", "bytes": (folder / "heavy.edgepkg").stat().st_size,
                    "model": "bench/sdk_gpu.py DLRM-like MLP, buckets " + ",".join(map(str, sdk_gpu.BUCKETS))},
        "env": {k: os.environ[k] for k in ("VK_DRIVER_FILES", "__EGL_VENDOR_LIBRARY_FILENAMES") if k in os.environ},
        "problems": [],
    }
    trusted = [load_verify_key(folder / "publisher.pub")]
    ref = EdgeModel.load(folder / "heavy.edgepkg", trusted, accelerator="cpu", backend="litert", threads=threads)
    doc["inprocess_cpu_info"] = {k: v for k, v in ref.info.__dict__.items() if k != "artifacts"}
    servers = {"gpu": Server("gpu", folder, accelerator, threads, log_dir, env),
               "cpu": Server("cpu", folder, "cpu", threads, log_dir, env)}
    try:
        for s in servers.values():
            s.wait_ready(180)
        for label, s in servers.items():
            doc.setdefault("servers", {})[label] = {
                "command": " ".join(s.cmd[3:]), "requested_accelerator": accelerator if label == "gpu" else "cpu",
                "ready_s": round(s.ready_s or 0, 2), "edgerec_model_info": s.model_info_metric(),
                "control_models": [{k: m.get(k) for k in ("name", "version", "accelerator", "fully_delegated",
                                                          "backend", "state", "error")} for m in s.control_models()],
                "log_evidence": s.evidence()}
        gpu_labels = doc["servers"]["gpu"]["edgerec_model_info"]
        doc["gpu_served"] = bool(gpu_labels) and all(m.get("accelerator") == "gpu" for m in gpu_labels)
        if not doc["gpu_served"]:
            doc["problems"].append(f"the --accelerator {accelerator} server runs on "
                                   f"{[m.get('accelerator') for m in gpu_labels]} (edgerec_model_info)")
        if any(m.get("accelerator") != "cpu" for m in doc["servers"]["cpu"]["edgerec_model_info"]):
            doc["problems"].append("the --accelerator cpu server does not say cpu")

        rng = np.random.default_rng(0)
        acc = []
        for n in CHECK_BATCHES:
            inputs = make_inputs(rng, n)
            body = oip_body(inputs)
            want = ref.predict(inputs)["score"].reshape(n, -1)
            row: dict[str, Any] = {"batch": n}
            for label, s in servers.items():
                got = s.infer(body)
                if got.shape != want.shape:
                    doc["problems"].append(f"{label} batch {n}: shape {got.shape} != {want.shape}")
                    continue
                row[f"{label}_server_max_abs_diff"] = float(np.abs(got - want).max())
            acc.append(row)
        doc["accuracy_vs_inprocess_cpu"] = acc

        lat = []
        per_round = max(1, requests // rounds)
        for n in TIME_BATCHES:
            inputs = make_inputs(rng, n)
            body = oip_body(inputs)
            times: dict[str, list[float]] = {"gpu": [], "cpu": [], "inprocess": []}
            for s in servers.values():  # warm-up: connections, threads, the bucket's first call
                for _ in range(5):
                    s.infer(body)
            ref.predict(inputs)
            for _ in range(rounds):  # interleaved, so that drift hits both servers alike
                for label, s in servers.items():
                    times[label] += time_calls(lambda s=s, b=body: s.infer(b), per_round)
                times["inprocess"] += time_calls(lambda i=inputs: ref.predict(i), per_round)
            lat.append({"batch": n, "body_bytes": len(body),
                        "gpu_server": percentiles(times["gpu"]), "cpu_server": percentiles(times["cpu"]),
                        "inprocess_cpu_predict": percentiles(times["inprocess"])})
        doc["latency_sequential_http"] = lat
        # Read again after the load: the version still runs where it said.
        doc["servers"]["gpu"]["edgerec_model_info_after"] = servers["gpu"].model_info_metric()
    except Exception as exc:  # reported in the document, with the logs
        doc["problems"].append(f"{type(exc).__name__}: {exc}")
        doc.setdefault("gpu_served", False)
    finally:
        for s in servers.values():
            s.stop()
        ref.close()
        for label, s in servers.items():
            d = doc.setdefault("servers", {}).setdefault(label, {})
            d["exit_code"] = s.exit_code
            d["log_tail"] = s.log_lines()
        if ns:
            shutil.rmtree(ns, ignore_errors=True)
    doc["ok"] = bool(doc.get("gpu_served")) and not doc["problems"]
    return doc


# -- report (here) -----------------------------------------------------------------------


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50_ms']:.2f} / {p['p90_ms']:.2f}"


def report(result: Path) -> Path:
    """Copy ``check``'s JSON into docs/results and write the ``edge_server_gpu`` section of docs/benchmarks.md."""
    from _report import DOC, write_section

    doc = json.loads(result.read_text())
    gpu_name = doc["device"].split(",")[0].strip()
    dest = ROOT / "docs" / "results" / f"edge_server_gpu_{gpu_name.split()[-1].lower()}.json"
    dest.write_text(json.dumps(doc, indent=1) + "\n")
    begin, end = "<!-- BEGIN edge_server_gpu -->", "<!-- END edge_server_gpu -->"
    text = DOC.read_text()
    if begin not in text:  # the section's place: right after the edge server's
        anchor = "<!-- END edge_server -->"
        text = text.replace(anchor, f"{anchor}\n\n{begin}\n{end}", 1)
        DOC.write_text(text)
    g, c = doc["servers"]["gpu"], doc["servers"]["cpu"]
    info = g["edgerec_model_info"][0] if g["edgerec_model_info"] else {}
    adapter = next((ln.split("Selected adapter:")[1].strip() for ln in g["log_evidence"] if "Selected adapter" in ln),
                   "none named in the log")
    when = datetime.fromtimestamp(result.stat().st_mtime, UTC).strftime("%Y-%m-%d")
    lat = doc["latency_sequential_http"]
    rows = "\n".join(f"| {r['batch']} | {r['body_bytes']:,} | {_ms(r['gpu_server'])} | {_ms(r['cpu_server'])} | "
                     f"{r['inprocess_cpu_predict']['p50_ms']:.2f} |" for r in lat)
    acc = "\n".join(f"| {r['batch']} | {r['gpu_server_max_abs_diff']:.1e} | {r['cpu_server_max_abs_diff']:.1e} |"
                    for r in doc["accuracy_vs_inprocess_cpu"])
    n = lat[0]["gpu_server"]["n"]
    small, big = lat[0], lat[-1]
    wire = big["cpu_server"]["p50_ms"] - big["inprocess_cpu_predict"]["p50_ms"]
    sdk = ROOT / "docs" / "results" / f"sdk_gpu_{gpu_name.split()[-1].lower()}.json"
    sdk_gpu_ms = next((r["gpu_p50_ms"] for r in json.loads(sdk.read_text())["rows"] if r["batch"] == big["batch"]),
                      None) if sdk.exists() else None
    pays = big["gpu_server"]["p50_ms"] < 0.9 * big["cpu_server"]["p50_ms"]
    conclusion = (
        f"The GPU path {'works' if doc['ok'] else 'did not pass'} end to end through the server: loaded, "
        f"fully delegated: {info.get('fully_delegated')}, reported so in the metrics and the control API. "
        f"At batch {big['batch']} the GPU server's p50 is {big['gpu_server']['p50_ms']:.2f} ms against "
        f"{big['cpu_server']['p50_ms']:.2f} ms on the CPU: "
        + ("the GPU pays through the server. " if pays else
           f"no gain over JSON HTTP, since about {wire:.1f} ms of each request is the {big['body_bytes'] / 1e3:.0f} KB "
           f"JSON body and answer and HTTP (the call itself: {big['inprocess_cpu_predict']['p50_ms']:.2f} ms "
           "in process on 8 CPU threads"
           + (f", {sdk_gpu_ms:.2f} ms on the GPU in the SDK section above). " if sdk_gpu_ms else "). "))
        + f"At batch {small['batch']} the GPU server is "
        f"{small['gpu_server']['p50_ms'] - small['cpu_server']['p50_ms']:.2f} ms slower, the GPU call's fixed cost "
        "(the row is padded to the 16 bucket). With JSON bodies `--accelerator cpu` serves this model as fast or "
        "faster; a GPU edge node gains only where calls are big and the wire is cheap (the binary tensor "
        "extension, batches merged under concurrency), which this check does not measure.")
    body = f"""## Edge server on a GPU (`edgerec serve --accelerator gpu`, {gpu_name}, LiteRT WebGPU/Vulkan)

Machine: {gpu_name} (driver {doc["device"].split(",")[-1].strip()}), 16 cores, Python {doc["python"]}, \
ai-edge-litert {doc["ai_edge_litert"]}. Date: {when}. Commands: `python bench/edge_server_gpu.py build DIR` here, \
`python bench/edge_server_gpu.py check DIR` there (Vulkan/GL loaders unpacked from `.gl`, `VK_DRIVER_FILES` and \
`__EGL_VENDOR_LIBRARY_FILENAMES` set, the wheels of the base and `[edge]` dependencies installed with \
`pip --target`), `python bench/edge_server_gpu.py report JSON` here. Source: edgerec at \
{doc["edgerec_source"].split()[1][:12]} (a snapshot `build` takes of the committed `sdk` and `edge_server`). \
Raw: `{dest.relative_to(ROOT).as_posix()}`.

Two real `edgerec serve` processes side by side on loopback ports, one worker each, `--backend litert \
--threads 8`, over one folder holding the signed package of `bench/sdk_gpu.py` (DLRM-like MLP, \
{doc["package"]["bytes"] / 1e6:.1f} MB, fixed-batch buckets 16 and 256): `--accelerator gpu` and `--accelerator cpu`.
Requests are Open Inference Protocol v2 JSON to `/v2/models/heavy/infer` over keep-alive HTTP/1.1.

The GPU server {"served on **gpu**" if doc["gpu_served"] else "did **not** serve on the GPU"}: \
`/metrics` says `edgerec_model_info{{accelerator="{info.get("accelerator")}",\
fully_delegated="{info.get("fully_delegated")}"}}` (before and after the timed requests), the control API \
`/control/v1/models` says accelerator `{g["control_models"][0].get("accelerator")}`, and LiteRT's log \
"Selected adapter: {adapter}". Ready (`/v2/health/ready`) {g["ready_s"]:.1f} s after the process started \
(CPU server {c["ready_s"]:.1f} s); both stopped cleanly on SIGTERM (exit {g["exit_code"]} and {c["exit_code"]}).

Scores over HTTP against an in-process CPU `EdgeModel` (XNNPACK) run of the same package and inputs:

| batch | GPU server max abs diff | CPU server max abs diff |
|---|---|---|
{acc}

Latency of sequential requests, client-side (request to parsed answer), {n} per server and batch size in \
5 interleaved rounds, p50 / p90 ms; last column: `EdgeModel.predict` in the checking process, CPU, 8 threads:

| batch | body bytes | GPU server | CPU server | in-process CPU p50 |
|---|---|---|---|---|
{rows}

{conclusion}
"""
    write_section("edge_server_gpu", body)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verb", choices=("build", "check", "report"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--accelerator", default="gpu", help="what the first server asks for (default gpu)")
    ap.add_argument("--threads", type=int, default=8, help="LiteRT CPU threads per server and in process")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per server and batch size")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds the requests are split into")
    ap.add_argument("--working-tree", action="store_true",
                    help="import edgerec from this tree, not from the snapshot that build put in FOLDER/src")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                    help="folder for edge_server_gpu.json and the server logs (default $OUT)")
    args = ap.parse_args()
    if args.verb == "build":
        build(args.folder)
        return
    if args.verb == "report":
        print(report(args.folder))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="edge-server-gpu-"))
    out.mkdir(parents=True, exist_ok=True)
    doc = check(args.folder, args.accelerator, args.threads, args.requests, args.rounds, out, args.working_tree)
    text = json.dumps(doc, indent=1, default=str)
    (out / "edge_server_gpu.json").write_text(text + "\n")
    print(text)
    sys.exit(0 if doc["ok"] else 2)


if __name__ == "__main__":
    main()
