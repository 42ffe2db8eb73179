"""Running the app on waitress: one process, a thread (tests), or several workers.

Several workers share one listening socket that the supervisor binds and
hands down; each loads the models itself, and the supervisor restarts a
worker that dies. Metrics are summed across workers through prometheus
client's multiprocess directory; workers reach each other for control
operations on private loopback ports (see :mod:`.control`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask
from waitress import trigger
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import WSGITask
from waitress.wasyncore import close_all

from edgerec.sdk.files import write_atomic

from .app import PEERS_DIR, EdgeServer, create_app
from .config import ServerConfig, read_token
from .repository import pin_mmap_threshold

log = logging.getLogger("edgerec.edge_server.server")
RESTARTS_PER_MINUTE = 5


def make_server(app: Flask, config: ServerConfig, sockets: list[socket.socket] | None = None) -> Any:
    """A waitress server for ``app`` (on ``sockets`` when given, else host:port)."""
    adj: dict[str, Any] = {
        "threads": config.http_threads,
        "ident": "edgerec",
        # Flask answers bodies over max_body_bytes with a JSON 413; waitress's own cap (a plain
        # text 413 before the app sees the request) is a backstop for absurd sizes only.
        "max_request_body_size": max(4 * config.max_body_bytes, 64 * 1024 * 1024),
        "connection_limit": 1000,
        "backlog": 1024,
        "channel_timeout": 120,
        "expose_tracebacks": False,
        "clear_untrusted_proxy_headers": True,
    }
    if sockets is not None:
        server = create_server(app, sockets=sockets, **adj)
    else:
        server = create_server(app, host=config.host, port=config.port, **adj)
    queue_log = QueueDepthLog(logging.getLogger("waitress.queue"))
    # types-waitress declares a Logger; waitress only calls queue_logger.warning(msg, depth).
    server.task_dispatcher.queue_logger = queue_log  # type: ignore[assignment]  # a duck-typed Logger
    # One listener (a TcpWSGIServer) or several (a MultiSocketServer over listeners in its socket map).
    for listener in [server, *(getattr(server, "map", None) or {}).values()]:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = Channel
            pipe: object = listener.trigger  # types-waitress says int; it is a trigger.trigger
            if type(pipe) is trigger.trigger and os.name == "posix":
                pipe.__class__ = Trigger
    return server


class Trigger(trigger.trigger):
    """waitress's wake-up pipe for its I/O loop, written to only when no wake-up is pending.

    Every answered request pulls the trigger (a ``write`` that releases the
    GIL, see :class:`Task`); under load a dozen pulls land between two reads of
    the pipe, and all but the first add nothing. The flag is cleared once the
    loop has drained the pipe and before it runs the queued thunks and looks at
    the channels again, so a skipped pull is never lost; clearing it before
    the drain could swallow a pull's byte and leave the flag set.
    """

    _pending = False

    def _physical_pull(self) -> None:
        if not self._pending:
            self._pending = True
            super()._physical_pull()  # type: ignore[misc]  # types-waitress leaves out this private method

    def recv(self, size: int) -> bytes:
        try:
            data: bytes = super().recv(size)
        finally:
            self._pending = False
        return data


class Task(WSGITask):
    """waitress's WSGI task, sending a response's header and (small) body in one ``send``.

    waitress flushes every write at once (``send_bytes`` is 1), so the header
    and the body went out in two system calls. Each releases the GIL, and on a
    busy server every release costs the request a wait to get it back (about
    0.5 ms median under 16 clients, measured). Anything unusual (no body,
    chunked, more than the declared length, large, before ``start_response``) is
    left to waitress.
    """

    def write(self, data: bytes) -> None:
        cl = self.content_length
        if (not self.complete or self.wrote_header or not data or len(data) > 65536 or not self.has_body
                or self.chunked_response or cl is None or self.content_bytes_written + len(data) > cl):
            super().write(data)
            return
        header = self.build_response_header()
        self.wrote_header = True
        self.content_bytes_written += len(data)
        self.channel.write_soon(header + data)


class Channel(HTTPChannel):
    """waitress's HTTP channel, minus a busy loop of its I/O thread under load.

    A request thread sends its response itself, holding the channel's output
    lock while ``send`` runs and while it waits to get the GIL back. In that
    window the output buffer is not empty, so waitress's I/O loop finds the
    socket writable, fails to take the lock, and selects again at once: with
    16 request threads queueing for the GIL that spin went on for milliseconds
    per response (hundreds of ``select`` calls per request, measured), took
    the GIL from the request threads and cut a server's throughput tenfold
    for minutes. While a request thread holds the lock the loop has nothing
    to do: the thread flushes, and pulls waitress's trigger if data is left.
    """

    task_class = Task

    def writable(self) -> bool:
        if self.requests and self.total_outbufs_len and not (self.will_close or self.close_when_flushed):
            if not self.outbuf_lock.acquire(False):
                return False  # a request thread is writing; it wakes the loop if it cannot finish
            self.outbuf_lock.release()
        return bool(super().writable())


class QueueDepthLog:
    """waitress's queue-depth warning, at most once per interval, with the deepest queue and the count.

    waitress warns for every request that has to wait for a free thread: under
    sustained load thousands of lines a second, each written by the I/O thread
    that should be reading requests. This keeps the signal (and the logger) at a
    line per ``interval_s``. Called under the dispatcher's lock.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self._next = 0.0
        self._peak = self._count = 0

    def warning(self, msg: str, depth: int) -> None:
        self._count += 1
        self._peak = max(self._peak, depth)
        now = time.monotonic()
        if now >= self._next:
            self.logger.warning("Task queue depth is %d (the deepest of %d requests that waited for a thread; "
                                "next report in %g s at the earliest)", self._peak, self._count, self.interval_s)
            self._next, self._peak, self._count = now + self.interval_s, 0, 0


