"""JSON log lines, each with the request id and trace ids of the work it belongs to.

What every edgerec process that serves or runs in the background writes
(``edgerec serve``, ``edgerec sync serve``, ``edgerec node run``, with
``--log-format json``; :class:`LogSettings`). Only the ``edgerec`` logger tree
is configured, so an application embedding a server keeps its own logging.
Request fields come from the scope the thread works for
(:mod:`~edgerec.sdk.log_context`: bound by a server's request hooks, or a node's
cycle) through a filter, so code that logs does not pass them around.

The access log writes one line per request through the ``edgerec.access``
logger (any handler an operator adds sees every record), but builds its
records without the stack walk and keyword handling of ``Logger.info``: at
thousands of requests a second those cost more than the line itself. With
``flush_ms`` (``--log-flush-ms``) lines are written in batches at most that
many milliseconds apart instead of one ``write`` per line; warnings and
errors are written at once, and nothing is lost at shutdown.

Lines are bounded whatever a client sent: the message and every text field
are cut to :data:`~edgerec.sdk.log_bounds.MAX_LOG_MESSAGE` characters, a
traceback to :data:`~edgerec.sdk.log_bounds.MAX_LOG_TRACEBACK`, and the
access log's path to :data:`~edgerec.sdk.http_errors.MAX_DETAIL`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing import util as mp_util
from typing import Any, TextIO

from .errors import ConfigurationError
from .http_errors import bounded
from .log_bounds import MAX_LOG_MESSAGE, MAX_LOG_TRACEBACK, cut
from .log_context import current_scope

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]  # optional: None falls back to the json module

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "edgerec-json"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request fields, extras."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        extra = fields.get("_extra")  # AccessLog's records name their extras
        if extra is None:
            extra = {k: v for k, v in fields.items() if k not in _STANDARD and k[:1] != "_"}
        extra = {k: cut(v, MAX_LOG_MESSAGE) if isinstance(v, str) else v for k, v in extra.items()}
        message = cut(record.getMessage(), MAX_LOG_MESSAGE)
        doc = self._doc(record.created, record.levelname.lower(), record.name, message, extra)
        if record.exc_info:
            doc["exc"] = cut(record.exc_text or self.formatException(record.exc_info), MAX_LOG_TRACEBACK)
        return _dumps(doc)

    def line(self, created: float, level: str, logger: str, msg: str, extra: dict[str, Any]) -> str:
        """What :meth:`format` writes for a record with these attributes (and no exception)."""
        return _dumps(self._doc(created, level, logger, msg, extra))

    def _doc(self, created: float, level: str, logger: str, msg: str, extra: dict[str, Any]) -> dict[str, Any]:
        sec = int(created)
        cached = self._second
        if cached[0] != sec:
            cached = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
            self._second = cached
        msecs = int((created - sec) * 1000)  # as LogRecord.msecs
        return {"ts": f"{cached[1]}.{msecs:03d}Z", "level": level, "logger": logger, "msg": msg, **extra}


def _dumps(doc: dict[str, Any]) -> str:
    if orjson is not None:
        try:
            # dataclasses and datetimes go to str() as with json (orjson would expand them itself)
            return orjson.dumps(doc, default=str, option=_PASSTHROUGH).decode()
        except TypeError:  # e.g. a key that is not a string: json converts it
            pass
    return json.dumps(doc, default=str, separators=(",", ":"))


_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME if orjson is not None else 0


class RequestFilter(logging.Filter):
    """Adds request_id (inside a request), trace_id and span_id to records logged in a bound scope."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            ctx = current_scope()
            if ctx is not None:
                if ctx.request_id:
                    record.request_id = ctx.request_id
                record.trace_id = ctx.trace.trace_id
                record.span_id = ctx.trace.span_id
        return True


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """A stream handler that can batch its writes (``flush_ms`` > 0) from a timer thread."""

    def __init__(self, stream: TextIO, flush_ms: float = 0.0) -> None:
        super().__init__(stream)
        self.flush_s = max(0.0, flush_ms) / 1000
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if self.flush_s > 0:
            self._timer = threading.Thread(target=self._tick, name="edgerec-log-flush", daemon=True)
            self._timer.start()
            # A granian worker ends through multiprocessing, which runs its finalizers but not atexit (where
            # logging flushes): without this its last batched lines were lost. Priority 0 runs after the
            # servers' own finalizers (which may log); in a plain process multiprocessing calls it at exit.
            mp_util.Finalize(None, _close_at_exit, args=(weakref.ref(self),), exitpriority=0)

    def emit(self, record: logging.LogRecord) -> None:
        if self.flush_s <= 0:
            super().emit(record)
            return
        try:
            self._lines.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING or len(self._lines) >= 512:
                self._write()
        except Exception:  # as logging does: never let a log line fail the request
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Write an INFO line formatted elsewhere, as :meth:`emit` would (errors raise)."""
        self.acquire()
        try:
            if self.flush_s <= 0:
                self.stream.write(line + self.terminator)
                self.stream.flush()
                return
            self._lines.append(line + self.terminator)
            if len(self._lines) >= 512:
                self._write()
        finally:
            self.release()

    def _write(self) -> None:
        """Write the batched lines (handler lock held)."""
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self.stream.write(text)
        self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                self._write()
            elif self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()

    def _tick(self) -> None:
        while not self._stop.wait(self.flush_s):
            if self._lines:
                try:
                    self.flush()
                except Exception:  # noqa: S112 - a closed stream at exit: nothing to write to
                    continue

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError, ValueError):  # the stream is already closed
            self.flush()
        super().close()


def duration_ms(seconds: float) -> float:
    """Milliseconds to 3 decimals: what ``round(seconds * 1e3, 3)`` gives (the same for a million random
    durations), without its decimal conversion, which costs a microsecond or two of every request."""
    return round(seconds * 1e6) / 1000


class AccessLog:
    """One ``edgerec.access`` record per request, built cheaply.

    When the logging setup is exactly what :func:`configure_logging` builds (the
    JSON handler alone, no other handler or filter on the way), the line is
    formatted and handed to that handler directly: the same line, without a
    ``LogRecord`` and the logging machinery's walk. Anything else configured
    (another handler, a filter, propagation to the root) gets real records.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("edgerec.access")
        proto = logging.LogRecord(self.logger.name, logging.INFO, __file__, 0, "", None, None, "access")
        self._template = dict(vars(proto))
        self._start = proto.created - proto.relativeCreated / 1000

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, method: str, path: str, code: int, extra: dict[str, Any]) -> None:
        """Log ``METHOD PATH CODE`` with ``extra`` fields (ours: the caller checked :meth:`enabled`)."""
        now = time.time()
        method, path = method[:32], bounded(path)  # the client's; the other fields are ours
        direct = self._direct()
        if direct is not None:
            handler, formatter = direct
            try:
                handler.write_line(formatter.line(now, "info", self.logger.name, f"{method} {path} {code}", extra))
                return
            except Exception:  # noqa: S110 - the record below goes through logging, which reports the failure
                pass
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(self._template)
        fields.update(
            msg="%s %s %d", args=(method, path, code), created=now, msecs=int((now - int(now)) * 1000) + 0.0,
            relativeCreated=(now - self._start) * 1000, thread=threading.get_ident(),
            threadName=threading.current_thread().name, process=os.getpid(),
        )
        fields.update(extra)  # as ``extra=`` would, for any handler
        fields["_extra"] = extra
        self.logger.handle(record)

    def _direct(self) -> tuple[JsonLinesHandler, JsonFormatter] | None:
        """The JSON handler (and its formatter) when it alone would see the record, unfiltered; else None."""
        lg = self.logger
        parent = lg.parent
        if (lg.handlers or lg.filters or not lg.propagate or lg.disabled or parent is None
                or parent.name != "edgerec" or parent.filters or parent.propagate or len(parent.handlers) != 1):
            return None
        handler, formatter = parent.handlers[0], parent.handlers[0].formatter
        if (type(handler) is not JsonLinesHandler or handler.level > logging.INFO
                or type(formatter) is not JsonFormatter
                or any(type(f) is not RequestFilter for f in handler.filters)):
            return None
        return handler, formatter


