"""The waitress layer: the I/O loop does not spin on channels being written, queue warnings are
summarised, a response goes out in one write, and wake-ups of the loop are coalesced without losing one."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def test_waitress_queue_warnings_are_summarised(monkeypatch):
    from edgerec.edge_server import server as server_mod

    lines: list[str] = []

    class Keep:
        def warning(self, msg: str, *args: object) -> None:
            lines.append(msg % args)

    clock = [100.0]
    monkeypatch.setattr(server_mod.time, "monotonic", lambda: clock[0])
    q = server_mod.QueueDepthLog(Keep(), interval_s=10)  # type: ignore[arg-type]
    q.warning("Task queue depth is %d", 1)  # the first one at once
    for depth in (3, 7, 2):
        q.warning("Task queue depth is %d", depth)
    assert len(lines) == 1
    clock[0] += 10
    q.warning("Task queue depth is %d", 4)
    assert len(lines) == 2 and lines[1].startswith("Task queue depth is 7 (the deepest of 4 requests")


def test_servers_summarise_queue_warnings(base_config):
    from edgerec.edge_server import RunningServer, create_app
    from edgerec.edge_server.server import QueueDepthLog

    running = RunningServer(create_app(base_config), base_config)
    try:
        assert isinstance(running.server.task_dispatcher.queue_logger, QueueDepthLog)
    finally:
        running.close()


def test_io_loop_leaves_a_channel_alone_while_its_request_thread_writes():
    from edgerec.edge_server.server import Channel

    ch = Channel.__new__(Channel)  # the state that matters, without a socket
    ch.requests, ch.total_outbufs_len, ch.will_close, ch.close_when_flushed = [object()], 10, False, False
    ch.outbuf_lock = threading.Condition()
    assert ch.writable()  # data and a free lock: the loop may flush
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with ch.outbuf_lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(5)
    try:
        assert not ch.writable()  # the request thread is sending: nothing for the loop to do
        ch.will_close = True
        assert ch.writable()  # closing is still the loop's business
        ch.will_close = False
        ch.requests = []
        assert ch.writable()  # no request thread: the loop flushes whatever is left
    finally:
        release.set()
        t.join()


def test_every_listener_makes_our_channels(base_config):
    import socket

    from waitress.server import BaseWSGIServer

    from edgerec.edge_server.server import Channel, Trigger, make_server

    def app(environ, start_response):
        return [b""]

    single = make_server(app, base_config)
    a, b = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    multi = make_server(app, base_config, sockets=[a, b])
    try:
        assert single.channel_class is Channel and type(single.trigger) is Trigger
        listeners = [o for o in multi.map.values() if isinstance(o, BaseWSGIServer)]
        assert len(listeners) == 2 and all(o.channel_class is Channel for o in listeners)
        assert all(type(o.trigger) is Trigger for o in listeners)
    finally:
        for srv in (single, *listeners):
            srv.close()


def test_trigger_writes_once_until_the_loop_drains_it():
    import os

    from edgerec.edge_server.server import Trigger

    t = Trigger({})
    try:
        thunks: list[int] = []
        t.pull_trigger()
        t.pull_trigger(lambda: thunks.append(1))  # a wake-up is pending: no second byte
        os.set_blocking(t._fds[0], False)
        assert os.read(t._fds[0], 100) == b"x"  # one byte for both pulls
        os.write(t.trigger, b"x")  # put it back for the loop
        t.handle_read()  # the loop: drain, clear, run the thunks
        assert thunks == [1] and not t._pending
        t.pull_trigger()  # the next pull writes again
        assert os.read(t._fds[0], 100) == b"x"
    finally:
        t.close()


@contextlib.contextmanager
def plain_server(app, config, loop_timeout: float | None = None) -> Iterator[str]:
    """``app`` (any WSGI callable) on our waitress setup; yields its URL."""
    from waitress.wasyncore import close_all

    from edgerec.edge_server.server import make_server

    server = make_server(app, config)
    if loop_timeout is not None:
        server.adj.asyncore_loop_timeout = loop_timeout
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.trigger.pull_trigger(lambda: close_all(server._map))
        loop.join(5)
        server.task_dispatcher.shutdown(timeout=5)


def test_small_response_is_one_write_with_its_header(base_config, monkeypatch):
    import httpx

    from edgerec.edge_server.server import Channel

    writes: list[bytes] = []
    original = Channel.write_soon

    def record(self, data):
        if data:
            writes.append(bytes(data))
        return original(self, data)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [b'{"ok":true}']  # as Flask does

    monkeypatch.setattr(Channel, "write_soon", record)
    with plain_server(app, base_config) as url:
        r = httpx.get(url + "/")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(b'{"ok":true}')
        writes.clear()
        r = httpx.head(url + "/")  # no body: waitress's own path writes the header alone
        assert r.status_code == 200 and r.content == b""
        assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")


def test_no_wake_up_is_lost_under_concurrent_keep_alive_clients(base_config):
    """A lost wake-up would leave a connection unread until the loop's select times out.

    The timeout is made longer than the client's, so a lost one fails the test
    instead of costing a second.
    """
    import httpx

    def app(environ, start_response):
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    errors: list[BaseException] = []

    def client(url: str, n: int) -> None:
        try:
            with httpx.Client(timeout=20) as c:
                for i in range(150):
                    r = c.get(f"{url}/{n}/{i}")
                    assert r.text == f"/{n}/{i}"
        except BaseException as exc:  # reported below
            errors.append(exc)

    with plain_server(app, base_config.replace(http_threads=4), loop_timeout=60) as url:
        threads = [threading.Thread(target=client, args=(url, n)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert not any(t.is_alive() for t in threads)
