"""granian's RSGI interface in front of a WSGI app: bodies read on the event loop, the app run by a few threads.

Why not granian's own WSGI interface: it hands every request to a Python
thread as soon as its head is in, and that thread reads the body, with no
deadline (hyper has none, granian declined one upstream). A client that
trickles a body holds a thread, so the thread pool had to be as large as the
connection cap, and at 32 busy connections 32 threads fought over the GIL:
the CPU a request cost followed the number of threads, not the app's work.

Here a request's body is read on granian's event loop, within its route's
limit and ``body_timeout_s``, costing no thread; only then is the WSGI app
called, by one of ``slots`` threads (:class:`AppThreads`). A request that
waits inside the app for others (a micro-batch) gives its slot away while
it waits (:func:`parked`), so batching still gathers concurrent requests.
Overload is refused at the door: past ``slots + Shedding.max_waiting``
requests in the app, or after ``max_wait_s`` waiting for a thread, a request
gets 503 with ``Retry-After`` without running the app.

A route whose limit is 0 (an upload the app authenticates before it reads)
and a body larger than its route's limit are not read here: the app gets a
stream that reads from the loop, each read within ``body_timeout_s``
(:class:`LoopBody`), and refuses an oversized body by its Content-Length
before reading it.

Measured on one worker (bench notes in docs/benchmarks.md): at 32 clients
the CPU per request fell by a third to a half; at one client a request
costs one more event-loop wake (granian completes the body read from its
Rust thread), about 60 us on these machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .http_errors import (
    ErrorAnswer,
    PayloadTooLargeError,
    RequestRefusedError,
    RequestTimeoutError,
    UnavailableError,
)
from .http_server import Shedding, WSGIApp

log = logging.getLogger("edgerec.sdk.wsgi_front")
# Refusals the front makes itself, by reason: "overloaded", "body_timeout", "body_too_large".
OnRefuse = Callable[[str, str], None]
# A response body this large is sent in one piece; past it the rest is streamed chunk by chunk.
WHOLE_BODY_BYTES = 1 << 20
STREAM_PART_BYTES = 256 * 1024
_BASE_ENVIRON = {
    "GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_NAME": "", "SERVER_SOFTWARE": "edgerec",
    "wsgi.errors": sys.stderr, "wsgi.input_terminated": True, "wsgi.multiprocess": False,
    "wsgi.multithread": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
}
_JSON = ("content-type", "application/json")
_thread = threading.local()


@dataclass(frozen=True)
class FrontSettings:
    """How a :class:`WSGIFront` admits requests (per worker process)."""

    slots: int = 2  # threads that run the app at once (parked ones not counted)
    max_parked: int = 64  # threads that may wait inside the app at once (:func:`parked`)
    body_timeout_s: float = 10.0  # a body read here, from its first byte to its last; each read of a streamed one
    shedding: Shedding | None = None
    # Request bodies held in memory at once (being read, or read and not yet answered); past it 503.
    # Without it, every connection of the cap could hold a body of its route's limit.
    max_held_body_bytes: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        from .errors import ConfigurationError

        if self.slots < 1 or self.max_parked < 0 or not 0 < self.body_timeout_s <= 3600:
            raise ConfigurationError("front: slots >= 1, max_parked >= 0, body_timeout_s 0..3600")
        if self.max_held_body_bytes < 1024:
            raise ConfigurationError("front: max_held_body_bytes >= 1024")


@contextlib.contextmanager
def parked() -> Iterator[None]:
    """Around a wait inside the app (for other requests): its slot runs another request meanwhile.

    Outside an :class:`AppThreads` thread (a test client, another server) it does nothing.
    """
    threads: AppThreads | None = getattr(_thread, "pool", None)
    if threads is None or not _thread.slot:
        yield
        return
    _thread.slot = False
    threads.running[_thread.index] = False
    threads.give_slot()
    yield  # the request finishes without a slot; its thread waits for one before it takes the next


def backlog() -> Callable[[], int] | None:
    """In an :class:`AppThreads` thread: a function counting the requests waiting for a thread (read, not
    started), which are on their way to the app; None elsewhere. A micro-batcher waits for them, as a
    request only announces itself once it has a thread."""
    threads: AppThreads | None = getattr(_thread, "pool", None)
    return None if threads is None else threads.backlog


class AppThreads:
    """Threads that run jobs, at most ``slots`` at once outside :func:`parked`.

    A thread takes a slot (a token in a C queue), then runs jobs until it
    gives the slot away while parked; then it finishes its job and waits for
    a slot again. Jobs wait in a C queue; a thread holding a slot takes the
    next one without waking anybody, which is what keeps a busy worker cheap.
    """

    def __init__(self, slots: int, spare: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(slots):
            self._slots.put(None)
        # Per thread: running a job with a slot (each entry written only by its own thread, so no lock).
        self.running = [False] * (slots + spare)
        for i in range(slots + spare):
            threading.Thread(target=self._run, args=(i,), name=f"edgerec-app-{i}", daemon=True).start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def give_slot(self) -> None:
        self._slots.put(None)

    def backlog(self) -> int:
        """Jobs not taken by a thread yet, and threads running one with a slot (not parked): requests
        that may still reach a batcher (approximate, lock-free). The caller's own slot counts."""
        return self._jobs.qsize() + sum(self.running)

    def _run(self, index: int) -> None:
        _thread.pool, _thread.index = self, index
        running = self.running
        take_slot, take_job = self._slots.get, self._jobs.get
        while True:
            take_slot()
            _thread.slot = True
            while _thread.slot:
                job = take_job()
                running[index] = True
                try:
                    job()
                except BaseException:  # a job reports its own errors; this keeps the thread alive
                    log.exception("request thread: unexpected error")
                # Let go of the request now, not when the next job comes: its protocol object owns the
                # connection's body, and hyper closes a connection whose body is unread only once that goes.
                job = None  # type: ignore[assignment]
                running[index] = False  # parked() cleared it already if the job gave its slot away


