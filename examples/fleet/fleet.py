"""The whole loop on one machine, driven the way an operator drives it: by the CLI.

convert -> admin init -> sync serve -> enroll a node -> edge server -> publish ->
rollout -> node daemon installs (verify, decrypt, hot-swap into the edge server)
-> rank and events over HTTP -> a second version -> report -> an A/B experiment on
two more nodes with private fleet metrics (:mod:`.ab`).

Everything runs as separate ``edgerec`` processes on loopback, so this module
imports nothing from the converter, the edge server or the sync service: it
uses only their command lines and HTTP APIs, like a user would.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from rich.markup import escape

from edgerec.sdk import testing as demo
from edgerec.sdk.cli.output import busy
from edgerec.sdk.errors import EdgeRecError

Say = Callable[[str], None]


class FleetError(EdgeRecError):
    """A step of the fleet demo failed; the message names the step and its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """Runs ``edgerec`` commands and long-lived servers in a work folder."""

    def __init__(self, work: Path, say: Say, progress: bool = False) -> None:
        self.work = work
        self.say = say
        self.progress = progress  # a spinner on stderr naming the step that runs
        self.env = {**os.environ, "EDGEREC_ADMIN_CONFIG": str(work / "admin.json"), "COLUMNS": "160",
                    "PYTHONUNBUFFERED": "1"}
        for var in ("EDGEREC_SERVER", "EDGEREC_ADMIN_TOKEN", "EDGEREC_TRUSTED_KEYS"):
            self.env.pop(var, None)
        # The demo's A/B part has two nodes: the service shows a figure from two on (default: five).
        self.env["EDGEREC_SYNC_METRICS_MIN_NODES"] = "2"
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.exe = [sys.executable, "-m", "edgerec.sdk.cli"]

    def run(self, step: str, *args: str | Path, timeout: float = 600) -> str:
        """One ``edgerec`` command; its stdout, or FleetError with its error line."""
        with busy(f"{step} ...", self.progress):
            proc = subprocess.run([*self.exe, *map(str, args)], check=False, capture_output=True, text=True,
                                  env=self.env, timeout=timeout, cwd=self.work)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
            raise FleetError(f"{step}: {lines[-1]}")
        return proc.stdout

    def run_json(self, step: str, *args: str | Path) -> Any:
        return json.loads(self.run(step, *args, "--json"))

    def start(self, name: str, *args: str | Path, ready: str) -> None:
        """A server in the background; returns once ``ready`` answers 200."""
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen([*self.exe, *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, cwd=self.work)
        self.procs.append((name, proc, log))
        with busy(f"waiting for {name} to answer at {ready}", self.progress):
            self._wait_ready(name, proc, ready)

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], ready: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FleetError(f"{name} exited with {proc.returncode}; see {self.work / (name + '.log')}")
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise FleetError(f"{name} did not become ready at {ready}")

    def close(self) -> None:
        for _, proc, log in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.procs.clear()


def _write_data(work: Path) -> tuple[list[Path], Path]:
    """Two trained versions (v2: the weights after more training, here perturbed) and eval data."""
    w = demo.ctr_weights()
    rng = np.random.default_rng(2)
    w2 = {k: v + rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in w.items()}
    srcs = [demo.keras_ctr_source(w, work / "ctr-v1.keras"), demo.keras_ctr_source(w2, work / "ctr-v2.keras")]
    _save_npz(work / "eval.npz", demo.labelled_rows(4000, seed=11))
    calib = demo.labelled_rows(512, seed=12)
    del calib["label"]
    _save_npz(work / "calibration.npz", calib)
    return srcs, work / "eval.npz"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)


def run_fleet(work: Path, say: Say, progress: bool = False) -> dict[str, Any]:
    """The whole loop; returns what happened, for ``--json``; ``say`` takes rich markup."""
    work.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(work, say, progress)
    try:
        return _loop(fleet, work, say)
    finally:
        fleet.close()