def _close_at_exit(ref: weakref.ref[JsonLinesHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler.close()


def configure_logging(level: str = "info", stream: TextIO | None = None, flush_ms: float = 0.0) -> logging.Handler:
    """Send the ``edgerec`` loggers to ``stream`` (stderr) as JSON lines; idempotent.

    ``flush_ms`` > 0 batches the writes (at most that many milliseconds apart).
    """
    logger = logging.getLogger("edgerec")
    _remove_handler(logger)
    handler = JsonLinesHandler(stream or sys.stderr, flush_ms)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogSettings:
    """How a process writes its log lines: ``--log-format``, ``--log-level``, ``--log-flush-ms``, ``--access-log``.

    ``text`` keeps the process's own plain lines (set up by its command);
    ``flush_ms`` batches JSON lines only.
    """

    format: str = "json"
    level: str = "info"
    flush_ms: float = 0.0
    access: bool = True

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigurationError(f"log format: expected one of {', '.join(LOG_FORMATS)}, got {self.format!r}")
        if self.level.lower() not in LOG_LEVELS:
            raise ConfigurationError(f"log level: expected one of {', '.join(LOG_LEVELS)}, got {self.level!r}")
        if not 0 <= self.flush_ms <= 10_000:
            raise ConfigurationError(f"log flush ms: expected 0..10000, got {self.flush_ms!r}")

    def apply(self, stream: TextIO | None = None) -> None:
        """Set up this process's ``edgerec`` loggers (again after a fork or granian's logging setup).

        JSON also turns the root logger's handlers (libraries' warnings) and
        Python warnings into JSON lines, so every line of the process parses.
        """
        logger = logging.getLogger("edgerec")
        if self.format == "text":
            if _remove_handler(logger):
                logger.propagate = True  # back to the command's plain handler
            logger.setLevel(self.level.upper())
            return
        configure_logging(self.level, stream, self.flush_ms)
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler:  # the command's own (basicConfig), not a test's capture
                h.setFormatter(JsonFormatter())
        logging.captureWarnings(True)


def _remove_handler(logger: logging.Logger) -> bool:
    """Close and remove the handler :func:`configure_logging` added, if any; whether there was one."""
    found = False
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
            h.close()
            found = True
    return found


__all__ = ["LOG_FORMATS", "LOG_LEVELS", "AccessLog", "JsonFormatter", "duration_ms", "JsonLinesHandler", "LogSettings",
           "RequestFilter", "configure_logging"]
