"""A stateless sync replica as a real process: ``edgerec sync serve --key-file K --work-dir W``, with the
database URL in its environment only (tests of replicas behind nginx, backups and restores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from .net import wait_http_ok

EDGEREC = str(Path(sys.executable).parent / "edgerec")


class Replica:
    """``edgerec sync serve --key-file K --work-dir W`` with the database URL in its environment only."""

    def __init__(self, db_url: str, key: Path, work: Path, port: int, log: Path, cpus: set[int] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``cpus``: the CPUs it and its workers and threads may run on (bench/sync.py --scale pins them);
        ``env``: variables over the tests' defaults (4 threads, maintenance every second)."""
        self.db_url, self.key, self.work, self.port, self.log = db_url, key, work, port, log
        self.cpus, self.env = cpus, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = {**os.environ, "EDGEREC_DB_URL": self.db_url, "EDGEREC_SYNC_THREADS": "4",
               "EDGEREC_SYNC_MAINTENANCE_INTERVAL_S": "1", **self.env}
        # taskset execs the command: same pid, and the workers and threads it starts inherit the mask
        pin = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*pin, EDGEREC, "sync", "serve", "--key-file", str(self.key), "--work-dir", str(self.work),
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_http_ok(self.url + "/api/v1/health", self.proc, self.log, timeout=60, interval=0.1)
        return self

    def checkins(self) -> float:
        """Check-ins this process answered (its own counter: it starts again at 0 after a restart)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == "edgerec_sync_requests_total" and s.labels.get("endpoint") == "node.checkin")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its worker at once, no cleanup
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
