"""``edgerec node``: enroll this machine, then run the daemon that installs what it is sent."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgerec.sdk.cli.log_options import log_options
from edgerec.sdk.cli.output import console, plain, print_json, text_row
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.cli.secret_input import read_secret, refused_argument
from edgerec.sdk.json_logs import LogSettings
from edgerec.sdk.model import ACCELERATOR_CHOICES, parse_accelerator
from edgerec.sync.protocol.errors import ConfigError, ServerUnreachableError

from .forget_cli import forget_user

ENROLL_TOKEN_ENV = "EDGEREC_ENROLL_TOKEN"  # noqa: S105 - the variable's name, not a secret
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)$")


def parse_rate(text: str | None) -> float | None:
    """``500k``, ``2M``, ``1000000`` (bytes per second) -> bytes per second."""
    if text is None:
        return None
    m = _RATE.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--download-rate {text!r}: expected bytes per second, e.g. 500k or 2M")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def _logging(logs: LogSettings) -> None:
    """The daemon's lines on stderr: plain text with the time (the default), or JSON lines."""
    logger = logging.getLogger("edgerec")
    if logs.format == "text" and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logs.apply()


@click.group()
def node() -> None:
    """Edge node daemon: enroll once, then poll, verify, install, watch and report."""


@node.command()
@click.option("--server", required=True, help="Sync service URL.")
@click.option("--token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File (mode 0600) holding the one-time enrollment token from 'edgerec admin enroll-token "
                   f"create'. Default: ${ENROLL_TOKEN_ENV}.")
@refused_argument("--token", f"--token-file or {ENROLL_TOKEN_ENV}")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--name", default=None, help="A name for this node (default: its id).")
@click.option("--ca-cert", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="CA bundle when the service uses a private TLS CA.")
@click.option("--client-cert", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="Mutual TLS: this node's certificate (PEM), used for every call to the service.")
@click.option("--client-key", type=AbsolutePath(dir_okay=False, exists=True), default=None,
              help="Mutual TLS: the certificate's private key (PEM, mode 0600).")
@click.option("--repo-url", default=None,
              help="The TUF repository's static origin (URL/metadata/, URL/targets/); default: the one the "
                   "service names, else the service itself. An origin the service signs later replaces it.")
@click.option("--json", "as_json", is_flag=True)
def enroll(server: str, token_file: Path | None, state_dir: Path, name: str | None, ca_cert: str | None,
           client_cert: str | None, client_key: str | None, repo_url: str | None, as_json: bool) -> None:
    """Make this node's keys (private files 0600, never sent) and enroll it."""
    from .enroll import enroll_node

    token = read_secret(token_file, ENROLL_TOKEN_ENV, "enrollment token")
    if token is None:
        raise ConfigError(f"no enrollment token: give --token-file or set {ENROLL_TOKEN_ENV}")
    if (client_cert is None) != (client_key is None):
        raise ConfigError("--client-cert and --client-key go together")
    ident = enroll_node(state_dir, server, token, name, str(Path(ca_cert).resolve()) if ca_cert else None,
                        client_cert, client_key, repo_url)
    if as_json:
        print_json({"node_id": ident.node_id, "server": ident.server, "tags": ident.tags,
                    "metadata_url": ident.metadata_url, "targets_url": ident.targets_url})
    else:
        console.print(f"enrolled as {ident.node_id} with {ident.server}; root metadata pinned in {state_dir}",
                      markup=False)


