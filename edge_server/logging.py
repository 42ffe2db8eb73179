"""JSON log lines, each with the request id and trace ids of the request it belongs to.

Only the ``edgerec`` logger tree is configured, so an application embedding the
server keeps its own logging. Request fields come from Flask's ``g`` through a
filter, so code that logs does not pass them around.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from flask import has_request_context, request

from .context import STATE_KEY

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "edgerec-json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request fields, extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class RequestFilter(logging.Filter):
    """Adds request_id, trace_id and span_id to records logged inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            ctx = request.environ.get(STATE_KEY)
            if ctx is not None:
                record.request_id = ctx.request_id
                record.trace_id = ctx.trace.trace_id
                record.span_id = ctx.trace.span_id
        return True


def configure_logging(level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Send the ``edgerec`` loggers to ``stream`` (stderr) as JSON lines; idempotent."""
    logger = logging.getLogger("edgerec")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


__all__ = ["JsonFormatter", "RequestFilter", "configure_logging"]
