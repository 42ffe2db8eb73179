"""The thread's log scope: the ids JSON log lines carry and outgoing calls continue (no OpenTelemetry here)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from edgerec.sdk.errors import ConfigurationError
from edgerec.sdk.json_logs import LogSettings
from edgerec.sdk.log_context import LogScope, current_scope, log_scope, request_id
from edgerec.sdk.tracing import client_span, local_span, new_trace, parse_traceparent


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger("edgerec")
    level, propagate = root.level, root.propagate
    out = io.StringIO()
    LogSettings("json", "debug").apply(out)
    yield out
    LogSettings("text").apply()  # the JSON handler off again
    root.setLevel(level)
    root.propagate = propagate
    logging.captureWarnings(False)


def _docs(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_cycle_scope_gives_its_lines_and_its_calls_one_trace(stream):
    log = logging.getLogger("edgerec.sync.node")
    with local_span("node cycle", "edgerec.test") as trace, log_scope(LogScope("", trace)):
        log.info("inside")
        with client_span("POST /x", "edgerec.test") as first, client_span("GET /y", "edgerec.test") as second:
            pass
    log.info("outside")
    inside, outside = _docs(stream)
    assert inside["trace_id"] == trace.trace_id and inside["span_id"] == trace.span_id
    assert "request_id" not in inside  # a cycle is not a request
    assert "trace_id" not in outside and current_scope() is None
    calls = [parse_traceparent(first), parse_traceparent(second)]
    assert [c[0] for c in calls if c] == [trace.trace_id, trace.trace_id]
    assert calls[0] != calls[1]  # each call has a span id of its own


def test_a_request_scope_labels_lines_and_scopes_nest(stream):
    log = logging.getLogger("edgerec.sync")
    outer = LogScope("req-1", new_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
    with log_scope(outer):
        with log_scope(LogScope("req-2", new_trace(None))):
            log.warning("inner")
        log.info("outer %s", "again")
    inner, again = _docs(stream)
    assert inner["request_id"] == "req-2" and inner["level"] == "warning"
    assert again == {**again, "request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                     "msg": "outer again"}


def test_without_a_scope_a_call_starts_its_own_trace():
    with client_span("GET /z", "edgerec.test") as a, client_span("GET /z", "edgerec.test") as b:
        pass
    ids = [parse_traceparent(a), parse_traceparent(b)]
    assert ids[0] and ids[1] and ids[0][0] != ids[1][0]


def test_request_ids_from_callers_are_kept_only_when_short_and_plain():
    assert request_id("probe-42:a.b_c") == "probe-42:a.b_c"
    for bad in (None, "", "x" * 65, "a b", "x\r\nSet-Cookie: a=b", "é"):
        made = request_id(bad)
        assert made != bad and len(made) == 16 and int(made, 16) >= 0


def test_log_settings_are_checked():
    for kwargs, field in (({"format": "xml"}, "format"), ({"level": "loud"}, "level"), ({"flush_ms": -1.0}, "flush")):
        with pytest.raises(ConfigurationError, match=field):
            LogSettings(**kwargs)


def test_access_durations_are_rounded_as_round_to_three_places():
    import random

    from edgerec.sdk.json_logs import duration_ms

    rng = random.Random(7)
    for s in [0.0, 1e-7, 0.0004995, 1.0, *(rng.uniform(0, 5) for _ in range(100_000))]:
        assert duration_ms(s) == round(s * 1e3, 3), s
