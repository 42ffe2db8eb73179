"""The edge server's event spool: whole lines, the byte cap (drop and count), ops tallies, rotation."""

from __future__ import annotations

import os

from edgerec.edge_server.event_spool import EventSpool
from edgerec.edge_server.metrics import Metrics
from edgerec.sdk.event_spool import SpooledEvent, SpooledOps, parse_line
from edgerec.sdk.user_keys import user_fingerprint

KEY = bytes(range(32))


def _lines(folder):
    return [parse_line(raw) for p in sorted(folder.iterdir()) for raw in p.read_bytes().splitlines()]


def test_events_and_ops_lines_read_back(tmp_path):
    spool = EventSpool(tmp_path, 1 << 20, KEY)
    fp = spool.fingerprint("u7")
    assert fp == user_fingerprint(KEY, "u7") and "u7" not in fp and len(fp) == 16
    spool.events([SpooledEvent(1.5, "click", "ctr", 2, "ab", "b", fp)])
    spool.request("ctr", 2, 200, 0.003)
    spool.request("ctr", 2, 503, 0.3)
    spool.scores("ctr", 2, [0.01, 0.99, 1.7])
    spool.close()
    event, ops = _lines(tmp_path)
    assert event == SpooledEvent(1.5, "click", "ctr", 2, "ab", "b", fp)
    assert isinstance(ops, SpooledOps) and (ops.model, ops.version, ops.requests, ops.errors) == ("ctr", 2, 2,
                                                                                                 {"5xx": 1})
    assert sum(ops.latency) == 2 and ops.latency[3] == 1 and ops.scores[0] == 1 and ops.scores[19] == 2
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())


def test_over_the_byte_cap_lines_are_dropped_and_counted(tmp_path):
    metrics = Metrics()
    spool = EventSpool(tmp_path, 65536, KEY, metrics)
    e = SpooledEvent(1.0, "impression", "ctr", 1, "", "", user_fingerprint(KEY, "u1"))
    dropped = sum(spool.events([e] * 100) for _ in range(200))
    spool.close()
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert 0 < dropped == spool.dropped and size <= 65536
    assert len(_lines(tmp_path)) + dropped == 20_000
    assert metrics.registry.get_sample_value("edgerec_events_spool_dropped_total") == dropped


def test_rotation_starts_a_new_file(tmp_path):
    spool = EventSpool(tmp_path, 1 << 20, KEY)
    e = SpooledEvent(1.0, "impression", "ctr", 1, "", "", user_fingerprint(KEY, "u1"))
    spool.events([e])
    spool.rotate()
    spool.events([e])
    spool.close()
    assert len(list(tmp_path.iterdir())) == 2
