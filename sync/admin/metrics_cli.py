"""``edgerec admin ab-report``, ``alerts`` and ``experiment create|list|stop``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgerec.sdk.cli.output import console, print_json, text_row
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.gates import check_gates

from .client import AdminClient
from .ops_cli import register_ops
from .plots import legend, pyplot, save_png, set_title, show


def _pct(e: dict[str, Any] | None, digits: int = 2) -> str:
    if e is None:
        return ""
    v, lo, hi = (e.get(k) for k in ("value", "low", "high"))
    if not (isinstance(v, int | float) and isinstance(lo, int | float) and isinstance(hi, int | float)) or not all(
            math.isfinite(x) for x in (v, lo, hi)):
        return "n/a"
    return f"{v * 100:.{digits}f}% [{lo * 100:.{digits}f}, {hi * 100:.{digits}f}]"


def render_report(doc: dict[str, Any]) -> None:
    alpha = doc["alpha"]
    t = Table("variant", "versions", "impressions", "clicks", f"CTR [{(1 - alpha) * 100:g}% CI]",
              "lift vs control", "p-value", "verdict",
              title=f"experiment {doc['experiment']} (control {doc['control']}): {doc['windows_released']} window(s) "
                    f"released, {doc['windows_withheld']} withheld (< {doc['k']} nodes); "
                    f"epsilon spent per user <= {doc['epsilon_per_user']:g}")
    for r in doc["variants"]:
        p = r["p_value"]
        t.add_row(*text_row(r["variant"], ",".join(map(str, r["versions"])), f"{r['impressions']:,}",
                            f"{r['clicks']:,}", _pct(r["ctr"]), _pct(r["lift"], 1),
                            "" if p is None else ("n/a" if not math.isfinite(p) else f"{p:.3g}"),
                            r["verdict"] or "(control)"))
    console.print(t)


def plot_report(doc: dict[str, Any], path: Path) -> None:
    """CTR per variant over time with its intervals, as a PNG (matplotlib, the [plot] extra)."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    entries: list[tuple[Any, str]] = []
    for variant in [r["variant"] for r in doc["variants"]]:
        pts = [s for s in doc["series"] if s["variant"] == variant and s["ctr"] is not None]
        if not pts:
            continue
        x = [(s["window_start"] - pts[0]["window_start"]) / 3600 for s in pts]
        y = [s["ctr"] * 100 for s in pts]
        (line,) = ax.plot(x, y, marker="o")
        entries.append((line, variant))
        ax.fill_between(x, [s["low"] * 100 for s in pts], [s["high"] * 100 for s in pts], alpha=0.2)
    ax.set_xlabel("hours since the first released window")
    ax.set_ylabel(f"CTR % ({(1 - doc['alpha']) * 100:g}% interval, noise included)")
    # the experiment's and the variants' names are admin-supplied: plain text ("$", a leading "_")
    set_title(ax, f"experiment {doc['experiment']}")
    legend(ax, entries)
    save_png(fig, path)


def parse_variants(text: str) -> list[dict[str, Any]]:
    """``[NAME=]VERSION[:WEIGHT],...``: the first is the control; ConfigError naming --variants otherwise."""
    out: list[dict[str, Any]] = []
    for item in (t.strip() for t in text.split(",")):
        name, _, rest = item.rpartition("=")
        version, _, weight = rest.partition(":")
        try:
            v: dict[str, Any] = {"version": int(version), "weight": float(weight) if weight else 1.0}
        except ValueError:
            raise ConfigError(f"--variants: {item!r} is not [NAME=]VERSION[:WEIGHT], e.g. control=1:50") from None
        if v["version"] < 0 or not 0 < v["weight"] < math.inf:
            raise ConfigError(f"--variants: {item!r}: the version is >= 0 and the weight > 0")
        v["name"] = name or f"v{v['version']}"
        out.append(v)
    if len(out) < 2:
        raise ConfigError("--variants: an experiment needs at least two variants")
    return out


def _gated_line(g: dict[str, Any]) -> str:
    return (f"{g['model']} v{g['version']} against v{g['base_version']}: phase {g['phase'] + 1} of "
            f"{len(g['phases'])} ({g['percent']:g}%), {g['state']}; gates {', '.join(g['gates'])}; "
            f"alpha {g['alpha']:g} (false halt and false advance each <= {g['alpha']:g}), rho {g['rho']:.3g}")


def gated_rollout(ctx: click.Context, client: Any, model: str, version: int, channel: str, phases: str | None,
                  gates: tuple[str, ...], tags: list[str], as_json: bool) -> None:
    """``edgerec admin rollout ... --phases P1,P2,... --gate G``: start a rollout gated on outcomes."""
    if not phases or not gates:
        raise ConfigError("--phases: a gated rollout needs --phases and at least one --gate")
    try:
        steps = [float(p) for p in phases.split(",")]
    except ValueError:
        raise ConfigError(f"--phases: {phases!r} is not a list of percentages such as 5,25,100") from None
    check_gates(gates)
    c: AdminClient
    with client(ctx) as c:
        doc = c.gated_rollout(model, version, channel, steps, list(gates), tags)
    if as_json:
        print_json(doc)
    else:
        console.print("gated rollout: " + _gated_line(doc), markup=False)


