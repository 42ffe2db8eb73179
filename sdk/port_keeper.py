"""Keeps a one-worker service's port taking connections while granian replaces its worker.

granian on Linux has every worker listen on a socket of its own in one
``SO_REUSEPORT`` group. With two workers or more a dead one's siblings take
its share at once; with one, nothing listens until the replacement has started
(a second or more) and new connections are refused. So with one worker the
socket :func:`~.http_server.reserve_port` holds listens too, as the group's
first member, and a classic BPF program on the group sends every new
connection to the second member, the worker. While there is none (the worker
is being replaced, or has not started yet) the kernel falls back to its hash
over the members left, which is this socket alone. What it accepts then it
relays, byte for byte (TLS included), to the port once the worker listens
again: the client waits instead of being refused. Connections the dead worker
had already taken are lost with it.

A relayed connection reaches the worker from this process, so the worker
sees this end's address as its client. On a wildcard address that end is
:data:`RELAYED_FROM` (127.0.0.2), never 127.0.0.1: a remote client relayed
from 127.0.0.1 would look local, and the edge server's control API answers
loopback callers only (:func:`is_local_caller` tells them apart). On an IPv6
wildcard it is the same address IPv4-mapped, where the worker's socket takes
IPv4; where it does not (``IPV6_V6ONLY``) nothing is relayed.

Linux only (elsewhere granian shares one socket between its workers, which
outlives them). Where the program cannot be attached (an old kernel, a
seccomp filter) the socket stays bound and not listening, as before, and one
line says that the port closes while the worker is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import select
import socket
import struct
import sys
import threading
import time

log = logging.getLogger("edgerec.http")

# linux/filter.h and asm-generic/socket.h: "return 1", the group's member after this socket.
_SO_ATTACH_REUSEPORT_CBPF = 51
_TO_THE_WORKER = struct.pack("HBBI", 0x06, 0, 0, 1)  # BPF_RET | BPF_K, 1

# Where relays to a wildcard listener come from: loopback, but not the address local callers use.
RELAYED_FROM = "127.0.0.2"
MAX_RELAYED = 256  # connections relayed at once; past it a new one is closed (it can retry)
WAIT_S = 10.0  # how long a relayed client waits for the worker before it is closed
_IDLE_S = 60.0  # a relayed connection with no byte either way for this long is closed
_POLL_S = 0.02
_MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


def _listeners(address: str, port: int) -> int:
    """Listening sockets on ``address:port`` in this network namespace (/proc/net/tcp), or -1 if unknown."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    # /proc writes each 32-bit word of the address as a number in host byte order.
    order = slice(None, None, -1 if sys.byteorder == "little" else 1)
    words = [packed[i:i + 4][order].hex().upper() for i in range(0, len(packed), 4)]
    wanted = f"{''.join(words)}:{port:04X}"
    try:
        with open("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp") as f:
            return sum(1 for line in f if (cols := line.split())[1:2] == [wanted] and cols[3] == "0A")
    except OSError:
        return -1


def queued_connections_migrate(sysctl: str = _MIGRATE_SYSCTL) -> bool | None:
    """Whether Linux moves the connections queued at a closing listener to another of its group
    (``net.ipv4.tcp_migrate_req``); None where it cannot be read (not Linux, or a kernel before 5.14)."""
    try:
        with open(sysctl) as f:
            return f.read().strip() != "0"
    except (OSError, UnicodeDecodeError):
        return None


def warn_unless_migrating(sysctl: str = _MIGRATE_SYSCTL) -> None:
    """One line when a dying worker's queued connections would be reset rather than moved (the sysctl is
    the operator's to set, namespace-wide; the service asks for no privileges to set it)."""
    if queued_connections_migrate(sysctl) is False:
        log.warning("net.ipv4.tcp_migrate_req is 0: connections queued at a worker when it dies are reset, "
                    "not moved to another listener; set it to 1 (docs/operations.md)")


