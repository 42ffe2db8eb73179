"""JSON log lines: batched writes (--log-flush-ms) and the access log's cheap records."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from edgerec.edge_server.config import ServerConfig
from edgerec.edge_server.context import RequestState
from edgerec.edge_server.errors import ConfigError
from edgerec.edge_server.json_logs import AccessLog
from edgerec.sdk.json_logs import configure_logging
from edgerec.sdk.log_context import bind_scope
from edgerec.sdk.tracing import new_trace


@pytest.fixture
def logs() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    stream = io.StringIO()
    handlers: list[logging.Handler] = []
    yield stream, handlers
    root = logging.getLogger("edgerec")
    for h in handlers:
        root.removeHandler(h)
        h.close()
    root.propagate = True


def _state() -> RequestState:
    st = RequestState("req-1", new_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), 0.0)
    st.serve("ctr", "2", "b")
    st.endpoint = "rank.rank"
    return st


def test_access_records_match_the_logging_api(logs):
    stream, handlers = logs
    handlers.append(configure_logging("info", stream))
    st = _state()
    AccessLog().write("POST", "/v1/rank", 200, st, 0.0012345)
    logging.getLogger("edgerec.access").info("%s %s %d", "POST", "/v1/rank", 200, extra={
        "request_id": "req-1", "trace_id": st.trace.trace_id, "span_id": st.trace.span_id, "endpoint": "rank.rank",
        "status": 200, "duration_ms": 1.234, "model": "ctr", "version": "2", "variant": "b"})
    fast, slow = (json.loads(line) for line in stream.getvalue().splitlines())
    fast.pop("ts"), slow.pop("ts")
    assert fast == slow
    assert fast["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and fast["msg"] == "POST /v1/rank 200"


def test_other_handlers_see_the_access_fields(logs):
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    stream, handlers = logs
    handlers.append(configure_logging("info", stream))
    keep = Keep()
    access = logging.getLogger("edgerec.access")
    access.addHandler(keep)
    try:
        AccessLog().write("GET", "/v2", 404, _state(), 0.001)
    finally:
        access.removeHandler(keep)
    (record,) = seen
    assert record.request_id == "req-1" and record.status == 404 and record.getMessage() == "GET /v2 404"  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO and record.threadName and record.created > 0


def test_batched_lines_are_written_within_the_interval_and_at_close(logs):
    stream, handlers = logs
    handler = configure_logging("info", stream, flush_ms=100)
    handlers.append(handler)
    log = logging.getLogger("edgerec.test")
    log.info("one")
    assert stream.getvalue() == ""  # batched
    deadline = time.monotonic() + 5
    while "one" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads(stream.getvalue())["msg"] == "one"
    log.info("two")
    log.warning("three")  # a warning writes the batch at once, in order
    assert [json.loads(x)["msg"] for x in stream.getvalue().splitlines()] == ["one", "two", "three"]
    log.info("four")
    handler.close()
    assert json.loads(stream.getvalue().splitlines()[-1])["msg"] == "four"


def test_records_inside_a_request_carry_its_ids(logs):
    stream, handlers = logs
    handlers.append(configure_logging("info", stream))
    bind_scope(_state())
    try:
        logging.getLogger("edgerec.edge_server").info("refused (x): y")
    finally:
        bind_scope(None)
    logging.getLogger("edgerec.edge_server").info("outside")
    inside, outside = (json.loads(x) for x in stream.getvalue().splitlines())
    assert inside["request_id"] == "req-1" and inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "request_id" not in outside


def test_log_flush_ms_is_a_checked_setting(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[server]\nlog_flush_ms = 200\n")
    assert ServerConfig(**ServerConfig.file_values(path)).log_flush_ms == 200.0
    with pytest.raises(ConfigError):
        ServerConfig(log_flush_ms=-1)



def test_batched_lines_reach_the_log_when_the_server_stops(base_config, tmp_path):
    """A worker process ends through multiprocessing (no atexit): its last batched lines are written anyway."""
    import httpx

    from edgerec.edge_server.server import RunningServer

    log = tmp_path / "server.log"
    # A flush interval no test waits for: only the exit can write these lines.
    running = RunningServer(base_config.replace(access_log=True, log_flush_ms=10_000.0, workers=2), log_path=log)
    try:
        with httpx.Client(base_url=running.url) as http:
            for i in range(3):
                assert http.get("/v2/health/ready", headers={"X-Request-ID": f"last-{i}"}).status_code == 200
    finally:
        assert running.close() == 0
    ids = {json.loads(line).get("request_id") for line in log.read_text().splitlines() if line.startswith("{")}
    assert {"last-0", "last-1", "last-2"} <= ids
