"""``edgerec node run --serve``: the edge server as the daemon's child, on the node's model directory.

The child is ``edgerec serve`` with the flags :func:`edge_flags` builds, the
same ones ``edgerec node edge-config`` prints, so the two cannot disagree.
It is restarted when it dies (backoff 1 s doubling to 30 s, back to 1 s after
a minute of running), restarted when the trusted publisher keys change, and
stopped with the daemon; on Linux it also gets SIGTERM if the daemon is
killed (``EDGEREC_EXIT_WITH_PARENT``: the server sets ``PR_SET_PDEATHSIG``
itself, as a ``preexec_fn`` is unsafe in a process with threads), so no
orphan keeps the port.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgerec.sdk.files import make_dirs
from edgerec.sdk.user_keys import ensure_user_key
from edgerec.sync.protocol.errors import ConfigError

from .state import NodeState

log = logging.getLogger("edgerec.sync.node.supervise")
PARENT_ENV = "EDGEREC_EXIT_WITH_PARENT"  # read by the edge server (edgerec.edge_server.server)


def edge_flags(state: NodeState, model_dir: Path | None = None, metrics: bool = True) -> dict[str, Any]:
    """What ``edgerec serve`` needs to open what this node installs (keys stay where they are), and where it
    spools accepted events for the daemon's fleet metrics (with the key of the users' fingerprints)."""
    ident = state.identity()
    keys = [str(p.resolve()) for p in state.publisher_key_files()]
    if not keys:
        raise ConfigError(f"{state.dir}: no publisher keys exported (enroll the node first)")
    if model_dir is None:
        recorded = state.db.setting("model_dir")
        if recorded is None:
            raise ConfigError(f"{state.dir}: no model directory recorded yet; give --model-dir")
        model_dir = Path(recorded)
    out = {"model_dir": str(Path(model_dir).resolve()), "trusted_keys": keys,
           "recipient_key": str((state.keys / "recipient.key").resolve()), "recipient_id": ident.node_id}
    if metrics:
        ensure_user_key(state.user_key_file)
        make_dirs(state.spool_dir)
        out |= {"events_spool": str(state.spool_dir.resolve()), "user_key_file": str(state.user_key_file.resolve())}
    return out


def edge_argv(flags: dict[str, Any]) -> list[str]:
    """``edgerec serve`` options for :func:`edge_flags`."""
    out = ["--model-dir", flags["model_dir"]]
    for k in flags["trusted_keys"]:
        out += ["--trusted-key", k]
    out += ["--recipient-key", flags["recipient_key"], "--recipient-id", flags["recipient_id"]]
    if "events_spool" in flags:
        out += ["--events-spool", flags["events_spool"], "--user-key-file", flags["user_key_file"]]
    return out


class EdgeChild:
    """A supervised ``edgerec serve`` process."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "edgerec.sdk.cli", "serve", *argv]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="edge-server-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            env = {**(self.env if self.env is not None else os.environ), PARENT_ENV: str(os.getpid())}
            self.proc = subprocess.Popen(self.argv, env=env)
            self.starts += 1
        log.info("edge server started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            log.warning("edge server exited with %s; restarting in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self._spawn()

    def restart(self) -> None:
        """Stop the child; the supervisor starts a new one (new trusted keys, say)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            log.info("restarting the edge server")
            proc.terminate()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)


def make_token_env() -> dict[str, str]:
    """The daemon's environment for the child, minus variables meant for the daemon alone."""
    return {k: v for k, v in os.environ.items() if k not in ("EDGEREC_CONTROL_TOKEN",)}


__all__ = ["EdgeChild", "edge_argv", "edge_flags", "make_token_env"]
