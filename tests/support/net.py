"""Loopback helpers for tests and benchmarks: free ports, waiting for a condition or a server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_http_ok(url: str, proc: subprocess.Popen[Any], log: Path, timeout: float, interval: float = 0.05,
                 tail: int = 3000) -> None:
    """Wait until ``GET url`` answers 200; fail with the tail of ``log`` if ``proc`` exits first or time runs out."""

    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_for(up, timeout=timeout, interval=interval) and proc.poll() is None, log.read_text()[-tail:]
