"""``edgerec admin``: set up the sync service, publish, roll out, watch the fleet.

Read commands take ``--json``; every error is one line (the root CLI prints
any EdgeRecError as ``error: ...`` and exits 1).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from edgerec.sdk.cli.output import console, err_console, plain, print_json, progress_wanted, text_row
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.cli.secret_input import db_option, read_secret, redact_url, refused_argument
from edgerec.sdk.errors import PackageError
from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import load_verify_key
from edgerec.sdk.manifest import check_name
from edgerec.sync.protocol.errors import ConfigError

from .client import (
    DEFAULT_SERVER,
    TOKEN_ENV,
    AdminClient,
    Credentials,
    default_config_path,
    load_credentials,
    save_credentials,
)
from .metrics_cli import register as register_metrics
from .origin_cli import register as register_origin

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> seconds."""
    m = _DURATION.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"duration {text!r}: expected a number with s, m, h or d (e.g. 24h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_tags(text: str | None) -> list[str]:
    tags = [t.strip() for t in (text or "").split(",") if t.strip()]
    return [checked(t, "tag") for t in tags]


def checked(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except PackageError as exc:
        raise ConfigError(str(exc)) from exc


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit} ago"
    return f"{secs:.0f}s ago"


def _v(value: Any) -> str:
    return "-" if value is None else str(value)


def _failure(f: dict[str, Any] | None) -> str:
    if not f:
        return ""
    return f"v{_v(f.get('version'))}: {f.get('reason', '')}"[:120]


_THRESHOLD = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


def parse_threshold(text: str | None) -> tuple[int | None, float | None]:
    """``--max-failures``: ``3`` (nodes) or ``10%`` (of the rollout's nodes) -> (count, percent)."""
    if text is None:
        return None, None
    m = _THRESHOLD.match(text.strip())
    if not m or (not m.group(2) and "." in m.group(1)):
        raise ConfigError(f"--max-failures {text!r}: expected a number of nodes (3) or a percentage (10%)")
    if m.group(2):
        pct = float(m.group(1))
        if pct >= 100:
            raise ConfigError(f"--max-failures {text!r}: a percentage must be under 100")
        return None, pct
    return int(m.group(1)), None


def _seen(row: dict[str, Any]) -> str:
    return ago(row.get("last_seen")) + (" (stale)" if row.get("stale") else "")


def _serving(row: dict[str, Any]) -> str:
    if row.get("edge") == "down" or row.get("state") == "not_serving":
        return "not serving"
    if row.get("edge") in (None, "none"):
        return "-"
    return _v(row.get("serving_version"))


@click.group()
@click.option("--config", "config_path", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
              help="Credentials file (default: $EDGEREC_ADMIN_CONFIG or ~/.config/edgerec/admin.json).")
@click.option("--server", default=None, help="Sync service URL (env: EDGEREC_SERVER).")
@click.pass_context
def admin(ctx: click.Context, config_path: Path | None, server: str | None) -> None:
    """Administer the sync service: enrollment, publishing, rollouts, fleet status."""
    ctx.obj = {"config": config_path, "server": server}


def _client(ctx: click.Context) -> AdminClient:
    obj = ctx.find_object(dict) or {}
    return AdminClient(load_credentials(obj.get("config"), obj.get("server")))


# -- offline set-up on the server machine --------------------------------------------


@admin.command("init")
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True,
              help="The service's data directory (created).")
@click.option("--keys-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True,
              help="Where the offline root keys are written; keep them off the server afterwards.")
@click.option("--publisher-key", "publisher_keys", type=AbsolutePath(dir_okay=False, path_type=Path),
              multiple=True, required=True, help="Trusted publisher public key (.pub); repeatable.")
