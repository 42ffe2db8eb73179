"""Fixtures for the edge server: real packages, real servers (``edgerec serve`` on granian, in a child
process) on loopback, a real Redis.

Packages are the SDK's demo CTR model built in the session (ONNX only, so no
TensorFlow is needed); servers listen on ephemeral 127.0.0.1 ports and are
closed at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support.net import free_port

from edgerec.edge_server import RunningServer, ServerConfig
from edgerec.sdk import testing as demo
from edgerec.sdk.keys import public_pem
from edgerec.sdk.manifest import FeatureSpec
from edgerec.sdk.package import PackageBuilder
from edgerec.sdk.vocab import Vocabulary

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TOKEN = "test-control-token-0123456789"


class Live:
    """A running server (a child process) and an HTTP client for it."""

    def __init__(self, running: RunningServer) -> None:
        self.running = running
        self.url = running.url
        self.http = httpx.Client(base_url=running.url, timeout=30)

    def versions(self) -> list[dict[str, Any]]:
        """What the control API lists (name, version, state, ...)."""
        return list(self.control("GET", "/models").json()["models"])

    def wait_released(self, name: str, count: float, timeout: float = 10.0) -> bool:
        """Until ``edgerec_model_unloads_total`` of ``name`` reaches ``count`` (retired versions closed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metric("edgerec_model_unloads_total", model=name) >= count:
                return True
            time.sleep(0.05)
        return False

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, **kw)

    def control(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
        return self.http.request(method, f"/control/v1{path}", headers=headers, **kw)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when absent)."""
        for family in _parse(self.get("/metrics").text):
            if family[0] == name and all(family[1].get(k) == v for k, v in labels.items()):
                return family[2]
        return 0.0

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(v for n, ls, v in _parse(self.get("/metrics").text)
                   if n == name and all(ls.get(k) == val for k, val in labels.items()))


def _parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _infer_body(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """An Open Inference Protocol JSON request for raw inputs."""
    types = {"U": "BYTES", "i": "INT64", "f": "FP32"}
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": types[v.dtype.kind],
                        "data": v.ravel().tolist()} for k, v in inputs.items()]}


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (at the time of asking)."""
    return free_port()


@pytest.fixture(scope="session")
def infer_body():
    """Builds an Open Inference Protocol JSON request from raw input arrays."""
    return _infer_body


@pytest.fixture(scope="session")
def trusted_key(tmp_path_factory, signing_key) -> Path:
    path = tmp_path_factory.mktemp("keys") / "publisher.pub"
    path.write_bytes(public_pem(signing_key.public_key()))
    return path


@pytest.fixture(scope="session")
def weights_v2() -> dict[str, np.ndarray]:
    return demo.ctr_weights(seed=1)


@pytest.fixture(scope="session")
def packages(tmp_path_factory, ctr_weights, weights_v2, signing_key) -> dict[str, Path]:
    """ctr v1 (in the model dir), ctr v2 and v3 (elsewhere, for control loads)."""
    root = tmp_path_factory.mktemp("packages")
    model_dir = root / "models"
    model_dir.mkdir()
    out = {"dir": model_dir}
    out["v1"] = demo.ctr_builder(ctr_weights, version=1).write(model_dir / "ctr-1.edgepkg", signing_key)
    out["v2"] = demo.ctr_builder(weights_v2, version=2).write(root / "ctr-2.edgepkg", signing_key)
    out["v3"] = demo.ctr_builder(ctr_weights, version=3).write(root / "ctr-3.edgepkg", signing_key)
    return out


@pytest.fixture(scope="session")
def features_pkg(tmp_path_factory, ctr_weights, signing_key) -> Path:
    """A CTR package with no item table: ``ctx`` is an item feature, read from the feature source."""
    b = PackageBuilder("ctrfs", 1, demo.ctr_signature())
    b.add_artifact("model.onnx", demo.onnx_ctr(ctr_weights), "onnx")
    b.add_feature(FeatureSpec("user_id", "user", "user"), Vocabulary(demo.USER_KEYS, oov_row=0, first_row=1))
    b.add_feature(FeatureSpec("item_id", "item", "item_id", id_range=(0, demo.N_ITEMS - 1)))
    b.add_feature(FeatureSpec("ctx", "item", "ctx"))
    b.set_warmup({"user_id": np.asarray(["u1", "u2"]), "item_id": np.arange(2),
                  "ctx": np.zeros((2, demo.N_CTX), np.float32)})
    path = tmp_path_factory.mktemp("fs") / "ctrfs-1.edgepkg"
    return b.write(path, signing_key)


@pytest.fixture(scope="session")
def feature_db(tmp_path_factory) -> tuple[Path, dict[str, list[float]]]:
    """SQLite source: users alice->u5, bob->u9; items 0..79 with a ctx vector each."""
    path = tmp_path_factory.mktemp("features") / "features.db"
    rng = np.random.default_rng(7)
    ctx = {str(i): rng.random(demo.N_CTX).round(3).tolist() for i in range(demo.N_ITEMS)}
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE user_features (id TEXT PRIMARY KEY, features TEXT)")
        db.execute("CREATE TABLE item_features (id TEXT PRIMARY KEY, features TEXT)")
        db.executemany("INSERT INTO user_features VALUES (?, ?)",
                       [("alice", json.dumps({"user": "u5"})), ("bob", json.dumps({"user": "u9"}))])
        db.executemany("INSERT INTO item_features VALUES (?, ?)",
                       [(k, json.dumps({"ctx": v})) for k, v in ctx.items()])
    return path, ctx


@pytest.fixture(scope="session")
def base_config(packages, trusted_key) -> ServerConfig:
    return ServerConfig(model_dir=packages["dir"], trusted_keys=(trusted_key,), port=0, access_log=False,
                        threads=1, control_token=TOKEN)


@pytest.fixture
def serve(base_config) -> Iterator[Callable[..., Live]]:
    """Start servers with config changes; all are closed at teardown."""
    started: list[Live] = []

    def start(**changes: Any) -> Live:
        config = base_config.replace(**changes)
        live = Live(RunningServer(config))
        started.append(live)
        return live

    yield start
    for live in started:
        live.http.close()
        live.running.close()


@pytest.fixture(scope="module")
def live(base_config) -> Iterator[Live]:
    """One shared server with ctr v1 for read-only tests."""
    running = RunningServer(base_config)
    lv = Live(running)
    yield lv
    lv.http.close()
    running.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A redis-server of our own on a free loopback port (else EDGEREC_TEST_REDIS_URL)."""
    binary = shutil.which("redis-server")
    if binary is None:
        url = os.environ.get("EDGEREC_TEST_REDIS_URL")
        if not url:
            if IN_CI:
                pytest.fail("no redis-server binary and EDGEREC_TEST_REDIS_URL is not set")
            pytest.skip("no Redis (install redis-server or set EDGEREC_TEST_REDIS_URL)")
        yield url
        return
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    if IN_CI:
                        pytest.fail("redis-server did not start")
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


