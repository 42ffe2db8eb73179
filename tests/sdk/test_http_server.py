"""Reserving the port both services listen on: SO_REUSEPORT must never let a second server join a running one."""

from __future__ import annotations

import socket
import time

import pytest

from edgerec.sdk.errors import ConfigurationError
from edgerec.sdk.http_server import reserve_port


def _listener(port: int = 0, reuseaddr: bool = True) -> socket.socket:
    s = socket.socket()
    if reuseaddr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    return s


def test_a_port_another_program_listens_on_is_refused():
    other = _listener()
    port = other.getsockname()[1]
    try:
        with pytest.raises(ConfigurationError, match=rf"^cannot listen on 127\.0\.0\.1:{port} \(Address already in "
                                                     r"use; is another server running there\?\)$"):
            reserve_port("127.0.0.1", port)
    finally:
        other.close()


def test_a_second_server_cannot_join_one_that_is_starting_or_running():
    port, held = reserve_port("127.0.0.1", 0)  # the first server, its workers not listening yet
    try:
        with pytest.raises(ConfigurationError, match="is another server running there"):
            reserve_port("127.0.0.1", port)
        # its workers bind the port with SO_REUSEPORT, as granian's do: they join, nobody else does
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen(8)
        try:
            with pytest.raises(ConfigurationError, match="is another server running there"):
                reserve_port("127.0.0.1", port)
        finally:
            worker.close()
    finally:
        held.close()


def test_a_restart_on_the_same_port_is_not_held_back_by_time_wait():
    """A stopped server's closed connections linger in TIME_WAIT; they do not make the port "in use"."""
    server = _listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first: TIME_WAIT is on its side
    time.sleep(0.05)
    client.close()
    server.close()
    again, held = reserve_port("127.0.0.1", port)
    held.close()
    assert again == port
