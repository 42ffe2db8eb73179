"""Schemathesis (property-based, from the server's own OpenAPI document) against a real edge server: whatever
it sends, every route answers, and none with a 5xx. The control token is given, so the control API is fuzzed too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ST = Path(sys.executable).parent / "st"


@pytest.mark.slow
def test_no_input_makes_the_edge_server_fail(serve):
    if not ST.exists():
        pytest.fail("schemathesis is missing: it is in the [dev] extra")
    live = serve()
    token = live.running.config.control_token
    out = subprocess.run(
        [str(ST), "run", live.url + "/openapi.json", "--url", live.url, "--checks", "not_a_server_error",
         "--max-examples", "25", "--seed", "7", "--no-color", "-H", f"Authorization: Bearer {token}"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
    generated = int(re.search(r"(\d+) generated", out.stdout)[1])  # type: ignore[index]
    assert generated > 500  # the run really exercised the API
    assert live.get("/v2/health/live").status_code == 200
