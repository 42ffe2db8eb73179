"""``edgerec serve``: run the edge inference server on granian (:mod:`.server`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from edgerec.sdk.cli.log_options import log_options
from edgerec.sdk.cli.paths import AbsolutePath
from edgerec.sdk.cli.secret_input import no_password_argument
from edgerec.sdk.model import ACCELERATOR_CHOICES
from edgerec.sdk.runtime import BACKEND_CHOICES
from edgerec.sdk.tracing import check_otlp_endpoint

from .config import ServerConfig, file_key
from .errors import ConfigError
from .server import serve as run_server

# CLI option -> ServerConfig field, where the names differ.
_FIELDS = {"config_file": None, "trusted_key": "trusted_keys", "otlp_endpoint": None}


@click.command()
@click.option("--model-dir", type=AbsolutePath(file_okay=False, exists=True, path_type=Path),
              envvar="EDGEREC_MODEL_DIR",
              help="Model directory: NAME/current pointers (what a node daemon writes) serve exactly the "
                   "version they name; top-level *.edgepkg serve the highest version. Env: EDGEREC_MODEL_DIR.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="EDGEREC_HOST")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="EDGEREC_PORT")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes sharing the port (one that dies is replaced; with 2 or more the port "
                   "never closes).")
@click.option("--max-connections", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Open connections per worker, idle ones included; more wait in the kernel's queue.")
@click.option("--http-threads", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Python threads per worker that run requests at once (one waiting for its micro-batch "
                   "does not count); bodies are read before, without a thread.")
@click.option("--header-timeout-s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Time a request head may take from its first byte; also an idle keep-alive connection's.")
@click.option("--body-timeout-s", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Time a request body may take from its first byte to its last (408 after).")
@click.option("--tls-cert", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              envvar="EDGEREC_TLS_CERT",
              help="Serve HTTPS (TLS 1.2 or later) with this certificate chain (PEM); with --tls-key.")
@click.option("--tls-key", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              envvar="EDGEREC_TLS_KEY", help="The certificate's private key (PEM, mode 0600).")
@click.option("--api-key-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path), default=None,
              envvar="EDGEREC_API_KEY_FILE",
              help="Require an API key on the inference routes: the hashes made by `edgerec api-key add` "
                   "(re-read when it changes). Health, /metrics and the control API are not affected.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the runtime per model (default: the runtime's choice).")
@click.option("--accelerator", type=click.Choice(ACCELERATOR_CHOICES), default="auto", show_default=True)
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rows per merged runtime call; 1 turns batching off.")
@click.option("--max-delay-ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
              help="Longest a request waits for others to join its batch.")
@click.option("--batch-min-call-us", type=click.FloatRange(0, 1e6), default=100.0, show_default=True,
              help="Batch only a model whose call takes at least this much CPU (timed on a warm-up row at load, "
                   "then the least of its recent calls); merging a cheaper one costs more than it saves. "
                   "0: always batch.")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=8 * 1024 * 1024, show_default=True,
              help="Largest body of a scoring request (infer, predict, rank); other routes take at most 1 MiB.")
@click.option("--max-held-body-bytes", type=click.IntRange(min=1024), default=128 * 1024 * 1024,
              show_default=True, help="Request bodies a worker holds in memory at once; past it 503 + Retry-After.")
@click.option("--cache-url", envvar="EDGEREC_CACHE_URL",
              callback=no_password_argument("--cache-url", "set EDGEREC_CACHE_URL, or [cache] url in the --config "
                                                           "file"),
              help="redis://… for a shared feature cache (default: in-process LRU). A URL with a password only "
                   "from env EDGEREC_CACHE_URL or the --config file.")
@click.option("--feature-source", envvar="EDGEREC_FEATURE_SOURCE",
              help="sqlite:///abs/path.db with user_features and item_features tables.")
@click.option("--config", "config_file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path),
              help="TOML or JSON settings (experiments, limits, ...); options given here win.")
@click.option("--trusted-key", "-k", multiple=True, type=AbsolutePath(dir_okay=False, path_type=Path),
              envvar="EDGEREC_TRUSTED_KEYS",
              help="Trusted publisher public key; repeatable. Env: EDGEREC_TRUSTED_KEYS.")
@click.option("--recipient-key", type=AbsolutePath(dir_okay=False, path_type=Path),
              help="This node's X25519 private key, for encrypted packages.")
@click.option("--recipient-id", help="This node's recipient id (with --recipient-key).")
@click.option("--control-token-file", type=AbsolutePath(dir_okay=False, path_type=Path),
              envvar="EDGEREC_CONTROL_TOKEN_FILE",
              help="File (mode 0600) holding the control API's bearer token (or env EDGEREC_CONTROL_TOKEN); "
                   "none: control off.")
@click.option("--control-allow-remote", is_flag=True, help="Let non-loopback callers reach the control API.")
@click.option("--otlp-endpoint", default=None,
              help="Export traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318); the same as "
                   "OTEL_EXPORTER_OTLP_ENDPOINT, and the other OTEL_* variables apply.")
@click.option("--events-spool", "events_spool_dir", type=AbsolutePath(file_okay=False, path_type=Path),
              help="Folder where accepted events and operational figures are spooled for the node daemon "
                   "(with --user-key-file; 'edgerec node run --serve' sets both).")
@click.option("--user-key-file", type=AbsolutePath(dir_okay=False, exists=True, path_type=Path),
              help="The node's key of user fingerprints in the spool (0600; made by the node).")
@log_options("json")
def serve(**options: Any) -> None:
    """Serve verified model packages: Open Inference Protocol v2, TF-Serving predict, /v1/rank."""
    config = build_config(click.get_current_context(), options)
    if options["otlp_endpoint"]:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = check_otlp_endpoint(options["otlp_endpoint"])
    config.logs().apply()
    run_server(config)


def build_config(ctx: click.Context, options: dict[str, Any]) -> ServerConfig:
    """Settings file values, overridden by options the user actually gave."""
    values: dict[str, Any] = {}
    named: dict[str, str] = {}  # field -> how the user set it (an option, a file key), for errors
    if options["config_file"] is not None:
        values.update(ServerConfig.file_values(options["config_file"]))
        named.update({f: key for f in values if (key := file_key(f))})
    flags = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.opts}
    for name, value in options.items():
        field = _FIELDS.get(name, name)
        if field is None:
            continue
        given = ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
        if given or field not in values:
            values[field] = tuple(value) if name == "trusted_key" else value
            if given and name in flags:
                named[field] = flags[name]
    if not values.get("trusted_keys"):
        raise click.UsageError("at least one --trusted-key (or EDGEREC_TRUSTED_KEYS) is needed")
    token = os.environ.get("EDGEREC_CONTROL_TOKEN")
    if token and not values.get("control_token_file"):
        if len(token) < 16:
            raise click.UsageError("EDGEREC_CONTROL_TOKEN must be at least 16 characters")
        values["control_token"] = token
    try:
        return ServerConfig(**values)
    except ConfigError as exc:
        where = named.get(exc.field or "")
        if where is None:
            raise
        raise ConfigError(exc.detail, field=where) from None


__all__ = ["build_config", "serve"]
