"""The HTTP tier both services run on: granian's WSGI server, its limits, and deadlines for bodies.

granian (Rust: hyper on tokio, epoll) accepts connections, reads request
heads and keeps idle and slow clients in its event loop, where they cost a
few kilobytes and no Python thread; it hands a request to one of
``threads`` Python threads once its head is complete. Used here only
through its public API (``granian.server.Server``, ``Interfaces.WSGI``,
``HTTP1Settings``): its worker processes share the port (``SO_REUSEPORT``)
and a dead one is replaced, so with two workers or more the port never
closes; TLS is its own (rustls).

What it leaves to the application, and this module adds:

- a request body is read on demand (``wsgi.input``), so the application
  checks sizes and credentials before a byte of it is read, but granian
  gives a read no deadline: a client that sends its headers and then
  trickles the body would hold a Python thread for as long as it likes.
  :class:`BodyDeadline` makes every read of a body happen on a helper thread
  (:class:`BodyReaders`) and gives up after ``body_timeout_s`` with a 408,
  so the server's own threads are never held by a slow client; the helper
  stays blocked (without the GIL) until the client sends or goes away, at
  most one per connection, and connections are capped.
- a request head has ``header_timeout_s`` from its first byte, and an idle
  keep-alive connection as long (hyper's header timer); a connection that
  never sends a byte is not timed out by granian 2.8 and stays until the
  client leaves: ``max_connections`` (granian's backpressure) caps them per
  worker, and new connections then wait in the kernel's accept queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import queue
import resource
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .http_errors import RequestRefusedError

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Environment variables a worker must not keep: granian copies os.environ into every request's environ.
SECRET_ENV = ("EDGEREC_CONTROL_TOKEN", "EDGEREC_ADMIN_TOKEN", "EDGEREC_ENROLL_TOKEN", "EDGEREC_DB_URL")


class RequestTimeoutError(RequestRefusedError):
    """The request body did not arrive within the body timeout."""

    status = 408
    code = "request_timeout"


@dataclass(frozen=True)
class HttpSettings:
    """Where and how one service listens; the limits apply per worker process."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    threads: int = 16  # Python threads that run requests
    max_connections: int = 4096  # open connections, idle ones included (granian's backpressure)
    header_timeout_s: float = 10.0  # a request head from its first byte; an idle keep-alive connection
    body_timeout_s: float = 30.0  # each read of a body (0: reads on the request's own thread, no deadline)
    max_header_bytes: int = 64 * 1024  # a request head must fit hyper's read buffer (else 431)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "port", "must be 0..65535"),
            (self.workers >= 1, "workers", "must be >= 1"),
            (self.threads >= 1, "threads", "must be >= 1"),
            (self.max_connections >= 1, "max_connections", "must be >= 1"),
            (0.1 <= self.header_timeout_s <= 3600, "header_timeout_s", "must be 0.1..3600 seconds"),
            (0 <= self.body_timeout_s <= 3600, "body_timeout_s", "must be 0..3600 seconds"),
            (8192 <= self.max_header_bytes <= 16 * 1024 * 1024, "max_header_bytes", "must be 8 KiB..16 MiB"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_key", "a TLS certificate and key go together"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigurationError(f"{name} {problem}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def replace(self, **changes: Any) -> HttpSettings:
        return dataclasses.replace(self, **changes)


def listen_address(host: str) -> str:
    """``host`` as the IP address granian binds (it takes no host names)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve host {host!r} ({exc.strerror})") from exc
    return str(infos[0][4][0])


def reserve_port(address: str, port: int) -> tuple[int, socket.socket]:
    """A port the workers can bind (a free one for 0), held by a bound, not listening socket.

    Every worker binds the port itself with ``SO_REUSEPORT``; the socket
    returned here joins that group without listening, so it takes no
    connections, and keeps port 0's pick from going to another program.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {address}:{port} ({exc.strerror})") from exc
    return int(sock.getsockname()[1]), sock


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def drop_secret_env() -> None:
    """Remove credentials from this process's environment (granian puts os.environ into every environ)."""
    for name in SECRET_ENV:
        os.environ.pop(name, None)


def metrics_after_fork() -> None:
    """In a forked worker: let prometheus_client write to ``PROMETHEUS_MULTIPROC_DIR`` if that is set.

    prometheus_client picks its value storage when it is imported; the
    server process imported it before it set the folder for its workers
    (importing the app does), so a worker picks again before it creates a
    metric.
    """
    if "prometheus_client" not in sys.modules or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def build_granian(target: str, settings: HttpSettings, log_config: dict[str, Any] | None = None) -> Any:
    """A granian server for the WSGI app that ``target`` ("module:factory") builds in each worker.

    ``serve()`` on it runs until SIGTERM or SIGINT. The factory is called
    once per worker process, after the fork; the caller hands it its
    settings through the environment or files. Constructing the server
    reconfigures logging (granian's ``dictConfig``): configure yours after.
    """
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    # A connection needs a descriptor in its worker; inherited by the forked workers.
    raise_fd_limit(settings.max_connections + settings.threads + 256)
    server = Server(
        target,
        address=listen_address(settings.host),
        port=settings.port,
        interface=Interfaces.WSGI,
        workers=settings.workers,
        blocking_threads=settings.threads,
        backpressure=settings.max_connections,
        backlog=max(1024, min(settings.max_connections, 65535)),
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout_s * 1000), keep_alive=True,
                                     max_buffer_size=settings.max_header_bytes),
        ssl_cert=settings.tls_cert,
        ssl_key=settings.tls_key,
        ssl_protocol_min=SSLProtocols.tls12,
        factory=True,
        respawn_failed_workers=True,
        workers_kill_timeout=15,
        log_access=False,
        log_dictconfig=log_config,
    )
    return server


