"""A minute of load on a real edge server (wrk, keep-alive clients, infer and rank in turn): not one error,
and the worker's memory settles (RSS growth at most 10 % after a warm-up)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from edgerec.sdk.http_server import child_pids

INFER = {"inputs": [
    {"name": "user_id", "shape": [2], "datatype": "BYTES", "data": ["u1", "u2"]},
    {"name": "item_id", "shape": [2], "datatype": "INT64", "data": [3, 4]},
    {"name": "ctx", "shape": [2, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]},
]}
RANK = {"user": {"id": "u7"}, "candidates": list(range(0, 60, 3)), "context": {"ctx": [0.3, 0.1, 0.9, 0.5]},
        "top_k": 5}


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        total += int(m[1]) if m else 0
    return total


def _wrk(url: str, seconds: int) -> dict[str, int]:
    # Odd requests infer, even ones rank, each with a fresh request id.
    infer, rank = json.dumps(INFER), json.dumps(RANK)
    script = ('local n = 0\nrequest = function()\n  n = n + 1\n'
              '  local h = {["Content-Type"] = "application/json", ["X-Request-ID"] = "soak-" .. n}\n'
              f'  if n % 2 == 1 then return wrk.format("POST", "/v2/models/ctr/infer", h, [==[{infer}]==])\n'
              f'  else return wrk.format("POST", "/v1/rank", h, [==[{rank}]==]) end\nend\n')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
    try:
        out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "10s", "-s", lua.name, url],
                             capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        Path(lua.name).unlink()
    done = re.search(r"(\d+) requests in", out)
    assert done, out
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(done[1]), "non_2xx": int(non_2xx[1]) if non_2xx else 0,
            "socket_errors": sum(int(x) for x in socket_errors.groups()) if socket_errors else 0}


@pytest.mark.slow
def test_a_minute_of_load_without_errors_or_memory_growth(serve):
    if shutil.which("wrk") is None:
        pytest.skip("no wrk (apt-get install wrk, as .ci/run does)")
    live = serve()
    assert live.post("/v1/rank", json=RANK).status_code == 200
    warm = _wrk(live.url, 10)
    workers = child_pids(live.running.pid)
    assert workers
    before = _rss_kib(workers)
    soak = _wrk(live.url, 60)
    after = _rss_kib(workers)
    assert child_pids(live.running.pid) == workers  # no worker died and was replaced
    for run in (warm, soak):
        assert run["non_2xx"] == 0 and run["socket_errors"] == 0, run
    assert soak["requests"] > 6000, soak  # the minute was real load, not a trickle
    assert after <= before * 1.10, (before, after)
