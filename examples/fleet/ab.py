"""The fleet demo's A/B part: two nodes in one experiment, simulated users clicking at planted rates.

Both nodes run ``edgerec node run --serve`` (the edge server as the daemon's
child, spooling accepted events). ``edgerec admin experiment create`` splits
users between v1 (control) and v2 (treatment); the experiment reaches the
nodes inside their signed assignments. Simulated users rank and click over
HTTP (:func:`edgerec.sync.node.simulator.drive_edge`); when the one-minute
window closes each node releases its noisy, bounded counts, the service sums
them, and ``edgerec admin ab-report`` gives the verdict and the plot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.markup import escape

from edgerec.sdk.cli.output import busy
from edgerec.sdk.keys import read_secret_text
from edgerec.sync.node.simulator import Arm, drive_edge

from .fleet import Fleet, FleetError, Say, free_port

ARMS = (Arm("control", 1, 0.10), Arm("treatment", 2, 0.15))
USERS = 1500  # per node
WINDOW_S = 60  # the shortest window a node allows: the demo waits for one to close
EPSILON = 4.0  # per window; a demo's few thousand users need a looser budget than the default 0.5


def start_ab_nodes(fleet: Fleet, work: Path, sync_url: str) -> list[tuple[str, str, Path]]:
    """Enroll the two A/B nodes and start their daemons (each with its edge server): (name, edge URL, state)."""
    edges = []
    for i in (1, 2):
        name = f"ab-{i}"
        token = fleet.run_json(f"enroll token {name}", "admin", "enroll-token", "create", "--tags", "ab",
                               "--out", work / f"{name}.token")
        state = work / name
        fleet.run_json(f"node enroll {name}", "node", "enroll", "--server", sync_url, "--token-file",
                       token["token_file"], "--state-dir", state, "--name", name)
        port = free_port()
        edge = f"http://127.0.0.1:{port}"
        fleet.start(name, "node", "run", "--state-dir", state, "--model-dir", work / f"{name}-models", "--serve",
                    "--serve-port", str(port), "--interval", "1", "--health-window", "1",
                    "--metrics-window", str(WINDOW_S), "--ops-window", str(WINDOW_S), "--metrics-grace", "3",
                    "--epsilon", str(EPSILON), "--daily-budget", str(EPSILON * 24),
                    ready=f"{edge}/v2/health/live")
        edges.append((name, edge, state))
    return edges


def run_ab(fleet: Fleet, work: Path, say: Say, edges: list[tuple[str, str, Path]]) -> dict[str, Any]:
    """One experiment on the nodes ``start_ab_nodes`` started, simulated users, the private A/B report."""
    fleet.run("experiment create", "admin", "experiment", "create", "ab", "--model", "ctr", "--variants",
              ",".join(f"{a.variant}={a.version}:1" for a in ARMS), "--tags", "ab")
    for name, edge, state in edges:
        _wait_experiment(name, edge, state)
    say("7. A/B: experiment ab (control v1, treatment v2, 50/50) delivered to nodes ab-1 and ab-2 in their signed "
        "assignments; both versions installed, the edge servers split users by a salted hash")

    rng = np.random.default_rng(7)
    sent: dict[str, dict[str, int]] = {a.variant: {"impression": 0, "click": 0} for a in ARMS}
    t0 = time.monotonic()
    for name, edge, _ in edges:
        with httpx.Client(base_url=edge, timeout=10) as client:
            for variant, counts in drive_edge(client, "ab", ARMS, USERS, rng, user_prefix=f"{name}-u").items():
                for kind, n in counts.items():
                    sent[variant][kind] += n
    say(f"8. {2 * USERS} simulated users ranked and clicked (planted CTR {ARMS[0].ctr:.0%} vs {ARMS[1].ctr:.0%}) "
        f"in {time.monotonic() - t0:.0f} s; sent: " + escape(", ".join(
            f"{v} {c['click']}/{c['impression']}" for v, c in sent.items())))

    last_window = int(time.time() // WINDOW_S) * WINDOW_S  # the window of the last event
    t1 = time.monotonic()
    with busy(f"waiting for the window to close ({last_window + WINDOW_S + 3 - time.time():.0f} s) and the "
              "nodes' releases to arrive", fleet.progress):
        report = _wait_report(fleet, last_window, deadline=last_window + 2 * WINDOW_S + 30)
    plot = work / "ab.png"
    table = fleet.run("ab-report plot", "admin", "ab-report", "ab", "--plot", plot)
    say(f"9. the {WINDOW_S} s window closed and the nodes released it ({time.monotonic() - t1:.0f} s later): each "
        f"user's clicks bounded, OpenDP discrete Laplace noise at epsilon {EPSILON:g}; the service summed the "
        "nodes (k = 2). [bold]edgerec admin ab-report ab[/]:")
    say(escape(table.rstrip()))
    say(f"   plot: {escape(str(plot))}")
    return {"sent": sent, "report": report, "plot": str(plot)}


def _wait_report(fleet: Fleet, last_window: int, deadline: float) -> dict[str, Any]:
    """The A/B report once both nodes' releases of the window of the last event are in."""
    while time.time() < deadline:
        time.sleep(2)
        report: dict[str, Any] = fleet.run_json("ab-report", "admin", "ab-report", "ab")
        if any(p["window_start"] >= last_window for p in report["series"]):
            return report
    raise FleetError("ab-report: the nodes' releases did not arrive in time")


def _wait_experiment(name: str, edge: str, state: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        token_file = state / "control.token"
        if token_file.exists():
            try:
                r = httpx.get(f"{edge}/control/v1/experiments", timeout=2,
                              headers={"Authorization": f"Bearer {read_secret_text(token_file, 'control token')}"})
                if r.status_code == 200 and [e["name"] for e in r.json()["experiments"]] == ["ab"]:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise FleetError(f"{name}: the experiment did not reach the edge server in {timeout:g} s")


__all__ = ["run_ab"]
