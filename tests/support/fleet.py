"""Real processes on loopback for node tests and the node benchmark.

``edgerec sync serve`` (stopped and started again on the same port),
nodes enrolled through the API, their daemons (``edgerec node run``) and edge
servers (``edgerec serve`` with the flags ``edgerec node edge-config`` gives,
or ``node run --serve``), and packages that fail in the ways a node must
survive: a warm-up that fails, a model that passes warm-up but fails on other
batch sizes, and large ones (slow to download).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.sdk import testing as demo
from edgerec.sdk.keys import public_pem
from edgerec.sdk.manifest import FeatureSpec
from edgerec.sdk.package import PackageBuilder
from edgerec.sdk.vocab import Vocabulary
from edgerec.sync.admin.client import AdminClient, Credentials
from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.service.admin_init import init_service

from .net import free_port, wait_for

EDGEREC = [sys.executable, "-m", "edgerec.sdk.cli"]
CONTROL_TOKEN = "fleet-control-token-0123456789"


def ctr_package(version: int, key: Ed25519PrivateKey, seed: int = 0, *, fixed_batch: int | None = None,
                bad_warmup: bool = False, padding: int = 0) -> bytes:
    """The demo CTR package; ``fixed_batch``: an ONNX graph that runs only that batch size while the
    manifest says dynamic (it passes warm-up, then fails real requests); ``bad_warmup``: warm-up rows
    with item ids out of range (the warm-up fails); ``padding``: that many random bytes more."""
    w = demo.ctr_weights(seed)
    b = PackageBuilder("ctr", version, demo.ctr_signature())
    b.add_artifact("model.onnx", demo.onnx_ctr(w, batch=fixed_batch), "onnx")
    b.add_feature(FeatureSpec("user_id", "user", "user"), Vocabulary(demo.USER_KEYS, oov_row=0, first_row=1))
    b.add_feature(FeatureSpec("item_id", "item", "item_id", id_range=(0, demo.N_ITEMS - 1)))
    b.add_feature(FeatureSpec("ctx", "context", "ctx", default=0.0))
    b.set_item_table({"item_id": np.arange(demo.N_ITEMS, dtype=np.int64)})
    rng = np.random.default_rng(1)
    items = np.full(8, demo.N_ITEMS + 100) if bad_warmup else np.arange(8)
    b.set_warmup({"user_id": np.asarray(demo.USER_KEYS[:8]), "item_id": items.astype(np.int64),
                  "ctx": rng.random((8, demo.N_CTX)).astype(np.float32)})
    if padding:
        b.add_file("padding.bin", os.urandom(padding))
    b.metadata = {"seed": seed}
    return b.build(key)


def infer_body(rows: int, seed: int = 0) -> dict[str, Any]:
    inputs, _ = demo.sample_inputs(rows, seed)
    types = {"U": "BYTES", "i": "INT64", "f": "FP32"}
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": types[v.dtype.kind],
                        "data": v.ravel().tolist()} for k, v in inputs.items()]}


class Proc:
    """A subprocess with its output in a log file (its stderr in ``err_log`` instead, when given)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 err_log: Path | None = None) -> None:
        self.log = log
        self._fh: IO[bytes] = log.open("ab")
        self._err: IO[bytes] | None = err_log.open("ab") if err_log is not None else None
        self.popen = subprocess.Popen([*EDGEREC, *args], stdout=self._fh, stderr=self._err or subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)
        self._close()

    def stop(self, timeout: float = 20) -> int:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._close()
        return int(self.popen.returncode)

    def _close(self) -> None:
        self._fh.close()
        if self._err is not None:
            self._err.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


