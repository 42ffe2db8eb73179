"""``edgerec node``: enroll this machine, then run the daemon that installs what it is sent."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgerec.sdk.cli.output import console, print_json, text_row
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.model import ACCELERATOR_CHOICES, parse_accelerator
from edgerec.sync.protocol.errors import ConfigError


@click.group()
def node() -> None:
    """Edge node daemon: enroll once, then poll, verify, install and report."""


@node.command()
@click.option("--server", required=True, help="Sync service URL.")
@click.option("--token", required=True, help="One-time enrollment token from 'edgerec admin enroll-token create'.")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--name", default=None, help="A name for this node (default: its id).")
@click.option("--ca-cert", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="CA bundle when the service uses a private TLS CA.")
@click.option("--json", "as_json", is_flag=True)
def enroll(server: str, token: str, state_dir: Path, name: str | None, ca_cert: str | None, as_json: bool) -> None:
    """Make this node's keys (private files 0600, never sent) and enroll it."""
    from .enroll import enroll_node

    ident = enroll_node(state_dir, server, token, name, str(Path(ca_cert).resolve()) if ca_cert else None)
    if as_json:
        print_json({"node_id": ident.node_id, "server": ident.server, "tags": ident.tags})
    else:
        console.print(f"enrolled as {ident.node_id} with {ident.server}; root metadata pinned in {state_dir}",
                      markup=False)


@node.command()
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--model-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--edge-server", default=None, help="Edge server URL; without it models are only installed.")
@click.option("--control-token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File holding the edge server's control token.")
@click.option("--interval", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds between polls.")
@click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto", show_default=True)
@click.option("--once", is_flag=True, help="Run one cycle and exit (1 if anything failed).")
def run(state_dir: Path, model_dir: Path, edge_server: str | None, control_token_file: Path | None,
        interval: float, accelerator: str, once: bool) -> None:
    """Poll assignments, fetch through TUF, verify, install atomically and report."""
    from .daemon import DaemonConfig, NodeDaemon
    from .edge_control import EdgeControl
    from .state import NodeState

    logging.getLogger("edgerec").setLevel(logging.INFO)
    edge = None
    if edge_server:
        if control_token_file is None:
            raise ConfigError("--edge-server needs --control-token-file")
        edge = EdgeControl(edge_server, control_token_file.read_text().strip())
    config = DaemonConfig(interval, parse_accelerator(accelerator, "--accelerator"))
    daemon = NodeDaemon(NodeState(state_dir), model_dir, edge, config)
    try:
        if once:
            result = daemon.run_once()
            for m, v in result.installed:
                console.print(f"installed {m} v{v}", markup=False)
            for m, why in result.failures.items():
                console.print(f"[red]failed[/] {escape(m)}: {escape(why)}", highlight=False)
            if not result.reachable:
                raise ConfigError(f"cannot reach the sync service at {daemon.ident.server}")
            if result.failures:
                raise SystemExit(1)
        else:
            daemon.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        daemon.close()


@node.command("status")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def status_cmd(state_dir: Path, as_json: bool) -> None:
    """What this node has installed and its last failures (local view)."""
    from .state import NodeState

    st = NodeState(state_dir)
    ident, status = st.identity(), st.load_status()
    doc = {"node_id": ident.node_id, "server": ident.server, **status.to_dict()}
    doc.pop("pending_reports")
    if as_json:
        print_json(doc)
        return
    t = Table("model", "desired", "installed", "last failure", title=escape(f"node {ident.node_id}"))
    for m in sorted(set(status.accepted) | set(status.installed) | set(status.failures)):
        a, i, f = status.accepted.get(m), status.installed.get(m), status.failures.get(m)
        t.add_row(*text_row(m, a.version if a else "-", i.version if i else "-", f.reason[:100] if f else ""))
    console.print(t)


@node.command("edge-config")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def edge_config(state_dir: Path, as_json: bool) -> None:
    """The edge server flags that let it open what this node installs (keys stay in place)."""
    from .state import NodeState

    st = NodeState(state_dir)
    ident = st.identity()
    keys = sorted(str(p.resolve()) for p in st.trust_dir.glob("*.pub"))
    if not keys:
        raise ConfigError(f"{state_dir}: no publisher keys exported yet; run 'edgerec node run --once' first")
    doc = {"trusted_keys": keys, "recipient_key": str((st.keys / "recipient.key").resolve()),
           "recipient_id": ident.node_id}
    if as_json:
        print_json(doc)
        return
    flags = [*(f"--trusted-key {k}" for k in keys), f"--recipient-key {doc['recipient_key']}",
             f"--recipient-id {ident.node_id}"]
    click.echo(" ".join(flags))


# Data subject erasure (issue 10) lives in its own module.
from .forget_cli import forget_user as _forget_user  # noqa: E402

node.add_command(_forget_user)