def register(admin: click.Group, client: Any) -> None:
    """Add the metrics commands to the ``edgerec admin`` group (``client(ctx)`` opens an AdminClient)."""

    @admin.command("ab-report")
    @click.argument("name")
    @click.option("--variants", default=None, help="Variants in order, the control first (default: as seen).")
    @click.option("--control", default=None, help="The control variant (default: the first).")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--plot", "plot", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
                  help="Write CTR per variant over time with intervals to this PNG.")
    @click.pass_context
    def ab_report(ctx: click.Context, name: str, variants: str | None, control: str | None, as_json: bool,
                  plot: Path | None) -> None:
        """Per variant impressions, clicks, CTR with interval, lift, p-value and verdict (noise included)."""
        from .cli import checked

        order = [checked(v.strip(), "variants") for v in (variants or "").split(",") if v.strip()]
        c: AdminClient
        with client(ctx) as c:
            doc = c.ab_report(checked(name, "experiment"), order or None,
                              checked(control, "control") if control else None)
        show(doc, as_json, render_report, plot, plot_report)

    @admin.command("alerts")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def alerts(ctx: click.Context, as_json: bool) -> None:
        """Open alerts per node and for the fleet, with since when."""
        from .cli import ago

        c: AdminClient
        with client(ctx) as c:
            doc = c.alerts()
        if as_json:
            print_json(doc)
            return
        rows = doc["alerts"]
        t = Table("alert", "scope", "subject", "since", "detail", title=f"{len(rows)} open alert(s)")
        for a in rows:
            t.add_row(*text_row(a["kind"], a["scope"], a["subject"], ago(a["since"]), a["detail"]))
        console.print(t)

    @admin.command("gates")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def gates(ctx: click.Context, as_json: bool) -> None:
        """Rollouts gated on outcomes: phase, state, why, and the test's alpha and rho."""
        c: AdminClient
        with client(ctx) as c:
            rows = c.gated_rollouts()
        if as_json:
            print_json(rows)
            return
        for g in rows:
            console.print(_gated_line(g), markup=False)
            for r in g["reasons"]:
                console.print("  " + r, markup=False)

    _register_experiments(admin, client)
    register_ops(admin, client)


def _register_experiments(admin: click.Group, client: Any) -> None:
    @admin.group("experiment")
    def experiment() -> None:
        """A/B experiments managed centrally (variants are versions of one model; the first is the control)."""

    @experiment.command("create")
    @click.argument("name")
    @click.option("--model", required=True)
    @click.option("--variants", required=True, help="[NAME=]VERSION[:WEIGHT],... e.g. control=1:50,new=2:50")
    @click.option("--tags", default=None, help="Only nodes with all these tags (comma-separated).")
    @click.option("--salt", default=None, help="Assignment salt (default: random).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def experiment_create(ctx: click.Context, name: str, model: str, variants: str, tags: str | None,
                          salt: str | None, as_json: bool) -> None:
        """Create experiment NAME."""
        from .cli import checked, parse_tags

        vs = parse_variants(variants)
        for v in vs:
            checked(v["name"], "--variants name")
        c: AdminClient
        with client(ctx) as c:
            doc = c.create_experiment(checked(name, "experiment"), checked(model, "--model"), vs, parse_tags(tags),
                                      salt)
        if as_json:
            print_json(doc)
        else:
            split = ", ".join(f"{v['name']}=v{v['version']}:{v['weight']:g}" for v in doc["variants"])
            console.print(f"experiment {doc['name']} on {doc['model']}: {split} (control {doc['control']}), "
                          f"{doc['state']}", markup=False)

    @experiment.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def experiment_list(ctx: click.Context, as_json: bool) -> None:
        """Every experiment and its state."""
        c: AdminClient
        with client(ctx) as c:
            rows = c.experiments()
        if as_json:
            print_json(rows)
            return
        t = Table("experiment", "model", "variants (name=version:weight)", "control", "tags", "state")
        for r in rows:
            t.add_row(*text_row(r["name"], r["model"], ", ".join(f"{v['name']}={v['version']}:{v['weight']:g}"
                                                                for v in r["variants"]),
                                r["control"], ",".join(r["tags"]), r["state"]))
        console.print(t)

    @experiment.command("stop")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def experiment_stop(ctx: click.Context, name: str, as_json: bool) -> None:
        """Stop experiment NAME (its report stays)."""
        from .cli import checked

        c: AdminClient
        with client(ctx) as c:
            doc = c.stop_experiment(checked(name, "experiment"))
        if as_json:
            print_json(doc)
        else:
            console.print(f"experiment {doc['name']}: {doc['state']}", markup=False)


__all__ = ["parse_variants", "plot_report", "register", "render_report"]
