"""Run the sync service on waitress, with its maintenance loop (and TLS if asked).

:class:`RunningServer` starts everything in background threads and stops it
again; ``edgerec sync serve`` runs one until interrupted, the tests one per
fixture.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from .app import create_app
from .core import SyncService
from .tls import TlsFront, server_context

log = logging.getLogger("edgerec.sync")


def stop_waitress(server: Any, thread: threading.Thread) -> None:
    """Close a waitress server's sockets from its own loop thread, then stop its workers."""
    if thread.is_alive():
        # OSError: the loop closed its trigger already and is ending by itself.
        with contextlib.suppress(OSError):
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        thread.join(timeout=10)
    server.task_dispatcher.shutdown()


def bound_port(server: MultiSocketServer | BaseWSGIServer) -> int:
    """The port waitress listens on (the first, when the host name resolved to several addresses)."""
    if isinstance(server, MultiSocketServer):
        return int(server.effective_listen[0][1])
    return int(server.getsockname()[1])  # waitress gives the port as text (NI_NUMERICSERV)


class Maintenance(threading.Thread):
    """Refreshes expiring TUF metadata and prunes nonces every ``interval`` seconds."""

    def __init__(self, service: SyncService, interval: float) -> None:
        super().__init__(name="edgerec-maintenance", daemon=True)
        self.service = service
        self.interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.service.maintain()
            except Exception:  # keep serving; the next round tries again
                log.exception("maintenance failed")
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


class RunningServer:
    """waitress serving one :class:`SyncService` on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        service: SyncService,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
        maintenance: bool = True,
    ) -> None:
        self.service = service
        cfg = service.config
        app = create_app(service)
        listen_host, listen_port = (("127.0.0.1", 0) if tls else (host, port))
        self._server = create_server(
            app, host=listen_host, port=listen_port, threads=cfg.threads, ident="edgerec-sync",
            max_request_body_size=cfg.max_upload_bytes + 1024 * 1024, url_scheme="https" if tls else "http",
            channel_timeout=60, connection_limit=4096, clear_untrusted_proxy_headers=True,
            # poll(), not select(): more than 1024 open connections must not break the loop.
            asyncore_use_poll=True,
        )
        inner_port = bound_port(self._server)
        self._tls = TlsFront(host, port, server_context(*tls), ("127.0.0.1", inner_port)) if tls else None
        self._maint = Maintenance(service, cfg.maintenance_interval_s) if maintenance else None
        self._thread = threading.Thread(target=self._server.run, name="edgerec-waitress", daemon=True)
        self.host = host
        self.port = inner_port
        self.scheme = "https" if tls else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> RunningServer:
        self._thread.start()
        if self._tls is not None:
            self.port = self._tls.start()
        if self._maint is not None:
            self._maint.start()
        return self

    def stop(self) -> None:
        if self._maint is not None:
            self._maint.stop()
        if self._tls is not None:
            self._tls.stop()
        stop_waitress(self._server, self._thread)

    def wait(self) -> None:
        """Block until SIGINT or SIGTERM, then stop."""
        done = threading.Event()

        def _signal(_signum: int, _frame: FrameType | None) -> None:
            done.set()

        signal.signal(signal.SIGINT, _signal)
        signal.signal(signal.SIGTERM, _signal)
        while not done.wait(1.0):
            if not self._thread.is_alive():
                break
        self.stop()
