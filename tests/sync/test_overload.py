"""Overload at the sync service's door: past its request threads and a short queue, requests get 503 with
Retry-After at once (counted in /metrics), the rest are served, and nodes back off."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgerec.sync.service.server import RunningServer


@pytest.mark.slow
def test_past_the_queue_the_service_refuses_at_once(sync_env):
    env = sync_env
    from dataclasses import replace

    env.service.config = replace(env.service.config, threads=1, shed_max_waiting=1, shed_max_wait_s=0.001,
                                 shed_retry_after_s=9)
    busy = RunningServer(env.service, maintenance=False).start()
    try:
        headers = {"Authorization": f"Bearer {env.init.admin_token}"}

        def call(_: int) -> httpx.Response:
            with httpx.Client(timeout=30) as c:  # a connection each: requests arrive together
                return c.get(busy.url + "/api/v1/admin/nodes", headers=headers)

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(call, range(256)))
        codes = [r.status_code for r in answers]
        refused = [r for r in answers if r.status_code == 503]
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
        assert all(r.headers["Retry-After"] == "9" and r.json()["error"] == "unavailable" for r in refused)
        scrape = httpx.get(busy.url + "/metrics", timeout=10)  # the service is idle again: not refused
        assert scrape.status_code == 200
        metrics = scrape.text
        line = next(ln for ln in metrics.splitlines()
                    if ln.startswith("edgerec_sync_refusals_total{") and 'reason="overloaded"' in ln)
        assert float(line.rsplit(" ", 1)[1]) == len(refused)
    finally:
        busy.stop()
