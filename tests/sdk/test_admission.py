"""The front's admission with shedding, through a real granian server: past its slots and queue, a request is
refused at once with 503 and Retry-After; one that waited too long is refused at the deadline; what is admitted
is served."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.net import free_port, wait_for

from edgerec.sdk.http_errors import retry_after_seconds

TESTS = Path(__file__).resolve().parents[1]


def _serve(admission: str, seconds: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "SLOW_APP_SECONDS": str(seconds), "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen([sys.executable, "-c", "from support.slow_app import main; main()", str(port), admission],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 30), "the slow app did not start"
    return proc, url


def _burst(url: str, n: int) -> list[tuple[int, float, httpx.Response]]:
    def one(_: int) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        r = httpx.post(url, content=b"{}", timeout=30)
        return r.status_code, time.monotonic() - started, r

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.slow
def test_past_the_queue_requests_are_refused_at_once():
    # One slot, two may wait (up to 9 s), retry after 7 s. Requests take 1.5 s, so "at once" and "after
    # waiting" stay a second apart even on a loaded machine.
    proc, url = _serve("1,2,9,7", 1.5)
    try:
        answers = _burst(url, 10)
        served = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] == 503]
        assert len(served) == 3 and len(refused) == 7, [a[:2] for a in answers]
        assert max(t for _, t, _ in refused) < 1.2  # at once, not after waiting
        assert all(r.headers["Retry-After"] == "7" and r.json()["error"] == "unavailable" for _, _, r in refused)
        assert {retry_after_seconds(r.headers["Retry-After"]) for _, _, r in refused} == {7.0}  # as clients read it
        assert max(t for _, t, _ in served) >= 4.4  # the third waited for the two before it
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_a_request_that_waits_too_long_is_refused_at_the_deadline():
    proc, url = _serve("1,8,0.2,3", 1.5)  # one slot; waiting at most 0.2 s
    try:
        answers = _burst(url, 3)
        assert sorted(a[0] for a in answers) == [200, 503, 503]
        waited = [t for code, t, _ in answers if code == 503]
        assert all(0.2 <= t < 1.2 for t in waited), waited  # at the deadline, not after the 1.5 s request
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_with_no_queue_a_free_slot_still_serves():
    proc, url = _serve("1,0,5,7", 1.5)  # one slot, nobody may wait
    try:
        assert httpx.post(url, content=b"{}", timeout=30).status_code == 200  # alone: served
        assert sorted(a[0] for a in _burst(url, 3)) == [200, 503, 503]
    finally:
        proc.terminate()
        proc.wait(15)


def test_retry_after_reads_seconds_and_dates_and_ignores_garbage():
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 GMT
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 3 ", now) == 3.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:14:05 GMT", now) == 45.0  # an HTTP-date, 45 s on
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # already past: now
    for garbage in (None, "", "-5", "1.5", "soon", "\u0663", "9" * 65, "Tue, 99 Nov 2023 25:00:00 GMT"):
        assert retry_after_seconds(garbage, now) is None, garbage
