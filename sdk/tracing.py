"""W3C Trace Context and OpenTelemetry, for every edgerec process.

Without OpenTelemetry a server still takes part in a trace: it keeps the
caller's trace id, makes a span id of its own and answers with a
``traceparent`` naming it; a client sends one it made. With the optional
``opentelemetry`` packages installed and an OTLP endpoint configured
(:func:`configure_otlp`: ``--otlp-endpoint`` or the standard
``OTEL_EXPORTER_OTLP_*`` variables), requests and node cycles also become real
spans, exported over OTLP/HTTP, children of the caller's.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util as mp_util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .log_context import current_scope
from .random_hex import random_hex

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


@dataclass(slots=True)
class Trace:
    """This request's place in a trace."""

    trace_id: str
    span_id: str
    parent_id: str | None
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(header: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid header, else None (a new trace starts)."""
    if not header or len(header) > 512:
        return None
    m = _TRACEPARENT.match(header.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if version == "00" and rest:
        return None  # version 00 has exactly four fields
    return trace_id, parent_id, flags


def new_trace(header: str | None, ids: str | None = None) -> Trace:
    """Continue the caller's trace (or start one) with a new span id.

    ``ids``: at least 48 random hex digits to take the ids from (else drawn here).
    """
    parsed = parse_traceparent(header) if header else None
    if ids is None:
        ids = random_hex(24)
    if parsed is None:
        return Trace(ids[:32], ids[32:48], None)
    trace_id, parent_id, flags = parsed
    return Trace(trace_id, ids[32:48], parent_id, flags)


class OpenTelemetry:
    """Server spans through the OpenTelemetry API, when it is installed."""

    def __init__(self, provider: Any = None, instrumentation: str = "edgerec.edge_server") -> None:
        from opentelemetry import context, propagate, trace

        self._context, self._propagate, self._trace = context, propagate, trace
        self._tracer = trace.get_tracer(instrumentation, tracer_provider=provider)

    def start(self, name: str, headers: Any) -> tuple[Any, Any, Trace | None]:
        """(span, context token, the span's ids when it records, else None)."""
        parent = self._propagate.extract({"traceparent": headers.get("traceparent", "")})
        span = self._tracer.start_span(name, context=parent, kind=self._trace.SpanKind.SERVER)
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        sc = span.get_span_context()
        if not sc.is_valid:
            return span, token, None
        parent_sc = self._trace.get_current_span(parent).get_span_context()
        return span, token, Trace(
            f"{sc.trace_id:032x}", f"{sc.span_id:016x}",
            f"{parent_sc.span_id:016x}" if parent_sc.is_valid else None, f"{int(sc.trace_flags):02x}",
        )

    def end(self, span: Any, token: Any, name: str, status: int, attributes: dict[str, Any]) -> None:
        span.update_name(name)
        span.set_attribute("http.response.status_code", status)
        for key, value in attributes.items():
            if value:
                span.set_attribute(key, value)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()
        self._context.detach(token)


def open_telemetry(provider: Any = None, instrumentation: str = "edgerec.edge_server") -> OpenTelemetry | None:
    """The OpenTelemetry bridge when the package is installed and a tracer provider is set.

    Without a configured provider every span would be a no-op, so the request
    path skips the API altogether.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if provider is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return OpenTelemetry(provider, instrumentation)


@contextlib.contextmanager
def client_span(name: str, instrumentation: str, attributes: dict[str, Any] | None = None) -> Iterator[str]:
    """A client span around an outgoing call; yields the ``traceparent`` to send with it.

    With a tracer provider configured the span is real (a child of the current
    one, exported); without, the header still carries ids made here (in the
    trace of this thread's log scope, if one is bound), so the callee's logs
    can be joined to ours.
    """
    bridge = open_telemetry(None, instrumentation)
    if bridge is None:
        scope = current_scope()
        yield new_trace(scope.trace.traceparent if scope is not None else None).traceparent
        return
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer(instrumentation)
    with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes or {}) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            yield carrier.get("traceparent") or new_trace(None).traceparent
        except Exception as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise


@contextlib.contextmanager
def local_span(name: str, instrumentation: str) -> Iterator[Trace]:
    """A span of work this process starts itself (a node's cycle); yields its ids.

    Bind them as the thread's log scope: the block's log lines carry its trace
    id, and so do the calls :func:`client_span` makes inside it (their spans
    are its children), whether OpenTelemetry is configured or not.
    """
    bridge = open_telemetry(None, instrumentation)
    if bridge is None:
        yield new_trace(None)
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(instrumentation)
    with tracer.start_as_current_span(name, kind=trace.SpanKind.INTERNAL) as span:
        sc = span.get_span_context()
        if not sc.is_valid:  # not recorded: ids of our own, as without OpenTelemetry
            yield new_trace(None)
            return
        yield Trace(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", None, f"{int(sc.trace_flags):02x}")


OTLP_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def check_otlp_endpoint(url: str) -> str:
    """An ``--otlp-endpoint``: the collector's http(s) base URL (OTLP/HTTP adds ``/v1/traces``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"--otlp-endpoint: expected an http(s) URL such as http://127.0.0.1:4318, got {url!r}")
    return url.rstrip("/")


def configure_otlp(service_name: str, endpoint: str | None = None) -> Any:
    """Export this process's spans over OTLP/HTTP, when an endpoint is configured; the tracer provider or None.

    ``endpoint`` (a flag: the collector's base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT``)
    wins over the standard variables, which the exporter reads itself;
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off and
    ``OTEL_SERVICE_NAME`` renames the service. Call it in each process that
    serves (in every worker, after the fork: the exporter's thread does not
    survive one); spans still queued are sent when the process ends.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() != "otlp":
        return None
    if not endpoint and not any(os.environ.get(k) for k in OTLP_ENV):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: edgerec exports http/protobuf only")
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigurationError("an OTLP endpoint is configured but the OpenTelemetry packages are not "
                                 "installed: pip install 'edgerec[otel]'") from exc
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # granian's workers end through multiprocessing, which runs its finalizers but not atexit's.
    mp_util.Finalize(None, provider.shutdown, exitpriority=20)
    return provider


__all__ = ["OTLP_ENV", "OpenTelemetry", "Trace", "check_otlp_endpoint", "client_span", "configure_otlp",
           "local_span", "new_trace", "open_telemetry", "parse_traceparent"]
