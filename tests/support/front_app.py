"""A small WSGI app behind :class:`WSGIFront`, served by granian, for the front's own tests:
``python -c 'from support.front_app import main; main()' PORT``. One app thread, bodies up to 1 KiB read
first (``/upload``: read by the app), a body timeout of 1 s, at most 4 KiB of bodies held at once."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from edgerec.sdk.http_server import HttpSettings, build_granian
from edgerec.sdk.wsgi_front import FrontSettings, WSGIFront, parked

BIG_CHUNKS, BIG_CHUNK = 48, 64 * 1024  # a 3 MiB answer, streamed


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG_CHUNKS * BIG_CHUNK))])
        return _big()
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/boom-later":  # fails while its answer is being made, after start_response
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _fail_later()
    if path == "/stall-loop":  # the worker's event loop is busy for a second (as under a flood of heads)
        LOOP[0].call_soon_threadsafe(time.sleep, 1.0)
        time.sleep(0.1)  # the loop is inside that call now
    if path == "/park":  # waits like a request in a micro-batch: its slot serves others meanwhile
        with parked():
            time.sleep(float(environ["QUERY_STRING"] or 1))
    body = environ["wsgi.input"].read()
    doc = {"path": path, "query": environ["QUERY_STRING"], "length": len(body),
           "content_length": environ.get("CONTENT_LENGTH"), "remote": environ["REMOTE_ADDR"],
           "host": environ.get("HTTP_HOST"), "multi": environ.get("HTTP_X_MULTI")}
    data = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _fail_later() -> Iterator[bytes]:
    yield b"part"
    raise RuntimeError("boom")


def _big() -> Iterator[bytes]:
    for i in range(BIG_CHUNKS):
        yield bytes([i % 256]) * BIG_CHUNK


LOOP: list[asyncio.AbstractEventLoop] = []  # the worker's event loop, for /stall-loop


class _LoopRecorder:
    """The front as granian sees it, recording the event loop granian gives it."""

    def __init__(self, front: WSGIFront) -> None:
        self.front = front

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        LOOP[:] = [loop]
        self.front.__rsgi_init__(loop)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        await self.front.__rsgi__(scope, proto)


def app() -> _LoopRecorder:
    """granian's factory."""
    return _LoopRecorder(WSGIFront(_app, lambda path: 0 if path == "/upload" else 1024,
                                   FrontSettings(slots=1, max_parked=4, body_timeout_s=1.0,
                                                 max_held_body_bytes=4096)))


def main() -> None:
    build_granian("support.front_app:app", HttpSettings(port=int(sys.argv[1]))).serve()