@node.command()
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--model-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="Where models are installed (NAME/VERSION.edgepkg, NAME/current); remembered for later runs.")
@click.option("--edge-server", default=None, help="URL of an edge server this daemon drives (not with --serve).")
@click.option("--control-token-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="File holding that edge server's control token (mode 0600).")
@click.option("--serve", is_flag=True, help="Run the edge server on the model directory as a supervised child.")
@click.option("--serve-host", default="127.0.0.1", show_default=True, help="With --serve: listen address.")
@click.option("--serve-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="With --serve: port.")
@click.option("--serve-config", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              help="With --serve: edge server settings file (TOML or JSON, as 'edgerec serve --config').")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between polls (+-10 % jitter).")
@click.option("--max-backoff", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="Longest wait between tries while the sync service is unreachable, and the longest "
                   "Retry-After honoured when it refuses for overload (plus up to half of it of jitter).")
@click.option("--health-window", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds a new version is watched after its swap before the node commits to it.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Share of failed requests to a new version that rolls it back.")
@click.option("--max-p99-ms", type=click.FloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="p99 latency of a new version that rolls it back.")
@click.option("--download-rate", default=None, help="Cap on download bytes per second (e.g. 500k, 2M).")
@click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto", show_default=True)
@click.option("--retention-days", type=click.FloatRange(min=0, min_open=True), default=7.0, show_default=True,
              help="Sent reports and cached downloads not installed, current or previous go after this many days.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Release private fleet metrics from the edge server's event spool (STATE/events).")
@click.option("--metrics-window", type=click.IntRange(60, 86400), default=3600, show_default=True,
              help="Seconds per business window (a divisor of a day).")
@click.option("--ops-window", type=click.IntRange(60, 86400), default=300, show_default=True,
              help="Seconds per operational window (a multiple of 60).")
@click.option("--metrics-grace", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Seconds a window waits for late events after its end.")
@click.option("--epsilon", type=click.FloatRange(0, 10, min_open=True), default=0.5, show_default=True,
              help="Privacy cost of one window's release.")
@click.option("--daily-budget", type=click.FloatRange(0, 1000, min_open=True), default=12.0, show_default=True,
              help="Epsilon a node may spend per UTC day; releases stop when it is spent.")
@click.option("--noise-free-for-tests", is_flag=True, hidden=True,
              help="Release exact counts (tests only; the sync service refuses them unless told otherwise).")
@click.option("--once", is_flag=True, help="Run one cycle and exit (1 if anything failed).")
@log_options("text", access=False)
def run(state_dir: Path, model_dir: Path | None, edge_server: str | None, control_token_file: Path | None,
        serve: bool, serve_host: str, serve_port: int, serve_config: Path | None, interval: float,
        max_backoff: float, health_window: float, max_error_rate: float, max_p99_ms: float,
        download_rate: str | None, accelerator: str, retention_days: float, metrics: bool, metrics_window: int,
        ops_window: int, metrics_grace: float, epsilon: float, daily_budget: float, noise_free_for_tests: bool,
        once: bool, log_format: str, log_level: str, log_flush_ms: float) -> None:
    """Poll assignments, fetch through TUF, verify, install atomically, watch, report."""
    from edgerec.sdk.tracing import configure_otlp

    from .daemon import DaemonConfig, NodeDaemon
    from .health import HealthPolicy
    from .metrics_feed import MetricsConfig
    from .privacy import PrivacyConfig
    from .retention import NodeRetention
    from .state import NodeState

    configure_otlp("edgerec-node")  # with OTEL_EXPORTER_OTLP_ENDPOINT set (the supervised edge server inherits it)

    _logging(LogSettings(log_format, log_level, log_flush_ms, access=False))
    if serve and edge_server:
        raise ConfigError("--serve runs its own edge server; leave out --edge-server")
    if serve and once:
        raise ConfigError("--serve runs the edge server for as long as the daemon runs; it does not go with --once")
    if edge_server and control_token_file is None:
        raise ConfigError("--edge-server needs --control-token-file")
    state = NodeState(state_dir)
    state.identity()  # not enrolled: one clear line, before anything starts
    if model_dir is None:
        recorded = state.db.setting("model_dir")
        if recorded is None:
            raise ConfigError("--model-dir is needed on the first run")
        model_dir = Path(recorded)
    config = DaemonConfig(interval, parse_accelerator(accelerator, "--accelerator"), health=HealthPolicy(
        window_s=health_window, max_error_rate=max_error_rate, max_p99_ms=max_p99_ms),
        max_backoff_s=max_backoff, download_rate=parse_rate(download_rate),
        retention=NodeRetention(sent_reports_s=retention_days * 86400, targets_s=retention_days * 86400),
        metrics=MetricsConfig(PrivacyConfig(epsilon, daily_budget, window_seconds=metrics_window,
                                            mechanism="none" if noise_free_for_tests else "discrete_laplace"),
                              ops_window, metrics_grace) if metrics else None)
    child, edge = _edge(state, model_dir, edge_server, control_token_file, serve, serve_host, serve_port,
                        serve_config, metrics, _given_log_flags(click.get_current_context()))
    daemon = NodeDaemon(state, model_dir, edge, config, on_trust_change=child.restart if child else None)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        if child is not None:
            child.start()
        if once:
            _once(daemon)
        else:
            daemon.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if child is not None:
            child.stop()
        daemon.close()
        state.close()


def _given_log_flags(ctx: click.Context) -> list[str]:
    """The log options given on the command line, for the supervised edge server (which otherwise keeps its own
    defaults, JSON lines, and its settings file's)."""
    out = []
    for name in ("log_format", "log_level", "log_flush_ms"):
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None):
            out += ["--" + name.replace("_", "-"), str(ctx.params[name])]
    return out


def _edge(state: Any, model_dir: Path, edge_server: str | None, control_token_file: Path | None, serve: bool,
          host: str, port: int, serve_config: Path | None, metrics: bool, log_flags: list[str]) -> tuple[Any, Any]:
    """The supervised edge server (with --serve) and the control client of the edge server, if any."""
    from edgerec.sdk.keys import read_secret_text

    from .edge_control import EdgeControl
    from .supervise import EdgeChild, edge_argv, edge_flags, make_token_env

    if serve:
        token = state.control_token()
        model_dir.mkdir(parents=True, exist_ok=True)
        argv = [*edge_argv(edge_flags(state, model_dir, metrics)), "--host", host, "--port", str(port),
                "--control-token-file", str(state.control_token_file.resolve())]
        if serve_config is not None:
            argv += ["--config", str(serve_config.resolve())]
        argv += log_flags  # one --log-format for the daemon and its edge server
        return EdgeChild(argv, make_token_env()), EdgeControl(f"http://{_connect_host(host)}:{port}", token)
    if edge_server:
        assert control_token_file is not None
        return None, EdgeControl(edge_server, read_secret_text(control_token_file, "control token"))
    return None, None


def _connect_host(host: str) -> str:
    """Where the daemon reaches a server listening on ``host`` (loopback for a wildcard)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if addr.is_unspecified:
        return "127.0.0.1" if addr.version == 4 else "[::1]"
    return f"[{host}]" if addr.version == 6 else host


def _once(daemon: Any) -> None:
    result = daemon.run_once()
    for m, v in result.repaired:
        console.print(f"edge server serves current {m} v{v} again", markup=False)
    for m, v in result.installed:
        console.print(f"installed {m} v{v}", markup=False)
    for m, v, why in result.rolled_back:
        console.print(f"[red]rolled back[/] {plain(m)} v{v}: {plain(why)}", highlight=False)
    for m, why in result.failures.items():
        console.print(f"[red]failed[/] {plain(m)}: {plain(why)}", highlight=False)
    if not result.reachable:
        raise ConfigError(f"cannot reach the sync service at {daemon.ident.server} (reports stay queued)")
    if result.overloaded:
        after = "" if result.retry_after_s is None else f"; it asks to retry after {result.retry_after_s:g} s"
        raise ServerUnreachableError(f"the sync service at {daemon.ident.server} refused for overload{after} "
                                     "(reports stay queued)")
    if result.failures:
        raise SystemExit(1)


@node.command("status")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def status_cmd(state_dir: Path, as_json: bool) -> None:
    """What this node has installed, its failures, bad versions and queued reports (local view)."""
    from edgerec.sdk.modeldir import ModelDir

    from .origin import REFUSED
    from .state import NodeState

    st = NodeState(state_dir)
    ident = st.identity()
    db = st.db
    recorded = db.setting("model_dir")
    current = ModelDir(recorded).pointers() if recorded else {}
    refused = json.loads(db.setting(REFUSED) or "null")
    doc = {"node_id": ident.node_id, "server": ident.server, "metadata_url": ident.metadata_url,
           "targets_url": ident.targets_url, "origin_refused": refused, "model_dir": recorded, "current": current,
           **db.to_dict()}
    if as_json:
        print_json(doc)
        return
    console.print(f"repository metadata: {plain(ident.metadata_url)}")
    if refused:
        console.print(f"[yellow]origin switch refused[/]: {plain(refused['url'])}: {plain(refused['reason'])}")
    accepted, failures, bad = db.accepted(), db.failures(), db.bad_versions()
    t = Table("model", "desired", "current", "bad versions", "failure",
              title=plain(f"node {ident.node_id} ({doc['pending_reports']} report(s) queued)"))
    for m in sorted(set(accepted) | set(current) | set(failures)):
        a, f = accepted.get(m), failures.get(m)
        t.add_row(*text_row(m, a.version if a else "-", current.get(m, "-"),
                            ",".join(str(v) for v in sorted(bad.get(m, {}))) or "-", f.reason[:100] if f else ""))
    console.print(t)


@node.command("retry")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.argument("model")
@click.option("--version", type=click.IntRange(min=0), default=None, help="Only this version (default: all).")
def retry_cmd(state_dir: Path, model: str, version: int | None) -> None:
    """Forget that versions of MODEL were marked bad here, so the daemon tries them again."""
    from .state import NodeState

    st = NodeState(state_dir)
    st.identity()
    n = st.db.forget_bad(model, version)
    console.print(f"{model}: {n} bad mark(s) forgotten; the next cycle tries the assigned version again",
                  markup=False)


@node.command("edge-config")
@click.option("--state-dir", type=AbsolutePath(file_okay=False, path_type=Path), required=True)
@click.option("--model-dir", type=AbsolutePath(file_okay=False, path_type=Path), default=None,
              help="Default: the one 'node run' recorded.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Spool accepted events for the daemon's fleet metrics (as 'node run --metrics').")
@click.option("--json", "as_json", is_flag=True)
def edge_config(state_dir: Path, model_dir: Path | None, metrics: bool, as_json: bool) -> None:
    """The 'edgerec serve' flags that serve what this node installs ('node run --serve' uses the same)."""
    from .state import NodeState
    from .supervise import edge_argv, edge_flags

    st = NodeState(state_dir)
    doc = edge_flags(st, model_dir, metrics)
    if as_json:
        print_json(doc)
        return
    click.echo(shlex.join(edge_argv(doc)))


node.add_command(forget_user)
