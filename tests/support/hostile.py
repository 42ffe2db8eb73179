"""Hostile clients on loopback, at a bounded scale: idle sockets, slowloris heads and bodies, a timed client.

:class:`Slowloris` keeps ``idle`` connections that never send a byte,
``heads`` that trickle a request head a byte at a time and ``bodies`` that
send a complete head and then trickle the body; a head or body connection
the server closes is opened again (as a real attacker would), and the
closures and answers are counted. :func:`attack_sockets` says how many it
opens (thousands, or the test fails). :func:`timed_requests` is the normal
client whose latency the tests bound. :func:`raw_exchange`,
:func:`oversized_heads` and :func:`queued_past_the_cap` are the per-connection
attacks both HTTP services' tests share.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

SLOWLORIS_ENV = "EDGEREC_TEST_SLOWLORIS"  # hostile sockets the slowloris tests open (default 2000)
MIN_ATTACK = 1000  # fewer would not test "thousands of connections": such a run fails instead


def raise_fd_limit(wanted: int) -> int:
    """This test process's open-file limit raised towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def attack_sockets(spare: int = 300) -> int:
    """How many hostile sockets a slowloris test opens: ``$EDGEREC_TEST_SLOWLORIS`` (2000), never fewer than
    :data:`MIN_ATTACK`, with this process's open-file limit raised to hold them and ``spare`` more.

    Fails when fewer would fit (a run with a few hundred sockets is not the test); skips, saying so, only
    when the hard limit itself is too low, which a test process cannot raise.
    """
    wanted = int(os.environ.get(SLOWLORIS_ENV, "2000"))
    if wanted < MIN_ATTACK:
        pytest.fail(f"{SLOWLORIS_ENV}={wanted}: the slowloris tests need at least {MIN_ATTACK} hostile sockets")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < MIN_ATTACK + spare:
        pytest.skip(f"the hard open-file limit is {hard}: {MIN_ATTACK} hostile sockets and {spare} spare "
                    f"descriptors do not fit, and a process cannot raise it (ulimit -Hn {wanted + spare} first)")
    try:
        limit = raise_fd_limit(wanted + spare)
    except (ValueError, OSError) as exc:
        pytest.fail(f"cannot raise the open-file limit to {wanted + spare}: {exc}")
    n = min(wanted, limit - spare)
    if n < MIN_ATTACK:
        pytest.fail(f"the open-file limit is {limit}: only {n} hostile sockets fit, under {MIN_ATTACK}")
    return n


def raw_exchange(port: int, data: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection to 127.0.0.1:``port``; the first bytes answered (b"" if the server
    closed or reset it) and the seconds that took."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        t0 = time.monotonic()
        try:
            s.sendall(data)
            got = s.recv(200)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        return got, time.monotonic() - t0


def oversized_heads(port: int, path: str) -> tuple[bytes, bytes]:
    """What the server first answers to ``GET path`` with one 1 MB header, and with 200 headers (b"" if closed)."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
    big, _ = raw_exchange(port, start + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    many, _ = raw_exchange(port, start + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n")
    return big, many


def queued_past_the_cap(port: int, cap: int, call: Callable[[], int], release: int = 5,
                        wait_s: float = 1.5) -> tuple[bool, int | str | None]:
    """Hold ``cap`` connections to 127.0.0.1:``port``, then run ``call`` (a request on a new connection).

    Returns whether ``call`` was still waiting after ``wait_s`` with every slot taken, and what it returned
    (a status; an error as text; None if still waiting) once ``release`` of the held connections closed.
    """
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(cap)]
    result: list[int | str] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:  # reported to the test
            result.append(f"{type(exc).__name__}: {exc}")

    try:
        time.sleep(0.3)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(wait_s)
        waited = t.is_alive()
        for s in held[:release]:
            s.close()
        t.join(10)
        return waited, result[0] if result else None
    finally:
        for s in held:
            s.close()


@dataclass
class _Conn:
    kind: str  # "idle" | "head" | "body"
    sock: socket.socket
    opened: float
    sent: int = 0


@dataclass
class Stats:
    closed: dict[str, int] = field(default_factory=lambda: {"idle": 0, "head": 0, "body": 0})
    answers: dict[str, int] = field(default_factory=dict)  # first status line a server sent, counted
    head_lifetimes: list[float] = field(default_factory=list)  # seconds from open to the server's close
    reopen_failures: int = 0


class Slowloris:
    """Slow and idle connections to ``host:port`` until :meth:`close`."""

    def __init__(self, host: str, port: int, path: str, *, idle: int = 0, heads: int = 0, bodies: int = 0,
                 interval_s: float = 0.5, body_length: int = 100_000) -> None:
        self.host, self.port, self.path = host, port, path
        self.interval_s, self.body_length = interval_s, body_length
        self.stats = Stats()
        self._conns: list[_Conn] = []
        self._stop = threading.Event()
        for kind, n in (("idle", idle), ("head", heads), ("body", bodies)):
            for _ in range(n):
                self._conns.append(self._open(kind))
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)
        self._thread.start()

    @property
    def open_count(self) -> int:
        return len(self._conns)

    def _open(self, kind: str) -> _Conn:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.setblocking(False)
        conn = _Conn(kind, sock, time.monotonic())
        if kind == "head":
            self._send(conn, f"POST {self.path} HTTP/1.1\r\nHost: x\r\n".encode())
        elif kind == "body":
            self._send(conn, f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {self.body_length}\r\n\r\n{{".encode())
        return conn

    def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        conn.sent += len(data)
        return True

    def _server_closed(self, conn: _Conn) -> bool:
        """Whether the server closed ``conn`` (recording what it answered first)."""
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if data:
            line = data.split(b"\r\n", 1)[0].decode(errors="replace")
            self.stats.answers[line] = self.stats.answers.get(line, 0) + 1
            return False  # an answer; the server may still close it: seen on a later round
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for i, conn in enumerate(self._conns):
                if self._stop.is_set():
                    return
                alive = not self._server_closed(conn)
                if alive and conn.kind == "head":
                    alive = self._send(conn, b"X")  # one more byte of a header value that never ends
                elif alive and conn.kind == "body":
                    alive = self._send(conn, b" ")
                if not alive:
                    self.stats.closed[conn.kind] += 1
                    if conn.kind == "head":
                        self.stats.head_lifetimes.append(time.monotonic() - conn.opened)
                    with contextlib.suppress(OSError):
                        conn.sock.close()
                    try:
                        self._conns[i] = self._open(conn.kind)
                    except OSError:
                        self.stats.reopen_failures += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._conns.clear()


@dataclass
class Timings:
    latencies_s: list[float]
    failures: list[str]

    @property
    def p50_s(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else float("nan")

    @property
    def max_s(self) -> float:
        return max(self.latencies_s) if self.latencies_s else float("nan")

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def timed_requests(call: Callable[[], int], n: int, pause_s: float = 0.05) -> Timings:
    """``n`` calls of ``call`` (which returns an HTTP status), timed; non-200 answers and errors are failures."""
    out = Timings([], [])
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            status = call()
        except Exception as exc:  # reported by the test
            out.failures.append(f"{type(exc).__name__}: {exc}")
            continue
        out.latencies_s.append(time.perf_counter() - t0)
        if status != 200:
            out.failures.append(f"HTTP {status}")
        time.sleep(pause_s)
    return out


__all__ = ["MIN_ATTACK", "SLOWLORIS_ENV", "Slowloris", "Stats", "Timings", "attack_sockets", "oversized_heads",
           "queued_past_the_cap", "raise_fd_limit", "raw_exchange", "timed_requests"]