def _edge(app: Flask) -> EdgeServer:
    srv: EdgeServer = app.extensions["edgerec"]
    return srv


class RunningServer:
    """A waitress server on a background thread: for tests and benchmarks."""

    def __init__(self, app: Flask, config: ServerConfig) -> None:
        self.app = app
        self.server = make_server(app, config)
        self.port: int = self.server.effective_port
        self.url = f"http://{config.host}:{self.port}"
        self._thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)
        self._thread.start()

    @property
    def edge(self) -> EdgeServer:
        return _edge(self.app)

    def close(self) -> None:
        # Close the sockets from inside the loop thread (closing them under a running
        # select() from here fails with EBADF); the loop ends once its map is empty.
        server = self.server
        server.trigger.pull_trigger(lambda: close_all(server._map))
        self._thread.join(5)
        server.task_dispatcher.shutdown(timeout=5)
        self.edge.close()


PARENT_ENV = "EDGEREC_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """With ``EDGEREC_EXIT_WITH_PARENT=<pid>`` (a node daemon supervising this server), get SIGTERM
    when that process dies (Linux ``PR_SET_PDEATHSIG``), so no orphan keeps the port."""
    want = os.environ.get(PARENT_ENV)
    if not want or not want.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(want):  # the parent died before the call above
        raise SystemExit(0)


def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    exit_with_parent()
    if config.workers > 1:
        Supervisor(config).run()
        return
    pin_mmap_threshold()
    app = create_app(config, background=True)
    server = make_server(app, config)
    signal.signal(signal.SIGTERM, _raise_exit)
    log.info("edge server listening on http://%s:%s", config.host, server.effective_port,
             extra={"port": server.effective_port, "workers": 1})
    try:
        server.run()
    finally:
        _edge(app).close()


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class Supervisor:
    """Starts ``config.workers`` worker processes on one socket and keeps them running."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts: list[float] = []

    def run(self) -> None:
        run_dir = Path(tempfile.mkdtemp(prefix="edgerec-serve-"))
        try:
            self._run(run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self, run_dir: Path) -> None:
        (run_dir / PEERS_DIR).mkdir()
        prom = run_dir / "prometheus"
        prom.mkdir()
        c = self.config
        config = c.replace(
            run_dir=run_dir,
            response_key=c.response_key or os.urandom(32),
            control_token=c.control_token or read_token(c.control_token_file),
        )
        write_atomic(run_dir / "config.json", config.to_json().encode(), mode=0o600)
        sock = socket.create_server((c.host, c.port), backlog=1024, reuse_port=False)
        sock.set_inheritable(True)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "EDGEREC_RUN_DIR": str(run_dir),
               "EDGEREC_LISTEN_FD": str(sock.fileno())}
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("edge server listening on http://%s:%s", c.host, sock.getsockname()[1],
                 extra={"port": sock.getsockname()[1], "workers": c.workers})
        for i in range(c.workers):
            self._spawn(i, env, sock)
        try:
            while not self.stopping:
                time.sleep(0.5)
                for i, proc in list(self.children.items()):
                    if proc.poll() is not None and not self.stopping:
                        self._died(i, proc, env, sock, prom)
        finally:
            self._shutdown()
            sock.close()

    def _spawn(self, index: int, env: dict[str, str], sock: socket.socket) -> None:
        self.children[index] = subprocess.Popen(
            [sys.executable, "-m", "edgerec.edge_server.worker"],
            env={**env, "EDGEREC_WORKER_INDEX": str(index)}, pass_fds=[sock.fileno()],
        )

    def _died(self, index: int, proc: subprocess.Popen[bytes], env: dict[str, str], sock: socket.socket,
              prom: Path) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid, str(prom))
        with contextlib.suppress(FileNotFoundError):
            (Path(env["EDGEREC_RUN_DIR"]) / PEERS_DIR / f"{index}.port").unlink()
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if len(self.restarts) > RESTARTS_PER_MINUTE:
            log.error("workers keep dying (%d restarts in a minute); stopping", len(self.restarts))
            self.stopping = True
            return
        log.warning("worker %d exited with %s; restarting it", index, proc.returncode)
        self._spawn(index, env, sock)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_worker() -> None:
    """Entry point of one worker process (started by :class:`Supervisor`)."""
    from edgerec.sdk import native_logs

    from .json_logs import configure_logging

    native_logs.quiet()  # like the edgerec process that started it (EDGEREC_LOG_NATIVE carries --verbose)
    run_dir = Path(os.environ["EDGEREC_RUN_DIR"])
    index = int(os.environ["EDGEREC_WORKER_INDEX"])
    config = ServerConfig.from_json((run_dir / "config.json").read_text()).replace(worker_index=index)
    configure_logging(config.log_level, flush_ms=config.log_flush_ms)
    shared = socket.socket(fileno=int(os.environ["EDGEREC_LISTEN_FD"]))
    internal = socket.create_server(("127.0.0.1", 0))
    pin_mmap_threshold()
    app = create_app(config, background=True)
    server = make_server(app, config, sockets=[shared, internal])
    write_atomic(run_dir / PEERS_DIR / f"{index}.port", str(internal.getsockname()[1]).encode())
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        server.run()
    finally:
        _edge(app).close()


__all__ = ["Channel", "QueueDepthLog", "RunningServer", "Supervisor", "make_server", "run_worker", "serve"]
