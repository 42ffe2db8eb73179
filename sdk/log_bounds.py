"""Log lines of bounded size, whatever a client sent.

A refused 7 MB input name must not become a 7 MB log line: services cut what
they log with :func:`~edgerec.sdk.http_errors.bounded`, and
:class:`BoundedRecords` is the net under that for whole loggers: it cuts a
record's message (arguments merged in) and its traceback text before any
handler formats them.
"""

from __future__ import annotations

import logging

MAX_LOG_MESSAGE = 2000
MAX_LOG_TRACEBACK = 8000


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


class BoundedRecords(logging.Filter):
    """Cuts records' messages to :data:`MAX_LOG_MESSAGE` and tracebacks to :data:`MAX_LOG_TRACEBACK` characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as logging does
            return True
        if len(message) > MAX_LOG_MESSAGE:
            record.msg, record.args = cut(message, MAX_LOG_MESSAGE), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > MAX_LOG_TRACEBACK:
            record.exc_text = cut(record.exc_text, MAX_LOG_TRACEBACK)
        return True


def bound_logger(name: str) -> logging.Logger:
    """The logger ``name`` with a :class:`BoundedRecords` filter (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, BoundedRecords) for f in logger.filters):
        logger.addFilter(BoundedRecords())
    return logger


__all__ = ["MAX_LOG_MESSAGE", "MAX_LOG_TRACEBACK", "BoundedRecords", "bound_logger", "cut"]
