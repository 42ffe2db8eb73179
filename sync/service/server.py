"""Run the sync service on granian (its TLS included), with the maintenance loop in each worker.

:func:`serve` is ``edgerec sync serve``: it opens the data directory once
(migrations, keys: a one-line error if something is wrong), writes what the
workers need to a private run file (mode 0600: it holds the database URL),
and runs granian, whose worker processes each open the service
(:func:`worker_app`), keep its TUF metadata fresh (:class:`Maintenance`) and
share the port. A request's body is read first, up to its route's limit
(:func:`body_limit`) and within ``body_timeout_s``, without a thread; then
at most ``config.threads`` requests run at once, as many as the database
pool holds (:class:`~edgerec.sdk.wsgi_front.WSGIFront`). An upload is read
only after the admin token is checked (the admin blueprint's
``before_request``): nothing of an unauthenticated upload is read or stored.

:class:`RunningServer` runs the same in a child process, for tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

from edgerec.sdk.files import write_atomic
from edgerec.sdk.heap import freeze_long_lived
from edgerec.sdk.http_server import (
    HttpSettings,
    Shedding,
    build_granian,
    child_pids,
    drop_secret_env,
    exit_with_server,
    granian_log_config,
    held,
    listen_address,
    metrics_after_fork,
    reserve_port,
    stop_server_process,
)
from edgerec.sdk.json_logs import LogSettings
from edgerec.sdk.tracing import configure_otlp
from edgerec.sdk.wsgi_front import FrontSettings, WSGIFront

from .config import ServiceConfig
from .core import SyncService
from .s3_blobs import S3BlobStore

log = logging.getLogger("edgerec.sync")
RUN_ENV = "EDGEREC_SYNC_RUN_FILE"
TARGET = "edgerec.sync.service.server:worker_app"
READY_LINE = "edgerec sync serving on"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
TEXT_LOGS = LogSettings(format="text")  # what `edgerec sync serve` writes unless told otherwise


class Maintenance(threading.Thread):
    """Refreshes expiring TUF metadata and prunes nonces every ``interval`` seconds."""

    def __init__(self, service: SyncService, interval: float) -> None:
        super().__init__(name="edgerec-maintenance", daemon=True)
        self.service = service
        self.interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.service.maintain()
            except Exception:  # keep serving; the next round tries again
                log.exception("maintenance failed")
            if self._halt.wait(self.interval):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


UPLOAD_PATH = "/api/v1/admin/packages"
REPORT_PATHS = ("/api/v1/node/checkin", "/api/v1/node/reports")


def body_limit(config: ServiceConfig) -> Any:
    """The body a route reads, in bytes, before the app runs (:class:`WSGIFront`): 0 for the upload (read by
    the app, after the token)."""

    def limit(path: str) -> int:
        if path == UPLOAD_PATH:
            return 0
        return config.max_report_bytes if path in REPORT_PATHS else config.max_json_bytes

    return limit


def http_settings(config: ServiceConfig, host: str, port: int, tls: tuple[Path, Path] | None = None,
                  workers: int = 1, client_ca: Path | None = None, **limits: Any) -> HttpSettings:
    """The HTTP tier's settings; ``client_ca`` turns on mutual TLS; ``limits`` as :class:`HttpSettings` fields."""
    cert, key = tls if tls else (None, None)
    return HttpSettings(host=host, port=port, workers=workers, tls_cert=cert, tls_key=key, tls_client_ca=client_ca,
                        **limits)


