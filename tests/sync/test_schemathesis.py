"""The sync service's OpenAPI document: complete (every Flask route is in it), and schemathesis, generating requests
from it against a real service with the admin token, gets no 5xx anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgerec.sync.service.app import create_app
from edgerec.sync.service.openapi import document

ST = Path(sys.executable).parent / "st"


def test_every_route_is_documented(sync_env):
    app = create_app(sync_env.service)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    documented = {(m, p) for p, item in document()["paths"].items() for m in item}
    assert routes == documented
    served = httpx.get(sync_env.url + "/api/v1/openapi.json", timeout=10).json()
    assert served["paths"].keys() == document()["paths"].keys()


@pytest.mark.slow
def test_no_input_makes_the_sync_service_fail(sync_env):
    if not ST.exists():
        pytest.fail("schemathesis is missing: it is in the [dev] extra")
    env = sync_env
    url = env.url
    out = subprocess.run(
        [str(ST), "run", url + "/api/v1/openapi.json", "--url", url, "--checks", "not_a_server_error",
         "--max-examples", "20", "--seed", "7", "--no-color", "-H", f"Authorization: Bearer {env.init.admin_token}"],
        capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
    assert int(re.search(r"(\d+) generated", out.stdout)[1]) > 500  # type: ignore[index]
    assert httpx.get(url + "/api/v1/health", timeout=10).status_code == 200