@db_option
@click.option("--root-keys", type=click.IntRange(1, 15), default=3, show_default=True)
@click.option("--threshold", type=click.IntRange(1, 15), default=2, show_default=True)
@click.option("--server-url", default=DEFAULT_SERVER, show_default=True,
              help="URL the admin CLI will use, saved with the token.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init_cmd(ctx: click.Context, data_dir: Path, keys_dir: Path, publisher_keys: tuple[Path, ...],
             db_url: str | None, root_keys: int, threshold: int, server_url: str, as_json: bool) -> None:
    """Create the data directory, keys, database and TUF root (threshold of offline keys)."""
    from edgerec.sync.service.admin_init import init_service

    pubs: list[Ed25519PublicKey] = [load_verify_key(p) for p in publisher_keys]
    result = init_service(data_dir, keys_dir, pubs, db_url, root_keys, threshold)
    path = save_credentials(Credentials(server_url, result.admin_token), ctx.obj.get("config"))
    # The database URL may hold a password: it is kept in the data dir's service.json (0600), never shown.
    db = redact_url(result.db_url)
    doc = {"data_dir": str(result.data_dir), "db": db, "credentials": str(path),
           "root_keys": [str(p) for p in result.root_key_files], "threshold": result.threshold}
    if as_json:
        print_json(doc)
        return
    console.print(f"initialised {result.data_dir} (database {db})", markup=False)
    console.print(f"root keys ({result.threshold} of {len(result.root_key_files)} sign): "
                  f"{', '.join(str(p) for p in result.root_key_files)} -- keep them offline", markup=False)
    console.print(f"admin token saved to {path} (mode 0600)", markup=False)


@admin.command("token")
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="The service's data directory (none once its state is in the database: --db).")
@click.option("--name", default="admin", show_default=True)
@db_option
@click.option("--save", is_flag=True, help="Save it in the credentials file instead of printing it.")
@click.option("--out", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
              help="Write it to this file (mode 0600) instead of printing it.")
@click.pass_context
def token_cmd(ctx: click.Context, data_dir: Path | None, name: str, db_url: str | None, save: bool,
              out: Path | None) -> None:
    """Make another admin token (on the server machine; only its hash is stored)."""
    from edgerec.sync.service.admin_init import new_admin_token

    token = new_admin_token(data_dir, checked(name, "name"), db_url)
    if save:
        creds = load_credentials(ctx.obj.get("config"), ctx.obj.get("server"), token)
        console.print(f"saved to {save_credentials(creds, ctx.obj.get('config'))}", markup=False)
    elif out is not None:
        written = write_atomic(out, token.encode() + b"\n", mode=0o600)
        console.print(f"written to {written} (mode 0600)", markup=False)
    else:
        click.echo(token)


