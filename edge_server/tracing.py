"""W3C Trace Context: accept ``traceparent``, log its ids, return ours.

Without OpenTelemetry the server still takes part in a trace: it keeps the
caller's trace id, makes a span id of its own and answers with a
``traceparent`` naming it. With the optional ``opentelemetry`` package
installed (and an SDK tracer provider configured by the operator), each
request also becomes a real server span, a child of the caller's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import context, propagate, trace

        self._context, self._propagate, self._trace = context, propagate, trace
        self._tracer = trace.get_tracer("edgerec.edge_server", tracer_provider=provider)

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


def open_telemetry(provider: Any = None) -> OpenTelemetry | None:
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
    return OpenTelemetry(provider)


__all__ = ["OpenTelemetry", "Trace", "new_trace", "open_telemetry", "parse_traceparent"]
