"""Running the edge server on granian: ``edgerec serve``, and the same server as a child process.

:func:`serve` is the process the user starts. It checks the settings (a
one-line error for a bad key, token or host), makes a private run folder
(the settings for the workers, mode 0600, with the control token and the
response key; the models every worker serves, :mod:`.worker_sync`; the
Prometheus files of several workers) and runs granian: ``config.workers``
processes share the port, each builds the app itself (:func:`.worker.app`),
and granian replaces one that dies. With two workers or more the port never
closes: the others keep accepting while one is replaced. Metrics are summed
across workers through prometheus client's multiprocess directory.

:class:`RunningServer` runs the same thing in a child process on a loopback
port, for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgerec.sdk.files import write_atomic
from edgerec.sdk.http_server import (
    HttpSettings,
    build_granian,
    check_tls_files,
    child_pids,
    drop_secret_env,
    granian_log_config,
    held,
    listen_address,
    reserve_port,
    stop_server_process,
)
from edgerec.sdk.keys import load_recipient_key, load_verify_key
from edgerec.sdk.user_keys import read_user_key

from .api_keys import read_entries
from .config import ServerConfig, read_token

log = logging.getLogger("edgerec.edge_server.server")
RUN_ENV = "EDGEREC_RUN_DIR"
CONFIG_FILE = "config.json"
PROMETHEUS_DIR = "prometheus"
TARGET = "edgerec.edge_server.worker:app"


def http_settings(config: ServerConfig) -> HttpSettings:
    return HttpSettings(host=config.host, port=config.port, workers=config.workers,
                        max_connections=config.max_connections, header_timeout_s=config.header_timeout_s,
                        body_timeout_s=config.body_timeout_s,
                        tls_cert=config.tls_cert, tls_key=config.tls_key)


def preflight(config: ServerConfig) -> ServerConfig:
    """What a worker would fail on, checked once here for a one-line error; the config the workers get."""
    for key in config.trusted_keys:
        load_verify_key(key)
    if config.recipient_key is not None:
        load_recipient_key(config.recipient_key)
    if config.tls_cert is not None and config.tls_key is not None:
        check_tls_files(config.tls_cert, config.tls_key)
    if config.api_key_file is not None:
        read_entries(config.api_key_file)
    if config.user_key_file is not None:
        read_user_key(config.user_key_file)
    return config.replace(response_key=config.response_key or os.urandom(32),
                          control_token=config.control_token or read_token(config.control_token_file))


PARENT_ENV = "EDGEREC_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """With ``EDGEREC_EXIT_WITH_PARENT=<pid>`` (a node daemon supervising this server), get SIGTERM
    when that process dies (Linux ``PR_SET_PDEATHSIG``), so no orphan keeps the port."""
    want = os.environ.get(PARENT_ENV)
    if not want or not want.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(want):  # the parent died before the call above
        raise SystemExit(0)


def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT."""
    exit_with_parent()
    config = preflight(config)
    settings = http_settings(config)
    address = listen_address(config.host)
    port, holder = reserve_port(address, config.port)
    run_dir = Path(tempfile.mkdtemp(prefix="edgerec-serve-"))
    try:
        with held(holder, config.workers):
            write_atomic(run_dir / CONFIG_FILE, config.replace(port=port, run_dir=run_dir).to_json().encode(),
                         mode=0o600)
            os.environ[RUN_ENV] = str(run_dir)
            if config.workers > 1:
                _multiprocess_metrics(run_dir / PROMETHEUS_DIR)
            drop_secret_env()  # the workers read the token from the run folder
            server = build_granian(TARGET, settings.replace(port=port), granian_log_config(config.log_format))
            config.logs().apply()  # granian reset the handlers
            log.info("edge server listening on %s://%s:%s", settings.scheme, config.host, port,
                     extra={"port": port, "workers": config.workers})
            server.serve()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _multiprocess_metrics(folder: Path) -> None:
    """Workers write their metrics to ``folder``; /metrics sums them (see ``metrics_after_fork``)."""
    folder.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def main() -> None:
    """``python -c 'from edgerec.edge_server.server import main; main()' CONFIG.json``: what RunningServer runs."""
    from edgerec.sdk import native_logs

    path = Path(sys.argv[1])
    config = ServerConfig.from_json(path.read_text())
    path.unlink()
    native_logs.quiet()
    config.logs().apply()
    serve(config)


class RunningServer:
    """:func:`serve` in a child process (on a free loopback port unless ``config.port`` names one).

    Its log (JSON lines, granian's too) goes to ``log_path`` (a temporary file by
    default); ``close`` stops it with SIGTERM. ``env`` adds environment variables;
    ``python`` replaces the command that runs :func:`main` (given the config file).
    """

    def __init__(self, config: ServerConfig, *, env: dict[str, str] | None = None, log_path: Path | None = None,
                 ready_timeout_s: float = 120.0, wait_ready: bool = True, python: list[str] | None = None) -> None:
        self.config = config
        self._tmp = Path(tempfile.mkdtemp(prefix="edgerec-running-"))
        self.log_path = log_path or self._tmp / "server.log"
        cfg = self._tmp / "config.json"
        write_atomic(cfg, config.to_json().encode(), mode=0o600)
        cmd = python or [sys.executable, "-c", "from edgerec.edge_server.server import main; main()"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([*cmd, str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
        self.port = self._wait_port(ready_timeout_s)
        host = f"[{config.host}]" if ":" in config.host else config.host
        self.url = f"{'https' if config.tls_cert else 'http'}://{host}:{self.port}"
        if wait_ready:
            self.wait_ready(ready_timeout_s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines of the log so far (other lines skipped)."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def _wait_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(r"edge server listening on https?://[^\"]*:(\d+)")
        while time.monotonic() < deadline:
            m = pattern.search(self.log_text())
            if m:
                return int(m[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"the edge server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"the edge server did not start in {timeout_s:g} s:\n{self.log_text()[-3000:]}")

    def wait_ready(self, timeout_s: float = 120.0, workers: int | None = None) -> None:
        """Until /v2/health/ready answers 200 (and ``workers`` worker processes run, when given)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the edge server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                ok = httpx.get(self.url + "/v2/health/ready", timeout=2, verify=self.verify).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and (workers is None or len(self.worker_pids()) >= workers):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the edge server was not ready in {timeout_s:g} s:\n{self.log_text()[-3000:]}")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an HTTPS client of this server trusts: its own certificate (the tests' self-signed one)."""
        if self.config.tls_cert is None:
            return True
        return ssl.create_default_context(cafile=str(self.config.tls_cert))

    def worker_pids(self) -> list[int]:
        """The worker processes (granian's children of the server process)."""
        return child_pids(self.proc.pid)

    def close(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        code = stop_server_process(self.proc, timeout_s)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return code


__all__ = ["CONFIG_FILE", "RUN_ENV", "RunningServer", "http_settings", "main", "preflight", "serve"]