class SyncService:
    """``edgerec sync serve`` on a fixed loopback port, over a data directory made by ``init_service``."""

    def __init__(self, root: Path, publisher_pub: Any, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.init = init_service(root / "data", root / "root-keys", [publisher_pub])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.proc: Proc | None = None
        self.admin = AdminClient(Credentials(self.url, self.init.admin_token))

    def start(self, *extra: str, timeout: float = 60, err_log: Path | None = None) -> SyncService:
        """Start it with ``extra`` flags; its stderr goes to ``err_log`` when given, else into sync.log."""
        self.proc = Proc(["sync", "serve", "--data-dir", str(self.init.data_dir), "--port", str(self.port), *extra],
                         self.root / "sync.log", self.env, err_log)
        if not wait_for(lambda: _get(f"{self.url}/api/v1/health") == 200 or not self.proc.alive, timeout) \
                or not self.proc.alive:
            raise RuntimeError(f"sync service did not start:\n{self.proc.text()[-3000:]}")
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.stop()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.admin.close()

    def publish(self, data: bytes, version: int, channel: str = "stable") -> dict[str, Any]:
        path = self.root / f"ctr-{version}.edgepkg"
        path.write_bytes(data)
        return self.admin.publish(path, channel)

    def token(self, tags: list[str] | None = None) -> str:
        return str(self.admin.create_enroll_token(tags or [], None)["token"])


@dataclass
class Node:
    """One enrolled node: its state, its model directory, its daemon and its edge server."""

    name: str
    root: Path
    state: NodeState
    edge_port: int = field(default_factory=free_port)
    daemon: Proc | None = None
    edge: Proc | None = None
    runs: int = 0

    @property
    def node_id(self) -> str:
        return self.state.identity().node_id

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def token_file(self) -> Path:
        path = self.root / "control.token"
        if not path.exists():
            path.write_text(CONTROL_TOKEN)
            path.chmod(0o600)
        return path

    def edge_flags(self) -> list[str]:
        """``edgerec serve`` flags from ``edgerec node edge-config`` (the command an operator runs)."""
        out = subprocess.run([*EDGEREC, "node", "edge-config", "--state-dir", str(self.state.dir), "--model-dir",
                              str(self.model_dir)], capture_output=True, text=True, check=True, timeout=60)
        return out.stdout.split()

    def start_edge(self, *extra: str, timeout: float = 90) -> Proc:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        # After a kill -9 of the server, its workers notice within half a second and exit; until then
        # they still answer on the port, and a readiness check would see them instead of the new server.
        if not wait_for(lambda: _get(f"{self.edge_url}/v2/health/ready") == 0, 10):
            raise RuntimeError(f"something still answers on {self.edge_url}")
        self.edge = Proc(["serve", *self.edge_flags(), "--port", str(self.edge_port), "--control-token-file",
                          str(self.token_file), "--no-access-log", "--max-delay-ms", "1", *extra],
                         self.root / "edge.log")
        if not wait_for(lambda: _get(f"{self.edge_url}/v2/health/ready") == 200 or not self.edge.alive, timeout) \
                or not self.edge.alive:
            raise RuntimeError(f"edge server did not start:\n{self.edge.text()[-3000:]}")
        return self.edge

    def run(self, *extra: str, serve: bool = False, once: bool = False, interval: float = 1.0,
            health_window: float = 1.0, log: str | None = None) -> Proc:
        """Start ``edgerec node run`` (driving our edge server, or ``--serve`` its own child)."""
        args = ["node", "run", "--state-dir", str(self.state.dir), "--model-dir", str(self.model_dir),
                "--interval", str(interval), "--health-window", str(health_window), *extra]
        if serve:
            settings = self.root / "edge.toml"  # no access log: the child writes into the daemon's log
            settings.write_text("[server]\naccess_log = false\n\n[batching]\nmax_delay_ms = 1\n")
            args += ["--serve", "--serve-port", str(self.edge_port), "--serve-config", str(settings)]
        else:
            args += ["--edge-server", self.edge_url, "--control-token-file", str(self.token_file)]
        if once:
            args.append("--once")
        self.runs += 1
        self.daemon = Proc(args, self.root / (log or f"daemon-{self.runs}.log"))
        return self.daemon

    def run_once(self, *extra: str, health_window: float = 1.0, timeout: float = 120) -> tuple[int, str]:
        proc = self.run(*extra, once=True, health_window=health_window)
        try:
            code = proc.popen.wait(timeout)
        finally:
            proc.stop()
        return code, proc.text()

    def control(self) -> httpx.Client:
        return httpx.Client(base_url=self.edge_url, timeout=10,
                            headers={"Authorization": f"Bearer {self._token()}"})

    def _token(self) -> str:
        own = self.state.control_token_file
        return own.read_text().strip() if own.exists() else CONTROL_TOKEN

    def serving(self) -> dict[str, int] | None:
        """What the edge server serves (name -> version), or None when it does not answer."""
        try:
            with self.control() as c:
                r = c.get("/control/v1/models")
            if r.status_code != 200:
                return None
            return {m["name"]: m["version"] for m in r.json()["models"] if m["state"] == "serving"}
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        for p in (self.daemon, self.edge):
            if p is not None:
                p.stop()
        self.state.close()


def enroll(sync: SyncService, root: Path, name: str, tags: list[str] | None = None) -> Node:
    root.mkdir(parents=True, exist_ok=True)
    enroll_node(root / "state", sync.url, sync.token(tags), name)
    return Node(name, root, NodeState(root / "state"))


def status_row(sync: SyncService, node: Node, model: str = "ctr") -> dict[str, Any]:
    rows = [r for r in sync.admin.status(model)["nodes"] if r["node_id"] == node.node_id]
    return rows[0] if rows else {}


def publisher_pem(key: Ed25519PrivateKey) -> bytes:
    return public_pem(key.public_key())


def log_lines(text: str, needle: str) -> Iterator[str]:
    return (line for line in text.splitlines() if needle in line)


def wait_serving(node: Node, version: int, timeout: float = 60) -> bool:
    return wait_for(lambda: (node.serving() or {}).get("ctr") == version, timeout, 0.1)


def pretty(doc: Any) -> str:
    return json.dumps(doc, indent=1, default=str)[:4000]


def monotonic_ms() -> float:
    return time.monotonic() * 1000
