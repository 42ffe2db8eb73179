"""TLS in front of waitress, which speaks plain HTTP only.

A small asyncio listener terminates TLS (the standard library's ``ssl``) and
pipes each connection to waitress on a loopback port. For a large deployment
a reverse proxy or load balancer does this job instead; this keeps
``edgerec sync serve --tls-cert --tls-key`` a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from pathlib import Path

log = logging.getLogger("edgerec.sync.protocol.tls")
_CHUNK = 256 * 1024


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class TlsFront:
    """Accepts TLS on ``host:port`` and forwards plain bytes to ``upstream``."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, upstream: tuple[str, int]) -> None:
        self.host, self.port = host, port
        self.context = context
        self.upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgerec-tls", daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("TLS front: upstream unreachable: %s", exc)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, self.port, ssl=self.context), self._loop
        )
        self._server = fut.result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