def _loop(fleet: Fleet, work: Path, say: Say) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fleet.run("keys", "keys", "generate", "--out", work, "--name", "publisher")
    srcs, eval_path = _write_data(work)
    t0 = time.monotonic()
    for version, src in enumerate(srcs, 1):
        fleet.run(f"convert v{version}", "convert", src, "--out", work / f"ctr-{version}.edgepkg",
                  "--name", "ctr", "--version", str(version), "--quantize", "dynamic", "--eval", eval_path,
                  "--label", "label", "--calibration", work / "calibration.npz", "--batch-buckets", "16,64",
                  "--sign-key", work / "publisher.key")
    report = json.loads(fleet.run("inspect", "package", "inspect", work / "ctr-1.edgepkg",
                                  "-k", work / "publisher.pub", "--json"))
    kept = [f"{a['format']} {a['precision']}" for a in report["artifacts"] if a["batch"] == "dynamic"]
    drop = max((v.get("auc_drop") or 0.0) for v in report["eval_report"]["variants"])
    say(f"1. converted two Keras versions (StringLookup lifted into a vocabulary) in {time.monotonic() - t0:.0f} s: "
        f"{escape(', '.join(kept))} + batch buckets 16/64, AUC drop <= {drop:.4f} (budget 0.002), signed")
    out["artifacts"] = [{k: a[k] for k in ("path", "format", "precision", "batch", "size")}
                        for a in report["artifacts"]]

    sync_port, edge_port = free_port(), free_port()
    sync_url, edge_url = f"http://127.0.0.1:{sync_port}", f"http://127.0.0.1:{edge_port}"
    init = fleet.run_json("admin init", "admin", "init", "--data-dir", work / "sync", "--keys-dir",
                          work / "root-keys", "--publisher-key", work / "publisher.pub", "--server-url", sync_url)
    fleet.start("sync", "sync", "serve", "--data-dir", work / "sync", "--port", str(sync_port),
                ready=f"{sync_url}/repository/metadata/timestamp.json")
    say(f"2. sync service on {escape(sync_url)}: TUF root {init['threshold']}-of-{len(init['root_keys'])} "
        "(keys kept offline by the admin), timestamp and snapshot signed online")

    # The one-time token goes through a 0600 file, never a command line other users could read.
    token = fleet.run_json("enroll token", "admin", "enroll-token", "create", "--tags", "demo,store-1",
                           "--out", work / "enroll.token")
    node = fleet.run_json("node enroll", "node", "enroll", "--server", sync_url, "--token-file",
                          token["token_file"], "--state-dir", work / "node", "--name", "store-1")
    node_id = node["node_id"]
    control = work / "control.token"
    control.write_text(secrets.token_urlsafe(24))
    control.chmod(0o600)
    (work / "models").mkdir(exist_ok=True)
    fleet.start("edge", "serve", "--model-dir", work / "models", "--port", str(edge_port),
                "--trusted-key", work / "publisher.pub", "--recipient-key", work / "node" / "keys" / "recipient.key",
                "--recipient-id", node_id, "--control-token-file", control, "--max-delay-ms", "1",
                ready=f"{edge_url}/v2/health/live")
    say(f"3. node {escape(node_id)} enrolled (Ed25519 + X25519 keys made on the node); edge server on "
        f"{escape(edge_url)}")
    from .ab import run_ab, start_ab_nodes  # here, not at the top: .ab imports this module

    ab_nodes = start_ab_nodes(fleet, work, sync_url)  # they start (and install what is rolled out) meanwhile

    # A short health window: the demo sends no traffic of its own while the daemon watches a new version.
    node_run: list[str | Path] = ["node", "run", "--state-dir", work / "node", "--model-dir", work / "models",
                "--edge-server", edge_url, "--control-token-file", control, "--health-window", "2", "--once"]
    ranks = {}
    for version in (1, 2):
        fleet.run(f"publish v{version}", "admin", "publish", work / f"ctr-{version}.edgepkg", "--channel", "stable")
        fleet.run(f"rollout v{version}", "admin", "rollout", "ctr", str(version), "--channel", "stable",
                  "--percent", "100")
        t1 = time.monotonic()
        fleet.run(f"node run v{version}", *node_run)
        took = time.monotonic() - t1
        ranks[version] = _rank(edge_url)
        top = ", ".join(f"{r['item']} ({r['score']:.3f})" for r in ranks[version]["items"][:3])
        say(f"{3 + version}. published v{version}, rolled out to 100%; the node fetched it through TUF, "
            f"opened its envelope, {'loaded' if version == 1 else 'hot-swapped'} it in {took:.1f} s; "
            f"/v1/rank answers v{escape(str(ranks[version]['version']))}: top {escape(top)}")
    out["rank"] = {str(k): v for k, v in ranks.items()}

    rid = ranks[2]["response_id"]
    events = [{"type": "impression", "response_id": rid, "item": ranks[2]["items"][0]["item"]},
              {"type": "click", "response_id": rid, "item": ranks[2]["items"][0]["item"]}]
    ev = httpx.post(f"{edge_url}/v1/events", json={"events": events}, timeout=10)
    if ev.status_code >= 400:
        raise FleetError(f"events: HTTP {ev.status_code}: {ev.text[:200]}")
    metrics = httpx.get(f"{edge_url}/metrics", timeout=10).text
    clicks = [line for line in metrics.splitlines() if line.startswith("edgerec_events_total") and "click" in line]
    status = fleet.run_json("admin status", "admin", "status", "ctr")
    row = next(n for n in status["nodes"] if n["node_id"] == node_id)
    say(escape(f"6. events recorded ({clicks[0] if clicks else 'no click counter'}); the service sees node "
               f"{node_id}: desired v{row.get('desired_version')}, installed v{row.get('installed_version')}, "
               f"accelerator {row.get('accelerator')}"))
    out.update({"node_id": node_id, "status": row, "sync_url": sync_url, "edge_url": edge_url})
    out["ab"] = run_ab(fleet, work, say, ab_nodes)
    return out


def _rank(edge_url: str) -> dict[str, Any]:
    body = {"user": {"id": "u7"}, "candidates": list(range(40)), "context": {"ctx": [0.3, 0.1, 0.8, 0.5]},
            "top_k": 5}
    r = httpx.post(f"{edge_url}/v1/rank", json=body, timeout=10)
    if r.status_code != 200:
        raise FleetError(f"rank: HTTP {r.status_code}: {r.text[:200]}")
    doc: dict[str, Any] = r.json()
    return doc
