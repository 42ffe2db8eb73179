"""Request ids, W3C traceparent, JSON logs, OpenTelemetry spans and Prometheus counters."""

from __future__ import annotations

import httpx
import pytest

from edgerec.sdk.tracing import parse_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u3"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [5]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 0.5, 0.5, 0.5]},
]}


def test_traceparent_is_continued_and_request_id_echoed(live):
    r = live.post("/v2/models/ctr/infer", json=ROW, headers={"traceparent": PARENT, "X-Request-ID": "req-42"})
    trace_id, span_id, flags = parse_traceparent(r.headers["traceparent"])
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and span_id != "00f067aa0ba902b7" and flags == "01"
    assert r.headers["X-Request-ID"] == "req-42"
    fresh = live.get("/v2/health/live", headers={"traceparent": "00-zz-bad", "X-Request-ID": "bad id!"})
    new_trace, _, _ = parse_traceparent(fresh.headers["traceparent"])
    assert new_trace != trace_id and len(fresh.headers["X-Request-ID"]) == 16


@pytest.mark.parametrize("header", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
])
def test_invalid_traceparents_start_a_new_trace(header):
    assert parse_traceparent(header) is None


def test_json_logs_carry_request_and_trace_ids(serve):
    live = serve(access_log=True)
    live.post("/v2/models/ctr/infer", json=ROW, headers={"traceparent": PARENT, "X-Request-ID": "req-7"})
    live.post("/v2/models/ctr/infer", json={"inputs": []}, headers={"X-Request-ID": "req-8"})
    records = live.running.log_lines()  # the server's stderr: JSON lines
    access = next(r for r in records if r.get("request_id") == "req-7" and r["logger"] == "edgerec.access")
    assert access["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and access["status"] == 200
    assert access["endpoint"] == "v2.infer" and access["model"] == "ctr" and access["version"] == "1"
    assert access["variant"] == "default" and access["msg"] == "POST /v2/models/ctr/infer 200"
    refused = [r for r in records if r.get("request_id") == "req-8"]
    assert {r["logger"] for r in refused} == {"edgerec.edge_server", "edgerec.access"}
    assert any("inputs" in r["msg"] for r in refused)


def test_opentelemetry_spans(base_config):
    """In process (the exporter is an object here), through httpx's WSGI transport."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from edgerec.edge_server import create_app

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(base_config, tracer_provider=provider)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://edge.test") as client:
        r = client.post("/v2/models/ctr/infer", json=ROW, headers={"traceparent": PARENT})
    app.extensions["edgerec"].close()
    (span,) = exporter.get_finished_spans()
    assert span.name == "v2.infer"
    assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert r.headers["traceparent"] == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
    assert span.attributes["edgerec.model"] == "ctr" and span.attributes["http.response.status_code"] == 200


@pytest.mark.slow
def test_edgerec_serve_exports_spans_over_otlp(base_config):
    """``edgerec serve`` with the standard OTLP variable: its worker exports real spans, children of the caller's."""
    from support.otlp import OtlpReceiver

    from edgerec.edge_server import RunningServer

    receiver = OtlpReceiver()
    server = RunningServer(base_config.replace(port=0), env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                             "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        r = httpx.post(server.url + "/v2/models/ctr/infer", json=ROW, headers={"traceparent": PARENT}, timeout=30)
        assert r.status_code == 200
        assert receiver.wait(lambda spans: any(s.name == "v2.infer" for s in spans)), receiver.spans
        span = next(s for s in receiver.spans if s.name == "v2.infer")
        assert (span.service, span.trace_id, span.parent_id, span.kind) == (
            "edgerec-edge-server", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 2)
        assert r.headers["traceparent"] == f"00-{span.trace_id}-{span.span_id}-01"
    finally:
        server.close()
        receiver.close()


def test_request_and_error_counters_move_exactly(live):
    labels = {"endpoint": "v2.infer", "model": "ctr", "version": "1", "variant": "default"}
    ok0 = live.metric("edgerec_requests_total", code="200", **labels)
    bad0 = live.metric("edgerec_requests_total", code="400", **labels)
    err0 = live.metric("edgerec_errors_total", endpoint="v2.infer", kind="invalid_input")
    lat0 = live.metric("edgerec_request_duration_seconds_count", **labels)
    for _ in range(3):
        assert live.post("/v2/models/ctr/infer", json=ROW).status_code == 200
    bad = {"inputs": [*ROW["inputs"][:2], {"name": "ctx", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert live.post("/v2/models/ctr/infer", json=bad).status_code == 400
    assert live.metric("edgerec_requests_total", code="200", **labels) == ok0 + 3
    assert live.metric("edgerec_requests_total", code="400", **labels) == bad0 + 1
    assert live.metric("edgerec_errors_total", endpoint="v2.infer", kind="invalid_input") == err0 + 1
    assert live.metric("edgerec_request_duration_seconds_count", **labels) == lat0 + 4
    assert live.metric("edgerec_model_info", model="ctr", version="1", backend="onnxruntime",
                       accelerator="cpu", serving="true") == 1
    assert live.metric("edgerec_model_loads_total", model="ctr", outcome="ok") == 1
    text = live.get("/metrics")
    assert text.headers["Content-Type"].startswith("text/plain")
    for family in ("edgerec_batch_size_rows", "edgerec_batch_queue_wait_seconds", "edgerec_model_swaps",
                   "edgerec_feature_cache_hits", "edgerec_events", "edgerec_model_load_failures"):
        assert f"# TYPE {family}" in text.text
