"""``edgerec serve`` as a user runs it: granian, JSON logs, SIGTERM, several workers with one control API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

TOKEN = "cli-control-token-0123456789"
ROW = {"inputs": [
    {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u3"]},
    {"name": "item_id", "shape": [1], "datatype": "INT64", "data": [5]},
    {"name": "ctx", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 0.5, 0.5, 0.5]},
]}
EDGEREC = [sys.executable, "-c", "from edgerec.sdk.cli import main; main()"]


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"serve-{len(list(tmp_path.iterdir()))}.log"
    env = {**os.environ, "EDGEREC_CONTROL_TOKEN": TOKEN}
    with log.open("wb") as fh:
        proc = subprocess.Popen([*EDGEREC, "serve", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    return proc, log


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready in {seconds} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("server did not stop on SIGTERM")


@pytest.mark.slow
def test_serve_runs_on_granian_with_json_logs(packages, trusted_key, tmp_path, unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    proc, log = _start(["--model-dir", str(packages["dir"]), "--port", str(unused_port), "-k", str(trusted_key),
                        "--threads", "1"], tmp_path)
    try:
        _wait_ready(url, proc, log)
        r = httpx.post(f"{url}/v2/models/ctr/infer", json=ROW, headers={"X-Request-ID": "cli-1"})
        assert r.status_code == 200 and r.headers["Server"] == "granian"  # not Werkzeug's dev server
    finally:
        assert _stop(proc) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("edge server listening") for line in lines)
    assert any(line["logger"] == "_granian" and "Spawning worker-1" in line["msg"] for line in lines)
    assert any(line.get("request_id") == "cli-1" and line["logger"] == "edgerec.access" for line in lines)


@pytest.mark.slow
def test_workers_share_the_port_metrics_and_control(packages, trusted_key, tmp_path, unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    proc, log = _start(["--model-dir", str(packages["dir"]), "--port", str(unused_port), "-k", str(trusted_key),
                        "--workers", "2", "--threads", "1", "--no-access-log"], tmp_path)
    try:
        _wait_ready(url, proc, log)
        time.sleep(1.0)  # both workers ready, not only the first to answer
        for _ in range(10):
            assert httpx.post(f"{url}/v2/models/ctr/infer", json=ROW).json()["model_version"] == "1"
        r = httpx.post(f"{url}/control/v1/models/load", json={"path": str(packages["v2"])},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["state"] == "serving"
        versions = {httpx.post(f"{url}/v2/models/ctr/infer", json=ROW).json()["model_version"] for _ in range(20)}
        assert versions == {"2"}  # every worker swapped, whichever one answered the control call
        from prometheus_client.parser import text_string_to_metric_families

        samples = [s for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
                   for s in fam.samples]
        total = sum(s.value for s in samples
                    if s.name == "edgerec_requests_total" and s.labels.get("endpoint") == "v2.infer")
        assert total == 30  # summed over both worker processes
        serving = {s.labels["pid"] for s in samples if s.name == "edgerec_model_info"
                   and s.labels["version"] == "2" and s.value == 1}
        assert len(serving) == 2  # each worker process reports v2 loaded
    finally:
        assert _stop(proc) == 0


def test_usage_errors(tmp_path, packages):
    r = subprocess.run([*EDGEREC, "serve", "--model-dir", str(packages["dir"])], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "EDGEREC_TRUSTED_KEYS"}, timeout=60)
    assert r.returncode == 2 and "--trusted-key" in r.stderr
    bad = tmp_path / "edge.toml"
    bad.write_text("[batching]\nmax_batch = 0\n")
    r = subprocess.run([*EDGEREC, "serve", "--config", str(bad), "-k", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "max_batch" in r.stderr


@pytest.mark.slow
def test_serve_writes_plain_lines_with_log_format_text(packages, trusted_key, tmp_path, unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    proc, log = _start(["--model-dir", str(packages["dir"]), "--port", str(unused_port), "-k", str(trusted_key),
                        "--threads", "1", "--log-format", "text"], tmp_path)
    try:
        _wait_ready(url, proc, log)
        assert httpx.post(f"{url}/v2/models/ctr/infer", json=ROW).status_code == 200
    finally:
        assert _stop(proc) == 0
    text = log.read_text()
    assert "INFO edgerec.access: POST /v2/models/ctr/infer 200" in text
    assert "INFO _granian: Spawning worker-1" in text
    assert not [line for line in text.splitlines() if line.startswith("{")]


def _one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


def test_secret_files_group_or_others_may_read_are_refused(trusted_key, tmp_path):
    """A control token or user key file that is not 0600 stops the server before it starts, in one line."""
    token = tmp_path / "control.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    user_key = tmp_path / "user.key"
    user_key.write_text(os.urandom(32).hex())
    user_key.chmod(0o640)
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEREC_CONTROL_TOKEN", "EDGEREC_CONTROL_TOKEN_FILE")}
    base = [*EDGEREC, "serve", "--model-dir", str(tmp_path), "-k", str(trusted_key), "--port", "0"]
    spool = ["--events-spool", str(tmp_path / "events")]
    for args, path in ((["--control-token-file", str(token)], token),
                       (["--user-key-file", str(user_key), *spool], user_key)):
        r = subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=60)
        line = _one_line_error(r, 1)
        assert f"{path}: " in line and "accessible by group or others" in line and f"chmod 600 {path}" in line
        assert TOKEN not in line


@pytest.mark.parametrize("url", ["redis://:s3cret-pw@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?password=s3cret-pw"])
def test_a_cache_url_with_a_password_is_refused_on_the_command_line(trusted_key, tmp_path, url):
    r = subprocess.run([*EDGEREC, "serve", "--model-dir", str(tmp_path), "-k", str(trusted_key), "--cache-url",
                        url], capture_output=True, text=True, timeout=60)
    line = _one_line_error(r, 2)
    assert "--cache-url" in line and "EDGEREC_CACHE_URL" in line and "s3cret-pw" not in r.stderr + r.stdout


def test_a_cache_url_with_a_password_is_taken_from_the_environment_and_the_settings_file(trusted_key, tmp_path,
                                                                                          monkeypatch):
    from edgerec.edge_server.cli import build_config, serve

    url = "redis://:s3cret-pw@127.0.0.1:6379/0"
    args = ["--model-dir", str(tmp_path), "-k", str(trusted_key)]
    monkeypatch.setenv("EDGEREC_CACHE_URL", url)
    ctx = serve.make_context("serve", list(args))
    assert build_config(ctx, ctx.params).cache_url == url
    monkeypatch.delenv("EDGEREC_CACHE_URL")
    settings = tmp_path / "edge.toml"
    settings.write_text(f'[cache]\nurl = "{url}"\n')
    ctx = serve.make_context("serve", [*args, "--config", str(settings)])
    assert build_config(ctx, ctx.params).cache_url == url
    # Without a password the option is fine on the command line.
    ctx = serve.make_context("serve", [*args, "--cache-url", "redis://127.0.0.1:6379/0"])
    assert build_config(ctx, ctx.params).cache_url == "redis://127.0.0.1:6379/0"


def test_setting_errors_name_the_file_key_or_the_option_the_user_wrote(trusted_key, tmp_path):
    from edgerec.edge_server.cli import build_config, serve
    from edgerec.edge_server.errors import ConfigError

    args = ["--model-dir", str(tmp_path), "-k", str(trusted_key)]
    settings = tmp_path / "edge.toml"

    def error(*extra: str) -> str:
        ctx = serve.make_context("serve", [*args, *extra])
        with pytest.raises(ConfigError) as exc:
            build_config(ctx, ctx.params)
        return str(exc.value)

    settings.write_text("[batching]\nmin_call_us = -1\n")
    assert error("--config", str(settings)) == "batching.min_call_us: must be 0..1000000"
    settings.write_text('[limits]\nmax_body_bytes = "big"\n')
    assert error("--config", str(settings)) == "limits.max_body_bytes: expected an integer"
    assert error("--max-held-body-bytes", "2048") == "--max-held-body-bytes: must be >= max_body_bytes"
    # A file value the command line replaced is named as the option that replaced it.
    settings.write_text("[limits]\nmax_held_body_bytes = 2048\n")
    assert error("--config", str(settings)) == "limits.max_held_body_bytes: must be >= max_body_bytes"
    settings.write_text("[limits]\nmax_held_body_bytes = 16777216\n")
    assert error("--config", str(settings), "--max-held-body-bytes", "4096") == \
        "--max-held-body-bytes: must be >= max_body_bytes"


@pytest.mark.slow
def test_a_second_server_on_a_port_in_use_is_refused(packages, trusted_key, tmp_path, unused_port):
    """Every worker binds with SO_REUSEPORT, which would let a second ``edgerec serve`` on the same port join the
    first and silently take a share of its connections (seen as a stray 400 in CI): it is refused in one line."""
    url = f"http://127.0.0.1:{unused_port}"
    args = ["--model-dir", str(packages["dir"]), "--port", str(unused_port), "-k", str(trusted_key)]
    proc, log = _start(args, tmp_path)
    try:
        _wait_ready(url, proc, log)
        r = subprocess.run([*EDGEREC, "serve", *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "EDGEREC_CONTROL_TOKEN": TOKEN})
        line = _one_line_error(r, 1)
        assert f"cannot listen on 127.0.0.1:{unused_port}" in line and "another server running there" in line
        assert all(httpx.get(f"{url}/v2/health/ready").status_code == 200 for _ in range(20))
    finally:
        assert _stop(proc) == 0
    again, log = _start(args, tmp_path)  # the port is free again once the first has stopped
    try:
        _wait_ready(url, again, log)
    finally:
        assert _stop(again) == 0
