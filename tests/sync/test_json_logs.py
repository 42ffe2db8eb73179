"""JSON logs with request and trace ids across processes: ``edgerec sync serve --log-format json`` and
``edgerec node run --log-format json``, both exporting spans to a real OTLP receiver on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.fleet import EDGEREC, SyncService, ctr_package, enroll
from support.net import wait_for
from support.otlp import OtlpReceiver

pytestmark = pytest.mark.slow

CHECKIN = "/api/v1/node/checkin"


def _lines(text: str) -> list[dict[str, Any]]:
    """Every line as JSON (a line that is not fails the test, naming it)."""
    docs = []
    for line in text.splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:300]!r}")
    return docs


@pytest.fixture
def traced(tmp_path: Path, publisher) -> Iterator[tuple[SyncService, Path, dict[str, str], OtlpReceiver]]:
    receiver = OtlpReceiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    err = tmp_path / "sync.err"
    svc = SyncService(tmp_path / "sync", publisher.key.public_key(), env=otel)
    svc.start("--log-format", "json", err_log=err)
    try:
        svc.publish(ctr_package(1, publisher.key, seed=1), 1)
        svc.admin.rollout("ctr", 1, "stable", 100, [])
        yield svc, err, otel, receiver
    finally:
        svc.close()
        receiver.close()


def test_one_trace_id_joins_the_node_cycle_and_the_service_lines(traced, tmp_path):
    svc, err, otel, receiver = traced
    node = enroll(svc, tmp_path / "n1", "edge-1")
    try:
        run = subprocess.run([*EDGEREC, "node", "run", "--state-dir", str(node.state.dir), "--model-dir",
                              str(node.model_dir), "--once", "--log-format", "json"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, **otel})
    finally:
        node.state.close()
    assert run.returncode == 0, run.stderr
    daemon = _lines(run.stderr)
    traces = {d["trace_id"] for d in daemon if d["logger"].startswith("edgerec.sync.node")}
    assert len(traces) == 1, daemon  # one cycle, one trace
    (trace_id,) = traces
    assert wait_for(lambda: any(d.get("trace_id") == trace_id and d["msg"].startswith(f"POST {CHECKIN} ")
                                for d in _lines(err.read_text())), 10), err.read_text()[-3000:]
    service = _lines(err.read_text())
    checkin = next(d for d in service if d["logger"] == "edgerec.access" and d["msg"] == f"POST {CHECKIN} 200")
    assert checkin["trace_id"] == trace_id and checkin["endpoint"] == "node.checkin"
    # The whole cycle is one trace: its reports, envelopes and TUF downloads too.
    cycle = {d["endpoint"] for d in service if d.get("trace_id") == trace_id}
    assert {"node.reports", "node.checkin", "node.envelopes", "repository.metadata", "repository.targets"} <= cycle
    assert len(checkin["span_id"]) == 16 and len(checkin["request_id"]) == 16 and checkin["duration_ms"] >= 0
    # The trace is the one the check-in's client span carried to the service (exported by both processes).
    assert receiver.wait(lambda spans: any(
        s.service == "edgerec-node" and s.name == f"POST {CHECKIN}" and s.trace_id == trace_id for s in spans) and any(
        s.service == "edgerec-sync" and s.span_id == checkin["span_id"] and s.trace_id == trace_id for s in spans)
    ), receiver.spans


def test_request_ids_are_echoed_logged_and_bounded(traced):
    svc, err, _, _ = traced
    ok = httpx.get(f"{svc.url}/api/v1/health", headers={"X-Request-ID": "probe-42"}, timeout=10)
    hostile = "x" * 100_000
    long = httpx.get(f"{svc.url}/api/v1/health", headers={"X-Request-ID": hostile}, timeout=10)
    bad = httpx.get(f"{svc.url}/api/v1/health", headers={"X-Request-ID": "a b<c>"}, timeout=10)
    assert ok.headers["X-Request-ID"] == "probe-42"
    assert wait_for(lambda: "probe-42" in err.read_text(), 10)
    lines = _lines(err.read_text())
    (logged,) = [d for d in lines if d.get("request_id") == "probe-42"]
    assert logged["msg"] == "GET /api/v1/health 200" and logged["status"] == 200
    for resp in (long, bad):  # replaced by ids of our own, which the access lines carry
        rid = resp.headers["X-Request-ID"]
        assert len(rid) == 16 and rid not in (hostile, "a b<c>")
        assert wait_for(lambda rid=rid: any(d.get("request_id") == rid and d.get("status") == 200
                                            for d in _lines(err.read_text())), 10), rid
    text = err.read_text()
    assert "x" * 1000 not in text and "a b<c>" not in text
    assert max(len(line) for line in text.splitlines()) < 10_000


def test_node_run_serve_gives_its_edge_server_the_log_format_it_was_given(traced, tmp_path):
    svc = traced[0]
    node = enroll(svc, tmp_path / "n1", "edge-1")
    try:
        daemon = node.run("--log-format", "text", serve=True, interval=0.5)
        assert wait_for(lambda: node.serving() == {"ctr": 1}, 90), daemon.text()
        # The edge server serves v1 a moment before the daemon's load call returns and it says so.
        assert wait_for(lambda: "the edge server serves ctr v1" in daemon.text(), 30), daemon.text()
        assert daemon.stop() == 0
    finally:
        node.stop()
    text = daemon.text()  # the daemon's lines and its edge server's, which writes JSON unless told otherwise
    assert "INFO _granian: Spawning worker-1" in text
    assert "INFO edgerec.sync.node: the edge server serves ctr v1" in text
    assert not [line for line in text.splitlines() if line.startswith("{")]
