"""A throwaway local PostgreSQL cluster for tests and benchmarks.

``initdb`` refuses to run as root, so as root the cluster is made and run as
the ``postgres`` system user (``runuser``). It listens on 127.0.0.1 only, on a
free port, with its socket in its own folder, and is stopped by :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .net import free_port

_PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    for d in _PG_BIN_DIRS:
        if (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


class LocalPostgres:
    """A PostgreSQL cluster in a temporary folder; ``url`` once :meth:`start` returned."""

    def __init__(self, fast: bool = True) -> None:
        self.bin = find_pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries (pg_ctl, initdb) not found")
        self.fast = fast
        self.dir = Path(tempfile.mkdtemp(prefix="edgerec-pg-"))
        self.port = free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql+psycopg://edgerec@127.0.0.1:{self.port}/edgerec"

    def _run(self, *args: str) -> None:
        assert self.bin is not None
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> LocalPostgres:
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", "edgerec", "-A", "trust", "-E", "UTF8", "--no-sync")
        self._start_server()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "edgerec", "edgerec")
        return self

    def _start_server(self) -> None:
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.dir}", "-c max_connections=200"]
        if self.fast:
            # A test cluster: losing the last transactions in a crash does not matter.
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", " ".join(opts), "-w",
                  "start")

    def restart(self) -> None:
        """Stop the server (closing every client connection) and start it again on the same port and data."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        self._start_server()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new empty database on this cluster; returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "edgerec", name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
