"""The waitress layer: the I/O loop does not spin on channels being written, queue warnings are summarised."""

from __future__ import annotations

import threading


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

    from edgerec.edge_server.server import Channel, make_server

    def app(environ, start_response):
        return [b""]

    single = make_server(app, base_config)
    a, b = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    multi = make_server(app, base_config, sockets=[a, b])
    try:
        assert single.channel_class is Channel
        listeners = [o for o in multi.map.values() if isinstance(o, BaseWSGIServer)]
        assert len(listeners) == 2 and all(o.channel_class is Channel for o in listeners)
    finally:
        for srv in (single, *listeners):
            srv.close()
