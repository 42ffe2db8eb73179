"""The HTTP tier both services run on: granian, its workers and its limits.

granian (Rust: hyper on tokio, epoll) accepts connections, reads request
heads and keeps idle and slow clients in its event loop, where they cost a
few kilobytes and no Python thread. Used only through its public API
(``granian.server.Server``, ``Interfaces.RSGI``, ``HTTP1Settings``): its
worker processes share the port (``SO_REUSEPORT``) and a dead one is
replaced, its siblings taking its share meanwhile; a lone worker's port is
kept by the socket that reserved it (:mod:`.port_keeper`), so the port never
closes; TLS is its own
(rustls; a handshake that stalls is dropped after 10 s).

Each worker serves the service's WSGI app through :mod:`.wsgi_front` on
granian's RSGI interface: bodies are read on the event loop within their
route's limit and ``body_timeout_s``, then a few threads run the app.

What granian 2.8 leaves open, and how the settings here answer it:

- a request head has ``header_timeout_s`` (hyper's header timer): a new
  connection, one that sends nothing at all, and an idle keep-alive one are
  closed once it runs out (measured with granian 2.8.9: 5 silent connections
  closed at 10 s, the default);
- hyper has no body timeout: the front's ``body_timeout_s`` is it;
- the cap (``max_connections``, granian's backpressure) bounds idle and slow
  clients together, and new connections wait in the kernel's accept queue
  when it is reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import ipaddress
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .port_keeper import PortKeeper, warn_unless_migrating

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Environment variables a worker must not keep: granian copies os.environ into every request's environ.
SECRET_ENV = ("EDGEREC_CONTROL_TOKEN", "EDGEREC_ADMIN_TOKEN", "EDGEREC_ENROLL_TOKEN", "EDGEREC_DB_URL",
              "EDGEREC_CACHE_URL")


@dataclass(frozen=True)
class HttpSettings:
    """Where and how one service listens; the limits apply per worker process."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_connections: int = 4096  # open connections, idle ones included (granian's backpressure)
    header_timeout_s: float = 10.0  # a request head from its first byte; an idle keep-alive connection
    body_timeout_s: float = 10.0  # a request body from its first byte to its last (read by the front)
    max_header_bytes: int = 64 * 1024  # a request head must fit hyper's read buffer (else 431)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Mutual TLS: a client must present a certificate this CA bundle (PEM) issued, or the handshake fails.
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "port", "must be 0..65535"),
            (self.workers >= 1, "workers", "must be >= 1"),
            (self.max_connections >= 1, "max_connections", "must be >= 1"),
            (0.1 <= self.header_timeout_s <= 3600, "header_timeout_s", "must be 0.1..3600 seconds"),
            (0.1 <= self.body_timeout_s <= 3600, "body_timeout_s", "must be 0.1..3600 seconds"),
            (8192 <= self.max_header_bytes <= 16 * 1024 * 1024, "max_header_bytes", "must be 8 KiB..16 MiB"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_key", "a TLS certificate and key go together"),
            (self.tls_client_ca is None or self.tls_cert is not None, "tls_client_ca",
             "needs a TLS certificate and key (client certificates are checked in the TLS handshake)"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigurationError(f"{name} {problem}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def replace(self, **changes: Any) -> HttpSettings:
        return dataclasses.replace(self, **changes)


def check_tls_files(cert: Path, key: Path, client_ca: Path | None = None) -> None:
    """A one-line error now for what granian would fail on in every worker: a certificate chain (or client
    CA bundle) that is not PEM, a key that is not a PEM private key, or a key file group or others may read."""
    from cryptography.hazmat.primitives import serialization

    from .keys import read_private_file

    for chain in (cert, client_ca):
        if chain is not None:
            _check_pem_certificates(chain)
    try:
        serialization.load_pem_private_key(read_private_file(key), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{key}: not an unencrypted PEM private key") from exc


def _check_pem_certificates(path: Path) -> None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the certificates ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigurationError(f"{path}: not a PEM certificate chain") from exc


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
    """A port the workers can bind (a free one for 0), held by a bound socket (listening only in :func:`held`).

    Every worker binds the port itself with ``SO_REUSEPORT``; the socket
    returned here is in that group and keeps port 0's pick from going to
    another program; :func:`held` has it listen for the gaps between workers.

    ``SO_REUSEPORT`` would also let a second server of the same user join a
    running one's group and silently take a share of its connections (two
    ``edgerec serve --port 8080``, an old version and a new). So a port that
    something listens on is refused first, by binding it without
    ``SO_REUSEPORT``; and the socket held here has no ``SO_REUSEADDR`` (unless
    a program without ``SO_REUSEPORT`` left TIME_WAIT connections on the port),
    so that check fails for another server while this one's workers start.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    if port:
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR: the TIME_WAIT connections a stopped server leaves do not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {address}:{port} ({exc.strerror}; is another server "
                                     "running there?)") from exc
        finally:
            probe.close()
    error: OSError | None = None
    for reuse_address in (False, True) if port else (False,):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse_address))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return int(sock.getsockname()[1]), sock
    assert error is not None
    raise ConfigurationError(f"cannot listen on {address}:{port} ({error.strerror})") from error


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


def granian_logging(formatter: dict[str, Any] | None = None) -> dict[str, Any]:
    """granian's own log lines (worker spawned, died, replaced) on stderr, in ``formatter`` (a dictConfig one)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter or {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {"main": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "loggers": {
            "_granian": {"handlers": ["main"], "level": "INFO", "propagate": False},
            "granian.access": {"handlers": ["main"], "level": "INFO", "propagate": False},
        },
    }


LOG_CONFIG = granian_logging()
# granian's own lines as JSON lines, like the process's (``--log-format json``).
JSON_LOG_CONFIG = granian_logging({"()": "edgerec.sdk.json_logs.JsonFormatter"})


def granian_log_config(log_format: str) -> dict[str, Any]:
    """granian's logging setup for a process writing ``log_format`` lines (json or text)."""
    return JSON_LOG_CONFIG if log_format == "json" else LOG_CONFIG


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


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a server's granian workers), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return sorted(out)


def stop_server_process(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM to a server started in its own process group, SIGKILL to the group after ``timeout_s``;
    the exit status. The group: a SIGKILL of the server alone would leave its workers serving the port."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def exit_with_server(interval_s: float = 0.5) -> None:
    """In a worker: exit as soon as the server process that started it is gone.

    A ``kill -9`` of the server leaves its workers running, still accepting
    on the inherited socket: a restarted server then shares the port with an
    orphan that serves what the old process had loaded (seen in the node's
    restart test). A thread that watches the parent pid is used rather than
    ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked exits.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="edgerec-exit-with-server", daemon=True).start()


def build_granian(target: str, settings: HttpSettings, log_config: dict[str, Any] | None = None) -> Any:
    """A granian server for the :class:`~.wsgi_front.WSGIFront` that ``target`` ("module:factory") builds in
    each worker.

    ``serve()`` on it runs until SIGTERM or SIGINT. The factory is called
    once per worker process, after the fork; the caller hands it its
    settings through the environment or files. Constructing the server
    reconfigures logging (granian's ``dictConfig``): configure yours after.
    """
    from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.server import Server

    # A connection needs a descriptor in its worker; inherited by the forked workers.
    raise_fd_limit(settings.max_connections + 256)
    server = Server(
        target,
        address=listen_address(settings.host),
        port=settings.port,
        interface=Interfaces.RSGI,
        workers=settings.workers,
        # uvloop: a third less CPU a request than asyncio's loop on the RSGI path (measured; docs/benchmarks.md)
        loop=Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio,
        backpressure=settings.max_connections,
        backlog=max(1024, min(settings.max_connections, 65535)),
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout_s * 1000), keep_alive=True,
                                     max_buffer_size=settings.max_header_bytes),
        ssl_cert=settings.tls_cert,
        ssl_key=settings.tls_key,
        ssl_protocol_min=SSLProtocols.tls12,
        ssl_ca=settings.tls_client_ca,
        ssl_client_verify=settings.tls_client_ca is not None,
        factory=True,
        respawn_failed_workers=True,
        workers_kill_timeout=15,
        log_access=False,
        log_dictconfig=log_config or LOG_CONFIG,
    )
    return server


@dataclass(frozen=True)
class Shedding:
    """When the front (:class:`~.wsgi_front.WSGIFront`) refuses work instead of queueing it (503, ``Retry-After``).

    Past what the slots can serve, a queue only adds waiting: every answer
    gets later, clients time out and retry, and throughput falls. So at most
    ``max_waiting`` requests wait for a slot (more are refused at once) and
    none waits longer than ``max_wait_s``; a refused client is told to come
    back after ``retry_after_s`` seconds (nodes add their own jitter).
    """

    max_waiting: int = 64
    max_wait_s: float = 0.5
    retry_after_s: int = 10

    def __post_init__(self) -> None:
        if self.max_waiting < 0 or not self.max_wait_s > 0 or self.retry_after_s < 1:
            raise ConfigurationError("shedding: max_waiting >= 0, max_wait_s > 0 and retry_after_s >= 1")


@contextlib.contextmanager
def held(sock: socket.socket | None, workers: int = 1) -> Iterator[None]:
    """Close ``sock`` (a :func:`reserve_port` socket) when the block ends. With one worker, it takes the
    port's new connections while granian replaces the worker (:mod:`.port_keeper`; enter before it starts)."""
    keeper = PortKeeper(sock) if sock is not None else None
    if keeper is not None and workers == 1:
        keeper.start()
    if keeper is not None:
        warn_unless_migrating()  # silent where the sysctl cannot be read (not Linux, an old kernel)
    try:
        yield
    finally:
        if keeper is not None:
            keeper.close()


__all__ = [
    "check_tls_files",
    "JSON_LOG_CONFIG",
    "LOG_CONFIG",
    "Shedding",
    "SECRET_ENV",
    "HttpSettings",
    "WSGIApp",
    "build_granian",
    "drop_secret_env",
    "granian_log_config",
    "granian_logging",
    "held",
    "listen_address",
    "metrics_after_fork",
    "raise_fd_limit",
    "reserve_port",
]