def serve(data_dir: Path | None, db_url: str | None, config: ServiceConfig, settings: HttpSettings,
          maintenance: bool = True, key_file: Path | None = None, work_dir: Path | None = None,
          logs: LogSettings = TEXT_LOGS) -> None:
    """Serve until SIGTERM or SIGINT; prints one line with the URL once the port is taken.

    Without ``data_dir`` it is a stateless replica: ``db_url`` and its own ``key_file``;
    ``work_dir`` (default: a temporary folder) only spools uploads. ``logs``: how the
    server and its workers write their lines.
    """
    from edgerec.sdk.cli.output import console

    run_dir = Path(tempfile.mkdtemp(prefix="edgerec-sync-"))
    if data_dir is None and work_dir is None:
        work_dir = run_dir / "work"
    try:
        # Migrates, opens the keys: fails here, once, if anything is wrong.
        service = SyncService.open_any(data_dir, db_url, config, key_file, work_dir)
        try:
            if isinstance(service.blobs, S3BlobStore):
                service.blobs.objects.check_bucket()  # once, here: a worker starts even while the store is down
            url = service.db.url.render_as_string(hide_password=False)
            dialect = service.db.dialect
        finally:
            service.close()  # the workers open their own, after the fork
        address = listen_address(settings.host)
        port, holder = reserve_port(address, settings.port)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        with held(holder, settings.workers):
            spec = {"data_dir": str(data_dir) if data_dir else None, "db_url": url,
                    "config": dataclasses.asdict(config), "maintenance": maintenance,
                    "key_file": str(key_file) if key_file else None, "work_dir": str(work_dir) if work_dir else None,
                    "logs": dataclasses.asdict(logs), "body_timeout_s": settings.body_timeout_s}
            run_file = write_atomic(run_dir / "run.json", json.dumps(spec).encode(), mode=0o600)
            os.environ[RUN_ENV] = str(run_file)
            if settings.workers > 1:
                (run_dir / "prometheus").mkdir()
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "prometheus")
            drop_secret_env()
            server = build_granian(TARGET, settings.replace(port=port), granian_log_config(logs.format))
            logs.apply()  # granian's logging setup closed the handlers
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            # One line a supervisor (or a test) can wait for.
            packages = f", packages in {config.blob_url}" if config.blob_url else ""  # no secret: bucket and prefix
            console.print(f"{READY_LINE} {settings.scheme}://{host}:{port} (database {dialect}{packages})",
                          highlight=False, markup=False, soft_wrap=True)  # one line, whatever the width
            server.serve()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def worker_app() -> WSGIFront:
    """One worker's app (granian's factory target): the service, its maintenance loop, the front."""
    exit_with_server()
    metrics_after_fork()
    spec = json.loads(Path(os.environ[RUN_ENV]).read_text())
    logs = LogSettings(**spec["logs"])
    logs.apply()  # after the fork: a batching handler's timer thread does not survive it
    configure_otlp("edgerec-sync")  # when OTEL_EXPORTER_OTLP_ENDPOINT (or sync serve --otlp-endpoint) is set
    config = ServiceConfig(**spec["config"])
    service = SyncService.open_any(_path(spec, "data_dir"), spec["db_url"], config, _path(spec, "key_file"),
                                   _path(spec, "work_dir"))
    maint = Maintenance(service, config.maintenance_interval_s) if spec["maintenance"] else None
    if maint is not None:
        maint.start()

    def close() -> None:
        if maint is not None:
            maint.stop()
        service.close()

    # granian's worker ends through multiprocessing, which runs its finalizers but not atexit's.
    mp_util.Finalize(None, close, exitpriority=10)
    app = service_app(service, logs.access, float(spec.get("body_timeout_s", HttpSettings.body_timeout_s)))
    freeze_long_lived()  # before serving: this collection delays no request
    return app


def service_app(service: SyncService, access_log: bool = True, body_timeout_s: float = 10.0) -> WSGIFront:
    """What a worker serves for ``service``: the Flask app behind the front, ``config.threads`` at once."""
    from .app import create_app

    c = service.config
    metrics = service.metrics
    # Past its slots and a short queue the service refuses at once (503, Retry-After) instead of letting every
    # answer get later: measured on the landed service, 2x the sustainable check-in rate dropped it to 0.65x.
    shedding = Shedding(c.shed_max_waiting, c.shed_max_wait_s, c.shed_retry_after_s)
    front = FrontSettings(slots=c.threads, max_parked=0, body_timeout_s=body_timeout_s, shedding=shedding)
    return WSGIFront(create_app(service, access_log=access_log).wsgi_app, body_limit(c), front,
                     lambda path, reason: metrics.refusal("admission", reason))


def _path(spec: dict[str, Any], name: str) -> Path | None:
    return Path(spec[name]) if spec.get(name) else None