class PortKeeper:
    """Listens on a :func:`~.http_server.reserve_port` socket and relays what reaches it (see the module)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        host, self._port = sock.getsockname()[:2]
        self._host = str(host)
        # Where a relay connects, and from: the listening address itself (its callers' own addresses are
        # what the worker would see anyway), or for a wildcard, loopback from RELAYED_FROM.
        self._target: str | None = self._host
        self._source = self._host
        if ipaddress.ip_address(self._host).is_unspecified:
            self._target, self._source = "127.0.0.1", RELAYED_FROM
            if sock.family == socket.AF_INET6:
                dual = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
                self._target, self._source = ("::ffff:127.0.0.1", "::ffff:" + RELAYED_FROM) if dual else (None, "")
        self._relays = threading.BoundedSemaphore(MAX_RELAYED)
        self._mine: set[tuple[str, int]] = set()  # our own connections to the port, by local address
        self._lock = threading.Lock()
        self.listening = False

    def start(self) -> bool:
        """Listen and steer; False (and the socket left as it was) where this system cannot."""
        if not sys.platform.startswith("linux"):
            return False
        if self._target is None:
            log.warning("the port closes while the worker is replaced: an IPv6-only wildcard listener has no "
                        "loopback address to relay from that local callers do not use")
            return False
        code = ctypes.create_string_buffer(_TO_THE_WORKER, len(_TO_THE_WORKER))
        program = struct.pack("HP", 1, ctypes.addressof(code))  # struct sock_fprog; the kernel copies it
        try:
            # The program first: listening without it would take a share of the worker's connections.
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, program)
            self._sock.listen(128)
        except OSError as exc:
            log.warning("the port closes while the worker is replaced: cannot steer its connections (%s)",
                        exc.strerror)
            return False  # still bound: the port stays reserved
        self.listening = True
        threading.Thread(target=self._accept, name="edgerec-port-keeper", daemon=True).start()
        return True

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._sock.accept()
            except OSError:
                return  # closed: the server is stopping
            with self._lock:
                looped = (str(peer[0]), int(peer[1])) in self._mine
            if looped or not self._relays.acquire(blocking=False):
                client.close()  # our own relay came back to us (the worker died meanwhile), or too many at once
                continue
            try:
                threading.Thread(target=self._relay, args=(client,), name="edgerec-port-relay", daemon=True).start()
            except RuntimeError:  # no thread to be had: the client can retry
                client.close()
                self._relays.release()

    def close(self) -> None:
        """Stop taking connections and let go of the port (relays under way finish on their own)."""
        if self.listening:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
        self._sock.close()

    def _relay(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        mine: tuple[str, int] | None = None
        try:
            deadline = time.monotonic() + WAIT_S
            # The worker listening: the program's pick is it, never this socket.
            while _listeners(self._host, self._port) < 2:
                if time.monotonic() > deadline:
                    return
                time.sleep(_POLL_S)
            assert self._target is not None  # start() refused otherwise
            upstream = socket.socket(client.family, socket.SOCK_STREAM)
            upstream.bind((self._source, 0))
            name = upstream.getsockname()
            mine = (str(name[0]), int(name[1]))
            with self._lock:
                self._mine.add(mine)
            upstream.settimeout(max(0.1, deadline - time.monotonic()))
            upstream.connect((self._target, self._port))
            _pump(client, upstream)
        except OSError:
            pass  # either side went away: both are closed below
        finally:
            if mine is not None:
                with self._lock:
                    self._mine.discard(mine)
            for s in (client, upstream):
                if s is not None:
                    s.close()
            self._relays.release()


def _client_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as a worker sees it (IPv4-mapped ones as IPv4), or None if it is not an address."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_RELAYED_IP = ipaddress.IPv4Address(RELAYED_FROM)


def is_relayed(address: str | None) -> bool:
    """Whether a worker's client ``address`` is a port keeper's relay from a wildcard listener (any client)."""
    return _client_ip(address) == _RELAYED_IP


def is_local_caller(address: str | None) -> bool:
    """Whether a worker's client ``address`` is a caller on this machine: loopback, and not a relay, which
    carries remote clients' connections too."""
    ip = _client_ip(address)
    return ip is not None and ip.is_loopback and ip != _RELAYED_IP


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have finished sending (a side that ends passes its end on: a
    client may half-close after its request and still read the answer), or nothing moves for ``_IDLE_S``."""
    peer = {a.fileno(): (a, b), b.fileno(): (b, a)}
    poller = select.poll()  # not select(): descriptors above 1023 are fine
    for fd in peer:
        poller.register(fd, select.POLLIN)
    for s in (a, b):
        s.settimeout(_IDLE_S)  # a side that stops reading does not hold the relay for ever
    while peer:
        ready = poller.poll(_IDLE_S * 1000)
        if not ready:
            return
        for fd, _ in ready:
            src, dst = peer[fd]
            data = src.recv(65536)
            if data:
                dst.sendall(data)
                continue
            poller.unregister(fd)
            del peer[fd]
            dst.shutdown(socket.SHUT_WR)


__all__ = [
    "MAX_RELAYED", "RELAYED_FROM", "PortKeeper", "WAIT_S", "is_local_caller", "is_relayed",
    "queued_connections_migrate", "warn_unless_migrating",
]
