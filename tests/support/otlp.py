"""A real OTLP/HTTP trace receiver on loopback: what a collector (Jaeger, Tempo, the OTel Collector) gets."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .net import wait_for


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int  # 2 server, 3 client (OTLP's SpanKind)


class OtlpReceiver:
    """``POST /v1/traces`` (protobuf), decoded into :class:`Span` records; ``url`` is the endpoint base."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.spans: list[Span] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        with lock:
                            spans.extend(Span(attrs.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(),
                                              s.parent_span_id.hex(), s.kind) for s in ss.spans)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
        return wait_for(lambda: predicate(list(self.spans)), timeout, 0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