def main() -> None:
    """``python -c 'from edgerec.sync.service.server import main; main()' SPEC.json``: what RunningServer runs."""
    path = Path(sys.argv[1])
    spec = json.loads(path.read_text())
    path.unlink()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # as ``edgerec`` sets it up
    config = ServiceConfig(**spec["config"])
    tls = (Path(spec["tls"][0]), Path(spec["tls"][1])) if spec["tls"] else None
    client_ca = Path(spec["client_ca"]) if spec.get("client_ca") else None
    settings = http_settings(config, spec["host"], spec["port"], tls, spec["workers"], client_ca, **spec["limits"])
    serve(_path(spec, "data_dir"), spec["db_url"], config, settings, spec["maintenance"], _path(spec, "key_file"),
          _path(spec, "work_dir"), LogSettings(**spec["logs"]) if spec.get("logs") else TEXT_LOGS)


class RunningServer:
    """The service of ``service``'s data directory and database, served by a child process.

    The child opens its own :class:`SyncService` on the same data directory
    and database (the service runs as several processes on one database), with
    the same config. ``port`` 0 takes a free one; ``log_path`` receives its
    output; ``limits`` are :class:`HttpSettings` fields; ``python`` replaces
    the command that runs :func:`main` (given the spec file's path). ``start``
    waits until it answers ``/api/v1/health``. ``client_ca`` turns on mutual
    TLS; then ``probe_tls`` is the client context the readiness probe uses.
    """

    def __init__(self, service: SyncService, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[Path, Path] | None = None, maintenance: bool = True, workers: int = 1,
                 log_path: Path | None = None, env: dict[str, str] | None = None, python: list[str] | None = None,
                 client_ca: Path | None = None, probe_tls: ssl.SSLContext | None = None, **limits: Any) -> None:
        self.service = service
        self.host, self.port = host, port
        self.scheme = "https" if tls else "http"
        self._tmp = Path(tempfile.mkdtemp(prefix="edgerec-sync-running-"))
        self._own_log = log_path is None  # removed with the rest at stop()
        self.log_path = log_path or self._tmp / "server.log"
        stateless = service.datadir is None
        self._spec = {"data_dir": None if stateless else str(service.work_dir),
                      "key_file": str(service.key_file) if stateless else None,
                      "work_dir": str(service.work_dir) if stateless else None,
                      "db_url": service.db.url.render_as_string(hide_password=False),
                      "config": dataclasses.asdict(service.config), "host": host, "port": port,
                      "tls": [str(tls[0]), str(tls[1])] if tls else None, "maintenance": maintenance,
                      "workers": workers, "limits": limits, "client_ca": str(client_ca) if client_ca else None}
        self._env = env or {}
        self._python = python or [sys.executable, "-c", "from edgerec.sync.service.server import main; main()"]
        self._tls = tls
        # What readiness probes trust and present: by default the server's own (self-signed) certificate;
        # under mutual TLS the caller's context with a client certificate.
        self._probe_tls = probe_tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 120.0) -> RunningServer:
        self._tmp.mkdir(exist_ok=True)
        spec_path = write_atomic(self._tmp / "spec.json", json.dumps(self._spec).encode(), mode=0o600)
        cmd = [*self._python, str(spec_path)]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self._env}, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(re.escape(READY_LINE) + r" https?://\S+:(\d+) ")
        while time.monotonic() < deadline:
            m = pattern.search(self.log_text())
            if m:
                self.port = int(m[1])
                break
            self._check_alive()
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"the sync service did not start in {timeout_s:g} s:\n{self.log_text()[-3000:]}")
        self.wait_ready(max(1.0, deadline - time.monotonic()))
        return self

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the sync service exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")

    def wait_ready(self, timeout_s: float = 60.0, workers: int | None = None) -> None:
        """Until ``/api/v1/health`` answers (and ``workers`` worker processes run, when given)."""
        import httpx

        verify: Any = True
        if self._probe_tls is not None:
            verify = self._probe_tls
        elif self._tls is not None:
            verify = ssl.create_default_context(cafile=str(self._tls[0]))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                ok = httpx.get(self.url + "/api/v1/health", timeout=2, verify=verify).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok and (workers is None or len(self.worker_pids()) >= workers):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the sync service was not ready in {timeout_s:g} s:\n{self.log_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        """The worker processes (granian's children of the server process)."""
        return child_pids(self.proc.pid) if self.proc is not None else []

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        if self.proc is None:
            return None
        code = stop_server_process(self.proc, timeout_s)
        if self._own_log:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return code


__all__ = ["LOG_FORMAT", "READY_LINE", "TEXT_LOGS", "Maintenance", "RunningServer", "http_settings", "main", "serve",
           "service_app", "worker_app"]
