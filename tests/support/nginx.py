"""Debian's nginx, started for a test on loopback with a configuration from docs/operations.md.

The operator's snippets in the docs are what the tests run: :func:`doc_config`
takes a fenced ``nginx`` block by its first-line name, and the test swaps the
documented ports for its free ones. :class:`Nginx` wraps a snippet in a main
configuration of its own (pid, logs and temporary files in a temporary folder,
in the foreground) and stops it at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .net import wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ENV = "EDGEREC_TEST_NGINX"  # set by .ci/run: the binary, so a missing nginx fails there instead of skipping


def find_nginx() -> str | None:
    """The nginx binary (``$EDGEREC_TEST_NGINX``, else on PATH or in /usr/sbin), or None."""
    return os.environ.get(ENV) or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def doc_config(name: str) -> str:
    """The ```` ```nginx ```` block of docs/operations.md whose first line is ``# name``."""
    m = re.search(r"```nginx\n(# " + re.escape(name) + r"\n.*?)```", DOCS.read_text(), re.S)
    if m is None:
        raise LookupError(f"docs/operations.md has no nginx block named {name}")
    return m[1]


def sync_config(ports: list[int], front: int, cache: Path) -> str:
    """``edgerec-sync.conf`` with one upstream line per replica port (the documented line's settings), listening
    on ``front``, its TUF cache in ``cache``."""
    snippet = doc_config("edgerec-sync.conf")
    documented = re.findall(r"^ *server 127\.0\.0\.1:847[12] .*\n", snippet, re.M)
    snippet = snippet.replace("".join(documented), "".join(
        documented[0].replace("127.0.0.1:8471", f"127.0.0.1:{p}") for p in ports))
    snippet = snippet.replace("listen 127.0.0.1:8470;", f"listen 127.0.0.1:{front};")
    return snippet.replace("/var/cache/nginx/edgerec-tuf", str(cache))


class Nginx:
    """nginx in the foreground with ``snippet`` inside its ``http`` block."""

    def __init__(self, binary: str, snippet: str, ports: list[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="edgerec-nginx-"))
        user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody
        temp = "".join(f"{kind}_temp_path {self.dir / kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\naccess_log off;\n{temp}{snippet}\n}}\n")
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not wait_for(lambda: self.proc.poll() is not None or all(_listening(p) for p in ports), 15):
            self.stop()
            raise RuntimeError(f"nginx did not listen on {ports}: {self.error_log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.error_log()}")

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
