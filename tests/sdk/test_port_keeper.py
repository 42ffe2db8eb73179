"""The port keeper with real sockets: workers stand in as plain SO_REUSEPORT listeners that answer which of
them served and the client port they saw (the client's own when the connection came straight to them)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from edgerec.sdk.http_server import reserve_port
from edgerec.sdk.port_keeper import (
    RELAYED_FROM,
    PortKeeper,
    is_local_caller,
    is_relayed,
    queued_connections_migrate,
    warn_unless_migrating,
)


class Worker:
    """A stand-in worker: listens on the port in the group and answers every connection with one line."""

    def __init__(self, name: str, port: int, address: str = "127.0.0.1") -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                conn.sendall(f"{self.name} {peer[1]} {peer[0]}".encode())

    def die(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept; the listener leaves the group
        self.sock.close()


def ask(port: int, host: str = "127.0.0.1") -> tuple[str, bool]:
    """Which worker answered, and whether the connection reached it directly (not relayed)."""
    name, direct, _ = ask_peer(port, host)
    return name, direct


def ask_peer(port: int, host: str = "127.0.0.1") -> tuple[str, bool, str]:
    """:func:`ask`, and the client address the worker saw."""
    with socket.create_connection((host, port), timeout=15) as c:
        c.sendall(b"ping")
        name, seen, peer = c.recv(200).decode().split()
        return name, int(seen) == c.getsockname()[1], peer


@pytest.fixture
def kept() -> Iterator[tuple[int, PortKeeper]]:
    port, sock = reserve_port("127.0.0.1", 0)
    keeper = PortKeeper(sock)
    assert keeper.start() and keeper.listening
    try:
        yield port, keeper
    finally:
        keeper.close()


def test_with_its_worker_up_every_connection_goes_straight_to_it(kept):
    port, _ = kept
    worker = Worker("a", port)
    try:
        assert [ask(port) for _ in range(30)] == [("a", True)] * 30
    finally:
        worker.die()


def test_a_connection_while_the_worker_is_replaced_waits_and_is_relayed_to_the_new_one(kept):
    port, _ = kept
    Worker("a", port).die()
    answers: list[tuple[str, bool]] = []
    t = threading.Thread(target=lambda: answers.append(ask(port)))
    t.start()  # would be refused without the keeper: nothing else listens now
    time.sleep(0.5)
    assert answers == []  # held until a worker listens
    replacement = Worker("b", port)
    try:
        t.join(10)
        assert answers == [("b", False)]  # relayed: the worker saw the keeper's connection
        assert [ask(port) for _ in range(10)] == [("b", True)] * 10  # then straight to it again
    finally:
        replacement.die()


def test_a_relayed_client_is_closed_when_no_worker_comes(kept, monkeypatch):
    from edgerec.sdk import port_keeper

    monkeypatch.setattr(port_keeper, "WAIT_S", 0.5)
    port, _ = kept
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as c:  # accepted, not refused
        c.sendall(b"ping")
        try:
            data = c.recv(100)
        except ConnectionResetError:  # closed with the request unread
            data = b""
        assert data == b""
    assert time.monotonic() - t0 < 5


def test_the_kept_port_still_refuses_a_second_server(kept):
    port, _ = kept
    from edgerec.sdk.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="is another server running there"):
        reserve_port("127.0.0.1", port)


def test_closing_stops_taking_connections_and_frees_the_port():
    port, sock = reserve_port("127.0.0.1", 0)
    keeper = PortKeeper(sock)
    assert keeper.start()
    keeper.close()
    deadline = time.monotonic() + 5
    while any(t.name == "edgerec-port-keeper" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "edgerec-port-keeper" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    again, sock = reserve_port("127.0.0.1", port)
    assert again == port
    sock.close()


def test_a_relayed_client_that_half_closes_after_its_request_still_gets_the_answer(kept):
    port, _ = kept
    got: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
            c.sendall(b"ping")
            c.shutdown(socket.SHUT_WR)  # done sending, as `nc -N` or a one-shot client does
            data = b""
            while chunk := c.recv(100):
                data += chunk
            got.append(data)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.3)  # relayed: no worker yet
    worker = Worker("c", port)
    try:
        t.join(10)
        assert len(got) == 1 and got[0].startswith(b"c ")
    finally:
        worker.die()


def test_where_the_program_cannot_be_attached_the_port_stays_reserved_and_not_listening(caplog):
    sock = socket.socket()  # no SO_REUSEPORT: the kernel refuses a reuseport program on it
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        keeper = PortKeeper(sock)
        assert keeper.start() is False and not keeper.listening
        assert "cannot steer its connections" in caplog.text
        assert sock.fileno() != -1  # still held: another program cannot take the port meanwhile
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        sock.close()


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_on_a_wildcard_address_a_relayed_client_is_not_taken_for_a_local_caller(wildcard):
    # The edge server's control API answers loopback callers only: a remote client relayed from 127.0.0.1
    # would pass for one. Relays to a wildcard listener come from RELAYED_FROM instead.
    if wildcard == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    port, sock = reserve_port(wildcard, 0)
    keeper = PortKeeper(sock)
    assert keeper.start()
    try:
        worker = Worker("a", port, wildcard)
        name, direct, peer = ask_peer(port)
        assert (name, direct) == ("a", True) and is_local_caller(peer)  # a local caller, straight to the worker
        worker.die()
        answers: list[tuple[str, bool, str]] = []
        t = threading.Thread(target=lambda: answers.append(ask_peer(port)))
        t.start()
        time.sleep(0.3)
        replacement = Worker("b", port, wildcard)
        try:
            t.join(10)
            assert len(answers) == 1
            name, direct, peer = answers[0]
            assert (name, direct) == ("b", False)
            assert peer in (RELAYED_FROM, "::ffff:" + RELAYED_FROM)
            assert is_relayed(peer) and not is_local_caller(peer)
        finally:
            replacement.die()
    finally:
        keeper.close()


def test_local_callers_are_loopback_addresses_other_than_the_relay():
    assert [is_local_caller(a) for a in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2", "::ffff:127.0.0.2",
                                         "10.1.2.3", "fe80::1%eth0", "", None, "not an address")] == \
        [True, True, True, False, False, False, False, False, False, False]


@pytest.mark.parametrize(("content", "migrates", "warned"), [("0\n", False, True), ("1\n", True, False)])
def test_the_migrate_sysctl_is_read_and_a_zero_is_warned_about_once(tmp_path, caplog, content, migrates, warned):
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text(content)
    assert queued_connections_migrate(str(sysctl)) is migrates
    with caplog.at_level("WARNING", logger="edgerec.http"):
        warn_unless_migrating(str(sysctl))
    lines = [r.getMessage() for r in caplog.records if "tcp_migrate_req" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)


def test_an_unreadable_migrate_sysctl_is_unknown_and_not_warned_about(tmp_path, caplog):
    missing = str(tmp_path / "absent")
    assert queued_connections_migrate(missing) is None
    with caplog.at_level("WARNING", logger="edgerec.http"):
        warn_unless_migrating(missing)
    assert not caplog.records