# -- body deadlines ----------------------------------------------------------------------


class _Call:
    __slots__ = ("abandoned", "done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: bytes = b""
        self.error: BaseException | None = None
        self.abandoned = False


class BodyReaders:
    """Threads that wait for request bodies, so that a slow client holds one of these, not a request thread.

    Threads start on demand up to ``limit`` and end after ``idle_s`` without
    work. A reader blocked on a client that never sends holds no GIL and stays
    until the client sends or disconnects; ``limit`` should be at least the
    connection cap, or one client could queue everyone else's reads.
    """

    def __init__(self, limit: int, idle_s: float = 30.0) -> None:
        self.limit, self.idle_s = limit, idle_s
        self._jobs: queue.SimpleQueue[tuple[Callable[[int | None], bytes], int | None, _Call]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one token per thread waiting for work
        self._lock = threading.Lock()
        self.threads = 0

    def read(self, fn: Callable[[int | None], bytes], size: int | None, timeout_s: float) -> bytes:
        """``fn(size)`` on a reader thread; :class:`RequestTimeoutError` if it takes longer than ``timeout_s``."""
        call = _Call()
        self._jobs.put((fn, size, call))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self.threads < self.limit:
                    self.threads += 1
                    threading.Thread(target=self._run, name="edgerec-body-reader", daemon=True).start()
        if not call.done.wait(timeout_s):
            call.abandoned = True
            raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s", field="body")
        if call.error is not None:
            raise call.error
        return call.value

    def _run(self) -> None:
        while True:
            try:
                fn, size, call = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                # Leave only if no caller has counted on this thread (taken its idle token).
                if self._idle.acquire(blocking=False):
                    with self._lock:
                        self.threads -= 1
                    return
                continue
            try:
                call.value = fn(size)
            except BaseException as exc:  # handed to the caller
                call.error = exc
            call.done.set()
            self._idle.release()


class TimedInput:
    """``wsgi.input`` whose reads each finish within a deadline (a :class:`RequestTimeoutError` if not)."""

    def __init__(self, raw: Any, readers: BodyReaders, timeout_s: float) -> None:
        self.raw, self.readers, self.timeout_s = raw, readers, timeout_s
        self._failed = False

    def read(self, size: int | None = -1) -> bytes:
        if size == 0:
            return b""
        if self._failed:
            raise RequestTimeoutError("the request body timed out already", field="body")
        try:
            data: bytes = self.readers.read(self.raw.read, None if size is None or size < 0 else size,
                                            self.timeout_s)
        except RequestTimeoutError:
            self._failed = True
            raise
        return data

    def readline(self, size: int | None = -1) -> bytes:
        # Nothing in edgerec reads bodies by line; a plain loop over read keeps the deadline.
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            ch = self.read(1)
            if not ch:
                break
            out += ch
            if ch == b"\n":
                break
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """WSGI middleware: requests that carry a body read it through :class:`TimedInput`."""

    def __init__(self, app: WSGIApp, timeout_s: float, readers: BodyReaders) -> None:
        self.app, self.timeout_s, self.readers = app, timeout_s, readers

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        guard_body(environ, self.readers, self.timeout_s)
        return self.app(environ, start_response)


def guard_body(environ: dict[str, Any], readers: BodyReaders | None, timeout_s: float) -> None:
    """Put :class:`TimedInput` in front of ``environ``'s body when it has one (and ``readers``)."""
    if readers is None:
        return
    length = environ.get("CONTENT_LENGTH")
    if (length and length != "0") or "HTTP_TRANSFER_ENCODING" in environ:
        environ["wsgi.input"] = TimedInput(environ["wsgi.input"], readers, timeout_s)


@contextlib.contextmanager
def held(sock: socket.socket | None) -> Iterator[None]:
    """Close ``sock`` (a :func:`reserve_port` socket) when the block ends."""
    try:
        yield
    finally:
        if sock is not None:
            sock.close()


__all__ = [
    "SECRET_ENV",
    "BodyDeadline",
    "BodyReaders",
    "HttpSettings",
    "RequestTimeoutError",
    "TimedInput",
    "drop_secret_env",
    "guard_body",
    "held",
    "listen_address",
    "metrics_after_fork",
    "build_granian",
    "raise_fd_limit",
    "reserve_port",
]
