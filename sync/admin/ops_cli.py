"""``edgerec admin metrics``: the fleet's and each node's operational figures over the last windows."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgerec.sdk.cli.output import console, plain, text_row
from edgerec.sdk.cli.paths import AbsolutePath

from .client import AdminClient
from .plots import legend, pyplot, save_png, show

# The bounds the service enforces too (sync/service/ops_figures.py), checked here first for a clear flag error.
MAX_WINDOWS = 288
MAX_NODES = 1000
_PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def _ms(row: dict[str, Any], name: str, overflow: float) -> str:
    value = row[name]
    if value is None:
        return f">{overflow:g}" if row["requests"] else "-"
    return f"{value:g}"


def _rate(row: dict[str, Any]) -> str:
    rate = row["error_rate"]
    return "-" if rate is None else f"{rate * 100:.2f}%"


def render_ops(doc: dict[str, Any]) -> None:
    """Fleet and per-node figures as one table (node names are node-supplied: escaped)."""
    starts, over = doc["windows"], doc["latency_overflow_ms"]
    span = "no windows stored" if not starts else (
        f"{len(starts)} window(s) from {datetime.fromtimestamp(starts[0], UTC):%Y-%m-%d %H:%M} "
        f"to {datetime.fromtimestamp(starts[-1], UTC):%Y-%m-%d %H:%M} UTC")
    shown = len(doc["nodes"])
    title = f"operational figures, {span}" + (f" (model {doc['model']})" if doc["model"] else "") + (
        f"; {shown} of {doc['nodes_total']} nodes, worst p99 first" if shown < doc["nodes_total"] else "")
    t = Table("node", "name", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms",
              title=plain(title))
    for row, node, name in ((doc["fleet"], "[bold]fleet[/]", ""),
                            *((r, plain(r["node"]), plain(r["name"] or "")) for r in doc["nodes"])):
        t.add_row(node, name, *text_row(f"{row['requests']:,}", f"{row['errors']:,}", _rate(row),
                                        *(_ms(row, p, over) for p in _PERCENTILES)))
    console.print(t)


def plot_ops(doc: dict[str, Any], path: Path) -> None:
    """Latency percentiles (p50, p95, p99) per node over time, the fleet's in black, as a PNG."""
    plt = pyplot()
    over = doc["latency_overflow_ms"]
    fig, axes = plt.subplots(1, len(_PERCENTILES), figsize=(13, 4.5), sharey=True, squeeze=False)
    t0 = doc["windows"][0] if doc["windows"] else 0
    lines: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        (r["node"] if r["name"] in (None, r["node"]) else f"{r['name']} ({r['node']})", r, {}) for r in doc["nodes"]]
    lines.append(("fleet", doc["fleet"], {"color": "black", "linewidth": 2.5}))
    entries: list[tuple[Any, str]] = []
    for ax, p in zip(axes[0], _PERCENTILES, strict=True):
        entries = []
        for label, row, style in lines:
            pts = row["series"]
            x = [(s["window_start"] - t0) / 60 for s in pts]
            # past the last bucket: drawn on its edge; no requests: a gap
            y = [s[p] if s[p] is not None else (over if s["requests"] else math.nan) for s in pts]
            (line,) = ax.plot(x, y, marker=".", **style)
            entries.append((line, label))
        ax.set_yscale("log")
        ax.set_title(f"{p.removesuffix('_ms')} latency")
        ax.set_xlabel("minutes since the first window")
    axes[0][0].set_ylabel("ms (upper edge of the histogram bucket)")
    if len(lines) <= 12:  # node names are node-supplied: plain text ("$", a leading "_")
        legend(axes[0][-1], entries, fontsize="small")
    save_png(fig, path)


def register_ops(admin: click.Group, client: Any) -> None:
    """Add ``edgerec admin metrics`` (``client(ctx)`` opens an AdminClient)."""

    @admin.command("metrics")
    @click.option("--windows", type=click.IntRange(1, MAX_WINDOWS), default=12, show_default=True,
                  help="How many of the latest operational windows.")
    @click.option("--model", default=None, help="Only this model's figures.")
    @click.option("--node", "node_id", default=None, help="Only this node.")
    @click.option("--max-nodes", type=click.IntRange(1, MAX_NODES), default=100, show_default=True,
                  help="Show at most this many nodes (worst p99 first); the fleet's figures count every node.")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--plot", "plot", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
                  help="Write latency percentiles per node over time to this PNG.")
    @click.pass_context
    def metrics(ctx: click.Context, windows: int, model: str | None, node_id: str | None, max_nodes: int,
                as_json: bool, plot: Path | None) -> None:
        """Requests, error rate and latency p50/p95/p99 of the fleet and of each node."""
        from .cli import checked

        c: AdminClient
        with client(ctx) as c:
            doc = c.ops_metrics(windows, checked(model, "--model") if model else None,
                                checked(node_id, "--node") if node_id else None, max_nodes)
        show(doc, as_json, render_ops, plot, plot_ops)


__all__ = ["plot_ops", "register_ops", "render_ops"]