@admin.command("root-update")
@click.option("--data-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="The service's data directory (none once its state is in the database: --db, --key-file).")
@click.option("--keys-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--add-publisher", type=AbsolutePath(dir_okay=False, path_type=Path), multiple=True)
@click.option("--remove-publisher", multiple=True, metavar="KEYID", help="Key id (or a unique prefix).")
@db_option
@click.option("--key-file", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
              envvar="EDGEREC_SYNC_KEY_FILE", help="A replica key, to open the online keys kept in the database.")
def root_update(data_dir: Path | None, keys_dir: Path, add_publisher: tuple[Path, ...],
                remove_publisher: tuple[str, ...], db_url: str | None, key_file: Path | None) -> None:
    """Sign a new root version with changed publisher keys (nodes follow it through TUF)."""
    from edgerec.sync.service.admin_init import update_root

    version = update_root(data_dir, keys_dir, [load_verify_key(p) for p in add_publisher],
                          list(remove_publisher), db_url, key_file=key_file)
    console.print(f"root metadata is now version {version}")


@admin.command("login")
@click.option("--token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help=f"File holding an admin token (mode 0600). Default: ${TOKEN_ENV}.")
@refused_argument("--token", f"--token-file or {TOKEN_ENV}")
@click.option("--ca-cert", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="CA bundle for a private TLS CA.")
@click.option("--client-cert", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="Mutual TLS: the admin's certificate (PEM); saved with the token.")
@click.option("--client-key", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="Mutual TLS: the certificate's private key (PEM, mode 0600).")
@click.pass_context
def login(ctx: click.Context, token_file: Path | None, ca_cert: str | None, client_cert: str | None,
          client_key: str | None) -> None:
    """Check a server URL and an admin token, then save them (mode 0600)."""
    token = read_secret(token_file, TOKEN_ENV, "admin token")
    if token is None:
        raise ConfigError(f"no admin token: give --token-file or set {TOKEN_ENV}")
    server = ctx.obj.get("server") or DEFAULT_SERVER
    if (client_cert is None) != (client_key is None):
        raise ConfigError("--client-cert and --client-key go together")
    creds = Credentials(server.rstrip("/"), token, ca_cert, client_cert, client_key)
    with AdminClient(creds) as c:
        c.whoami()
    console.print(f"logged in to {creds.server}; saved to {save_credentials(creds, ctx.obj.get('config'))}",
                  markup=False)


# -- enrollment ----------------------------------------------------------------------


@admin.group("enroll-token")
def enroll_token() -> None:
    """One-time enrollment tokens for new nodes."""


@enroll_token.command("create")
@click.option("--tags", default=None, help="Comma-separated tags the node gets, e.g. eu,store.")
@click.option("--expires", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d ...")
@click.option("--out", type=AbsolutePath(dir_okay=False, path_type=Path), default=None,
              help="Write the token to this file (mode 0600; for 'edgerec node enroll --token-file') "
                   "instead of showing it.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def enroll_token_create(ctx: click.Context, tags: str | None, expires: str, out: Path | None, as_json: bool) -> None:
    """Create a one-time enrollment token (shown once; the service stores its hash)."""
    with _client(ctx) as c:
        doc = c.create_enroll_token(parse_tags(tags), parse_duration(expires))
    if out is not None:
        write_atomic(out, doc.pop("token").encode() + b"\n", mode=0o600)
        doc["token_file"] = str(out)
        if not as_json:
            console.print(f"enrollment token written to {out} (mode 0600)", markup=False)
            return
    if as_json:
        print_json(doc)
    else:
        console.print(doc["token"], highlight=False, soft_wrap=True, markup=False)


# -- packages and rollouts --------------------------------------------------------------


@admin.command()
@click.argument("pkg", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path))
@click.option("--channel", required=True, help="Channel to publish on, e.g. stable.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def publish(ctx: click.Context, pkg: Path, channel: str, as_json: bool) -> None:
    """Upload a signed package; the service encrypts it and seals keys per node."""
    checked(channel, "channel")
    with _client(ctx) as c:
        if not progress_wanted(as_json):
            doc = c.publish(pkg, channel)
        else:
            columns = (TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn())
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task(escape(pkg.name), total=pkg.stat().st_size)
                doc = c.publish(pkg, channel, lambda n: bar.advance(task, n))
    if as_json:
        print_json(doc)
        return
    console.print(f"published {doc['name']} v{doc['version']} on {doc['channel']}: {doc['target']} "
                  f"({doc['size']:,} bytes; node keys are sealed when a rollout assigns it)", markup=False)


@admin.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def packages(ctx: click.Context, as_json: bool) -> None:
    """Published packages by channel."""
    with _client(ctx) as c:
        rows = c.packages()
    if as_json:
        print_json(rows)
        return
    t = Table("model", "version", "channel", "size", "signer", "target")
    for r in rows:
        t.add_row(*text_row(r["name"], r["version"], r["channel"], f"{r['size']:,}", r["signer"][:12], r["target"]))
    console.print(t)


def _print_summary(doc: dict[str, Any], what: str, as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    tags = f" tags {','.join(doc['tags'])}" if doc["tags"] else ""
    console.print(f"{what}: {doc['model']} v{doc['version']} on {doc['channel']} at {doc['percent']:g}%{tags}, "
                  f"{doc['state']}{_limit(doc)}; {doc['changed']} node(s) changed, {doc.get('envelopes', 0)} node "
                  "envelope(s) sealed", markup=False, highlight=False)


def _limit(doc: dict[str, Any]) -> str:
    if doc.get("max_failures") is not None:
        return f", pauses past {doc['max_failures']} failed node(s)"
    if doc.get("max_failure_percent") is not None:
        return f", pauses past {doc['max_failure_percent']:g}% failed nodes"
    return ""


@admin.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=0))
@click.option("--channel", required=True)
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=100.0, show_default=True)
@click.option("--tags", default=None, help="Only nodes with all these tags (comma-separated).")
@click.option("--max-failures", default=None,
              help="Pause the rollout once more nodes than this (3) or this share of its nodes (10%) "
                   "roll the version back.")
@click.option("--phases", default=None, help="Gated phases in percent, e.g. 5,25,100 (needs --gate).")
@click.option("--gate", "gates", multiple=True, help="Outcome gate per phase, e.g. 'ctr>=-1%' or 'errors<=1%'.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollout(ctx: click.Context, name: str, version: int, channel: str, percent: float, tags: str | None,
            max_failures: str | None, phases: str | None, gates: tuple[str, ...], as_json: bool) -> None:
    """Roll VERSION of model NAME out to a share of the nodes (deterministic buckets).

    With --phases and --gate, each phase advances only when the nodes' private
    figures pass the gates (an always-valid sequential test); otherwise the
    rollout halts and the canaries go back to the current version."""
    if phases is not None or gates:
        from .metrics_cli import gated_rollout

        gated_rollout(ctx, _client, checked(name, "model"), version, checked(channel, "channel"), phases, gates,
                      parse_tags(tags), as_json)
        return
    count, pct = parse_threshold(max_failures)
    with _client(ctx) as c:
        doc = c.rollout(checked(name, "model"), version, checked(channel, "channel"), percent, parse_tags(tags),
                        count, pct)
    _print_summary(doc, "rollout", as_json)


@admin.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pause(ctx: click.Context, name: str, as_json: bool) -> None:
    """Pause a rollout: nodes that have not installed it keep their version."""
    with _client(ctx) as c:
        _print_summary(c.pause(checked(name, "model")), "paused", as_json)


@admin.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def resume(ctx: click.Context, name: str, as_json: bool) -> None:
    """Resume a paused rollout."""
    with _client(ctx) as c:
        _print_summary(c.resume(checked(name, "model")), "resumed", as_json)


@admin.command()
@click.argument("name")
@click.option("--to", "to_version", type=click.IntRange(min=0), required=True)
@click.option("--channel", default=None, help="Channel of the version (default: where it was rolled out).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rollback(ctx: click.Context, name: str, to_version: int, channel: str | None, as_json: bool) -> None:
    """Send every node back to an older version (a signed, explicit rollback)."""
    with _client(ctx) as c:
        doc = c.rollback(checked(name, "model"), to_version, checked(channel, "channel") if channel else None)
    _print_summary(doc, "rolled back", as_json)


# -- the fleet -------------------------------------------------------------------------


@admin.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """Every node: tags, last seen, accelerator, health and per model desired/installed."""
    with _client(ctx) as c:
        rows = c.nodes()
    if as_json:
        print_json(rows)
        return
    t = Table("node", "name", "tags", "last seen", "edge server", "health", "models (desired/serving)",
              "failure", title=f"{len(rows)} node(s)")
    for n in rows:
        models = ", ".join(f"{m['model']} {_v(m['desired_version'])}/{_serving(m)}" for m in n["models"])
        fail = next((_failure(m["last_failure"]) for m in n["models"] if m["last_failure"]), "")
        name = n["name"] + (" (revoked)" if n["revoked"] else "")
        t.add_row(*text_row(n["node_id"], name, ",".join(n["tags"]), _seen(n), _v(n.get("edge")), _v(n["health"]),
                            models, fail))
    console.print(t)


@admin.command("node")
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def node_cmd(ctx: click.Context, node_id: str, as_json: bool) -> None:
    """One node: what its edge server serves per model, whether it is stale, and its failure history."""
    with _client(ctx) as c:
        doc = c.node(checked(node_id, "node id"))
    if as_json:
        print_json(doc)
        return
    flags = [f"last seen {_seen(doc)}", f"edge server {_v(doc.get('edge'))}", f"health {_v(doc.get('health'))}"]
    if doc["revoked"]:
        flags.append("revoked")
    # Node-supplied strings (name, tags, edge version, health): escaped like every table cell, control
    # characters included (markup=False alone lets ESC through to the terminal).
    console.print(plain(f"node {doc['node_id']} ({doc['name']}, tags {','.join(doc['tags']) or '-'}): "
                        f"{', '.join(flags)}"), highlight=False)
    t = Table("model", "desired", "current", "serving", "state", "accelerator", "failure")
    for m in doc["models"]:
        t.add_row(*text_row(m["model"], _v(m["desired_version"]) + (" (rollback)" if m["rollback"] else ""),
                            _v(m["installed_version"]), _serving(m), _v(m["state"]), _v(m["accelerator"]),
                            _failure(m["last_failure"])))
    console.print(t)
    h = Table("when", "model", "version", "bad", "reason", title=f"failure history ({len(doc['failures'])})")
    for f in doc["failures"]:
        h.add_row(*text_row(ago(f["at"]), f["model"], _v(f["version"]), "yes" if f["bad"] else "",
                            f["reason"][:200]))
    console.print(h)


@admin.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, name: str, as_json: bool) -> None:
    """One model: its rollout and, per node, desired and installed version and failures."""
    with _client(ctx) as c:
        doc = c.status(checked(name, "model"))
    if as_json:
        print_json(doc)
        return
    r = doc["rollout"]
    if r:
        tags = f" tags {','.join(r['tags'])}" if r["tags"] else ""
        kind = "rollback" if r["rollback"] else "rollout"
        why = f" ({r['paused_reason']})" if r["state"] == "paused" and r.get("paused_reason") else ""
        console.print(f"{doc['model']}: {kind} of v{r['version']} on {r['channel']} at {r['percent']:g}%{tags}, "
                      f"{r['state']}{why}{_limit(r)}", markup=False, highlight=False)
    else:
        console.print(f"{doc['model']}: no rollout in progress", markup=False)
    rows = doc["nodes"]
    done = sum(1 for n in rows if n["desired_version"] is not None and n["desired_version"] == _served(n))
    down = sum(1 for n in rows if n.get("state") == "not_serving")
    stale = sum(1 for n in rows if n.get("stale"))
    extra = "".join(f", {k} {w}" for k, w in ((down, "not serving"), (stale, "stale")) if k)
    t = Table("node", "name", "desired", "current", "serving", "state", "last seen", "accelerator", "health",
              "failure", title=f"{done} of {len(rows)} node(s) serve their desired version{extra}")
    for n in rows:
        desired = _v(n["desired_version"]) + (" (rollback)" if n["rollback"] else "")
        t.add_row(*text_row(n["node_id"], n["name"], desired, _v(n["installed_version"]), _serving(n),
                            _v(n["state"]), _seen(n), _v(n["accelerator"]), _v(n["health"]),
                            _failure(n["last_failure"])))
    console.print(t)


def _served(n: dict[str, Any]) -> Any:
    """The version a node runs: what its edge server serves, or (no edge server) what it installed."""
    if n.get("edge") in (None, "none"):
        return n.get("installed_version")
    return n.get("serving_version")


@admin.command()
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def revoke(ctx: click.Context, node_id: str, as_json: bool) -> None:
    """Revoke a node: its requests are refused and it gets no new keys."""
    with _client(ctx) as c:
        doc = c.revoke(checked(node_id, "node id"))
    if as_json:
        print_json(doc)
    else:
        console.print(f"revoked {doc['node_id']}", markup=False)


@admin.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def prune(ctx: click.Context, as_json: bool) -> None:
    """Run the service's retention once now: forget reports, releases and operational windows past their age."""
    with _client(ctx) as c:
        doc = c.prune()
    if as_json:
        print_json(doc)
    else:
        removed = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in doc["removed"].items())
        kept = ", ".join(f"{what.removesuffix('_s').replace('_', ' ')} {s / 86400:g} d"
                         for what, s in doc["retention"].items())
        console.print(f"removed {removed} (kept: {kept})", markup=False)


# The fleet metrics commands (ab-report, experiment, alerts, gates, metrics) and repo-url live in their own modules.
register_metrics(admin, _client)
register_origin(admin, _client)

__all__ = ["admin", "default_config_path"]