class LoopBody(io.RawIOBase):
    """A request body read on demand from granian's loop, in an app thread; each read within ``timeout_s``."""

    def __init__(self, chunks: Any, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        super().__init__()
        self._chunks: Any = chunks.__aiter__()
        self._loop, self._timeout_s = loop, timeout_s
        self._buf = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._buf and not self._eof:
            self._buf = memoryview(self._fetch())
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _fetch(self) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()
            self._eof, self._chunks = True, None  # hyper closes the connection once nothing holds its body
            raise RequestTimeoutError(f"no request body received for {self._timeout_s:g} s", field="body") from None
        except Exception:  # the client went away: the body ends here, the app sees it short
            self._eof = True
            return b""

    async def _next(self) -> bytes:
        try:
            chunk: bytes = await self._chunks.__anext__()
            return chunk
        except StopAsyncIteration:
            self._eof = True
            return b""


class WSGIFront:
    """An RSGI app (granian's ``Interfaces.RSGI``) that serves ``app``; see the module's notes.

    ``body_limit(path)`` is the most a route's body may hold to be read
    before the app is called (0: the app reads it, after checking the
    credentials). ``on_refuse(path, reason)`` counts the front's own refusals.
    """

    def __init__(self, app: WSGIApp, body_limit: Callable[[str], int], settings: FrontSettings = FrontSettings(),
                 on_refuse: OnRefuse | None = None) -> None:
        self.app, self.body_limit, self.settings, self.on_refuse = app, body_limit, settings, on_refuse
        self.threads = AppThreads(settings.slots, settings.max_parked)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_app = 0  # requests given to the app threads and not answered yet (counted on the loop)
        self._held = 0  # bytes reserved for request bodies in memory (counted on the loop)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        environ = self._environ(scope)
        path = environ["PATH_INFO"]
        refused, held = await self._read_body(environ, path, proto, loop)
        try:
            if refused is not None:
                proto.response_bytes(*refused)
                return
            await self._answer(environ, path, proto, loop)
        finally:
            self._held -= held

    async def _answer(self, environ: dict[str, Any], path: str, proto: Any, loop: asyncio.AbstractEventLoop) -> None:
        shedding = self.settings.shedding
        if shedding is not None and self._in_app >= self.settings.slots + shedding.max_waiting:
            proto.response_bytes(*self._overloaded(path, shedding))
            return
        self._in_app += 1
        try:
            if shedding is None or self._in_app <= self.settings.slots:  # a thread is free: no wait to bound
                answer = await self._in_thread(loop, lambda: self._respond(environ, proto))
            else:
                answer = await self._in_thread(loop, lambda: self._respond(environ, proto),
                                               lambda: (*self._overloaded(path, shedding), None), shedding.max_wait_s)
        finally:
            self._in_app -= 1
        if answer is None:
            return  # sent by the app thread
        status, headers, body, rest = answer
        if rest is None:
            proto.response_bytes(status, headers, body)
            return
        await self._stream(loop, proto, status, headers, body, rest)

    def _respond(self, environ: dict[str, Any], proto: Any) -> tuple[int, list[tuple[str, str]], bytes, Any] | None:
        """Run the app (in an app thread) and send a whole answer from that thread: granian's protocol hands it
        to its Rust side through a channel, so the client need not wait for this worker's event loop to come
        round (busy with other requests' heads and bodies under load). A streamed answer comes back to the
        loop."""
        status, headers, body, rest = self._call(environ)
        if rest is not None:
            return status, headers, body, rest
        proto.response_bytes(status, headers, body)
        return None

    def _environ(self, scope: Any) -> dict[str, Any]:
        environ = dict(_BASE_ENVIRON)
        # WSGI wants the path's bytes as latin-1; granian gives it percent-decoded as UTF-8.
        environ["PATH_INFO"] = scope.path.encode("utf-8", "surrogateescape").decode("latin-1")
        environ["REQUEST_METHOD"] = scope.method
        environ["QUERY_STRING"] = scope.query_string
        environ["SERVER_PROTOCOL"] = "HTTP/" + scope.http_version
        environ["wsgi.url_scheme"] = scope.scheme
        client, _, port = scope.client.rpartition(":")
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client.strip("[]"), port
        server, _, port = scope.server.rpartition(":")
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server.strip("[]"), port
        for name, value in scope.headers.items():
            if name == "content-length":
                environ["CONTENT_LENGTH"] = value
            elif name == "content-type":
                environ["CONTENT_TYPE"] = value
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if "HTTP_HOST" not in environ and scope.authority:
            environ["HTTP_HOST"] = scope.authority
        return environ

    async def _read_body(self, environ: dict[str, Any], path: str, proto: Any, loop: asyncio.AbstractEventLoop
                         ) -> tuple[tuple[int, list[tuple[str, str]], bytes] | None, int]:
        """Read the body into ``wsgi.input`` (or give the app a :class:`LoopBody`): a refusal or None, and the
        bytes reserved for it in ``_held``, which the caller gives back once it has answered."""
        length = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (not length or length == "0"):
            environ["wsgi.input"] = io.BytesIO(b"")
            return None, 0
        limit = self.body_limit(path)
        declared = int(length) if length and length.isdigit() else None
        if limit == 0 or (declared is not None and declared > limit):
            # The app refuses it by its Content-Length, unread, after its own checks (credentials first).
            environ["wsgi.input"] = LoopBody(proto, loop, self.settings.body_timeout_s)
            return None, 0
        size = declared if declared is not None else limit  # a chunked body may grow to the limit
        if self._held + size > self.settings.max_held_body_bytes:
            return self._busy(path), 0
        self._held += size
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                body = await (proto() if declared is not None else _read_capped(proto, limit))
        except TimeoutError:
            return self._refuse(path, "body_timeout", RequestTimeoutError(
                f"request body not received within {self.settings.body_timeout_s:g} s", field="body")), size
        except _TooLargeError:
            return self._refuse(path, "body_too_large", PayloadTooLargeError(
                f"request body exceeds the limit of {limit} bytes", field="body")), size
        except Exception:  # the client went away mid-body: nobody to answer
            return (400, [("connection", "close")], b""), size
        self._held -= size - len(body)  # a chunked body keeps only what it holds
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return None, len(body)

    def _busy(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """503 for a body that would take the bodies held past ``max_held_body_bytes``; unread, so closed."""
        retry = self.settings.shedding.retry_after_s if self.settings.shedding is not None else 1
        detail = f"overloaded: too many request bodies in memory; retry after {retry} s"
        return self._refuse(path, "body_memory", _unavailable(detail, retry))

    def _refuse(self, path: str, reason: str, error: RequestRefusedError) -> tuple[int, list[tuple[str, str]], bytes]:
        """The front's own refusal of a request whose body it stopped reading: counted, and the connection closed."""
        if self.on_refuse is not None:
            self.on_refuse(path, reason)
        return _refusal(error)

    def _overloaded(self, path: str, shedding: Shedding) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.on_refuse is not None:
            self.on_refuse(path, "overloaded")
        retry = shedding.retry_after_s  # the body was read: the connection stays open
        return _refusal(_unavailable(f"overloaded: retry after {retry} s", retry), close=False)

    def _in_thread(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], Any],
                   expired: Callable[[], Any] | None = None, wait_s: float = 0.0) -> Awaitable[Any]:
        """``fn()`` in an app thread; its result (or error) on the loop. With ``expired``: if no thread has
        started it ``wait_s`` seconds on, it will not run, and the answer is ``expired()``."""
        future = loop.create_future()
        ticket = [None]  # list.pop is atomic: whoever takes it (the thread or the timer) decides

        def job() -> None:
            try:
                ticket.pop()
            except IndexError:
                return  # expired in the queue
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting request
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        def expire(answer: Callable[[], Any]) -> None:
            try:
                ticket.pop()
            except IndexError:
                return  # running or done
            _settle(future, answer(), None)

        self.threads.submit(job)
        if expired is not None:
            timer = loop.call_later(wait_s, expire, expired)
            future.add_done_callback(lambda _: timer.cancel())
        return future

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, Any]:
        """Run the app (in an app thread): status, headers, the body or its first part, and the rest or None."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [int(status[:3]), headers]

        result: Any = None
        try:
            result = self.app(environ, start_response)
            if isinstance(result, list):
                return started[0], started[1], b"".join(result), None
            chunks, size = [], 0
            it = iter(result)
            for chunk in it:
                chunks.append(chunk)
                size += len(chunk)
                if size >= WHOLE_BODY_BYTES:
                    return started[0], started[1], b"".join(chunks), _Rest(it, result)
            _close(result)
            return started[0], started[1], b"".join(chunks), None
        except RequestRefusedError as exc:  # e.g. a streamed body's read timed out, in an app that let it through
            _close_quietly(result)
            return (*_refusal(exc), None)
        except Exception:
            log.exception("unhandled error in the application")
            _close_quietly(result)
            return 500, [_JSON], ErrorAnswer(500, "internal", "unexpected error; see the server log").body(), None

    async def _stream(self, loop: asyncio.AbstractEventLoop, proto: Any, status: int,
                      headers: list[tuple[str, str]], first: bytes, rest: _Rest) -> None:
        """Send a large answer chunk by chunk: each next chunk is made in an app thread, between sends."""
        try:
            transport = proto.response_stream(status, headers)
            await transport.send_bytes(first)
            while (chunk := await self._in_thread(loop, rest.next)) is not None:
                await transport.send_bytes(chunk)
        except Exception:  # the client went away, or the app's iterator failed mid-answer
            log.debug("streamed answer ended early", exc_info=True)
        finally:
            await self._in_thread(loop, rest.close)


class _TooLargeError(Exception):
    pass


async def _read_capped(proto: Any, limit: int) -> bytes:
    """A chunked body, refused past ``limit`` bytes as it arrives."""
    parts, size = [], 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise _TooLargeError
        parts.append(chunk)
    return b"".join(parts)


class _Rest:
    """The rest of a streamed answer: its iterator, and the iterable to close once sent."""

    def __init__(self, it: Iterator[bytes], result: Iterable[bytes]) -> None:
        self.it, self.result = it, result

    def next(self) -> bytes | None:
        """The next part, at least ``STREAM_PART_BYTES`` unless it is the last (werkzeug's file iterator
        yields 8 KiB blocks: one thread hand-off each would cost more than the copy)."""
        parts, size = [], 0
        for chunk in self.it:
            parts.append(chunk)
            size += len(chunk)
            if size >= STREAM_PART_BYTES:
                break
        return b"".join(parts) if parts else None

    def close(self) -> None:
        _close(self.result)


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _close_quietly(result: Any) -> None:
    """Close an answer that failed while it was made (its iterable's close runs the app's clean-up)."""
    with contextlib.suppress(Exception):
        _close(result)


def _refusal(error: RequestRefusedError, close: bool = True) -> tuple[int, list[tuple[str, str]], bytes]:
    """A refusal's answer, with its Retry-After; ``close``: the connection too (a body may be left unread)."""
    answer = ErrorAnswer(error.status, error.code, error.detail, error.field)
    headers = [_JSON, ("connection", "close")] if close else [_JSON]
    if error.retry_after_s is not None:
        headers.append(("retry-after", str(error.retry_after_s)))
    return answer.status, headers, answer.body()


def _unavailable(detail: str, retry_after_s: int) -> UnavailableError:
    error = UnavailableError(detail)
    error.retry_after_s = retry_after_s
    return error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


__all__ = ["AppThreads", "FrontSettings", "LoopBody", "OnRefuse", "WSGIFront", "parked"]
