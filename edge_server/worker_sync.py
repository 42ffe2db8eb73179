"""The worker processes of one ``edgerec serve`` serve the same versions: a shared state file and acknowledgements.

granian's workers share one port, so a control call reaches one of them. That
worker (the coordinator) first applies the operation itself, so a refused
package changes nothing anywhere; then, holding a lock file that orders
coordinators, it appends the operation to ``state.json`` in the run folder
(written atomically) with the next generation number and the list of
versions that results. Every worker watches the file (a ``stat`` every 20
ms), applies the operations it has not applied yet in order, and writes the
generation it reached to ``workers/<pid>.json``, with the error if one
failed. The control call returns once every other live worker has reached
the generation, or says which did not within the timeout. A worker that
starts later (granian replaces one that died) loads the list of versions and
reports the generation it reflects.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.files import write_atomic

log = logging.getLogger("edgerec.edge_server.workers")
STATE_FILE = "state.json"
WORKERS_DIR = "workers"
LOCK_FILE = "control.lock"
KEEP_OPS = 64  # operations kept in the state file for workers that fall behind
POLL_S = 0.02

Op = dict[str, Any]


@dataclass
class Outcome:
    """Which workers reached a generation: every other live worker, or the ones named here did not."""

    generation: int
    workers: int  # worker processes configured
    reached: list[int] = field(default_factory=list)  # pids that applied it (this one included)
    failed: dict[int, str] = field(default_factory=dict)  # pid -> why
    missing: list[int] = field(default_factory=list)  # live pids that had not reached it in time
    not_started: int = 0  # configured workers not running (being replaced)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.missing or self.not_started)

    def describe(self) -> str:
        parts = [f"worker {pid} failed: {why}" for pid, why in sorted(self.failed.items())]
        if self.missing:
            parts.append("worker(s) " + ", ".join(map(str, self.missing)) + " did not apply it in time")
        if self.not_started:
            parts.append(f"{self.not_started} worker(s) not running (being replaced; they load the new state)")
        return f"generation {self.generation}: " + "; ".join(parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerSync:
    """One worker's view of the shared state; ``apply(op)`` carries an operation out locally."""

    def __init__(self, run_dir: Path, workers: int, apply: Callable[[Op], None],
                 snapshot: Callable[[dict[str, Any]], None], lock: threading.Lock) -> None:
        self.run_dir, self.workers = run_dir, workers
        self.apply, self.snapshot, self.lock = apply, snapshot, lock
        self.pid = os.getpid()
        self.generation = 0
        self.failures: dict[int, str] = {}
        (run_dir / WORKERS_DIR).mkdir(exist_ok=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def read_state(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"generation": 0, "versions": None, "ops": []}
        return doc

    # -- every worker ---------------------------------------------------------------------

    def start(self, generation: int) -> None:
        """After the first load (which reflected ``generation``): report it and follow the file."""
        self.generation = generation
        self.report()
        self._thread = threading.Thread(target=self._watch, name="edgerec-worker-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / WORKERS_DIR / f"{self.pid}.json").unlink()

    def _watch(self) -> None:
        seen: tuple[int, int] | None = None
        while not self._stop.wait(POLL_S):
            try:
                st = os.stat(self.state_path)
            except FileNotFoundError:
                continue
            if (st.st_ino, st.st_mtime_ns) == seen:
                continue
            seen = (st.st_ino, st.st_mtime_ns)
            try:
                with self.lock:
                    self.catch_up()
            except Exception:  # keep following; the next change tries again
                log.exception("could not apply the shared model state")

    def catch_up(self) -> None:
        """Apply the operations of the state file this worker has not applied (caller holds ``lock``)."""
        state = self.read_state()
        target = int(state["generation"])
        if target <= self.generation:
            return
        ops = [op for op in state["ops"] if op["generation"] > self.generation]
        if not ops or ops[0]["generation"] != self.generation + 1:
            # Fell further behind than the kept operations reach: take the list of versions (and experiments).
            self.snapshot(state)
            self.generation = target
        for op in ops:
            try:
                self.apply(op)
            except EdgeRecError as exc:
                self.failures[op["generation"]] = str(exc)
                log.error("could not apply generation %d (%s): %s", op["generation"], op["op"], exc)
            self.generation = op["generation"]
        self.report()

    def report(self) -> None:
        recent = dict(sorted(self.failures.items())[-16:])
        doc = {"pid": self.pid, "generation": self.generation, "failed": {str(k): v for k, v in recent.items()}}
        write_atomic(self.run_dir / WORKERS_DIR / f"{self.pid}.json", json.dumps(doc).encode())

    # -- the coordinator ------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One control operation at a time across the workers (a lock file; then the worker's own lock)."""
        with open(self.run_dir / LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def publish(self, op: Op, versions: list[dict[str, Any]], experiments: list[dict[str, Any]] | None = None) -> int:
        """Record ``op`` (already applied here) as the next generation; caller holds :meth:`exclusive`.

        ``experiments``: the experiments that run after it, when ``op`` changed them (else the file keeps
        its list), for workers that start later or fell behind."""
        state = self.read_state()
        generation = int(state["generation"]) + 1
        ops = [*state["ops"], {**op, "generation": generation}][-KEEP_OPS:]
        doc = {"generation": generation, "versions": versions, "ops": ops,
               "experiments": experiments if experiments is not None else state.get("experiments")}
        write_atomic(self.state_path, json.dumps(doc).encode())
        self.generation = generation
        self.report()
        return generation

    def redact(self, generation: int, fields: tuple[str, ...]) -> None:
        """Blank ``fields`` of the operation of ``generation`` in the state file; caller holds :meth:`exclusive`.

        For an operation that names a person (an erasure): once every worker applied it, nothing needs the id
        again (a worker that starts later loads the state, it does not replay operations)."""
        state = self.read_state()
        found = [op for op in state["ops"] if op["generation"] == generation and any(op.get(f) for f in fields)]
        for op in found:
            op.update(dict.fromkeys(fields, ""))
        if found:
            write_atomic(self.state_path, json.dumps(state).encode())

    def wait(self, generation: int, timeout_s: float) -> Outcome:
        """Wait until every other live worker reached ``generation`` (and all configured ones run)."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._outcome(generation)
            if out.complete or time.monotonic() >= deadline:
                return out
            time.sleep(POLL_S)

    def _outcome(self, generation: int) -> Outcome:
        out = Outcome(generation, self.workers, reached=[self.pid])
        live = 1
        for path in (self.run_dir / WORKERS_DIR).glob("*.json"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid:
                continue
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced right now: read it next round
                out.missing.append(pid)
                live += 1
                continue
            live += 1
            why = doc.get("failed", {}).get(str(generation))
            if why is not None:
                out.failed[pid] = why
            elif int(doc.get("generation", 0)) >= generation:
                out.reached.append(pid)
            else:
                out.missing.append(pid)
        out.not_started = max(0, self.workers - live)
        return out


__all__ = ["LOCK_FILE", "STATE_FILE", "WORKERS_DIR", "Outcome", "WorkerSync"]
