"""Server settings: one typed dataclass with safe defaults, checked once.

Settings come from a TOML or JSON file (``--config``) and from command-line
options, which win. The file groups settings in sections::

    [server]    host, port, workers, http_threads, access_log, log_format, log_level, log_flush_ms,
                max_connections, header_timeout_s, body_timeout_s, tls_cert, tls_key
    [auth]      api_key_file
    [model]     model_dir, accelerator, threads, backend, trusted_keys, recipient_key, recipient_id
    [batching]  max_batch, max_delay_ms, min_call_us
    [limits]    max_body_bytes, max_held_body_bytes, max_rows, max_candidates, max_events, request_timeout_s
    [cache]     url, ttl_s, negative_ttl_s, max_entries
    [features]  source, user_id_field
    [control]   token_file, allow_remote, timeout_s
    [events]    attribution_window_s, dedup_bytes, dedup_path, spool_dir, spool_bytes, user_key_file
    [[experiments]]  name, model, salt, [[experiments.variants]] name, version, weight
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerec.sdk.errors import InvalidInputError, KeyFileError
from edgerec.sdk.json_logs import LOG_FORMATS, LOG_LEVELS, LogSettings
from edgerec.sdk.keys import read_secret_text
from edgerec.sdk.model import Accelerator, parse_accelerator
from edgerec.sdk.runtime import BackendChoice, parse_backend

from .errors import ConfigError
from .experiments import Experiment, parse_experiments

_SECTIONS: dict[str, dict[str, str]] = {
    "server": {k: k for k in ("host", "port", "workers", "http_threads", "access_log", "log_format", "log_level",
                              "log_flush_ms", "max_connections", "header_timeout_s", "body_timeout_s", "tls_cert",
                              "tls_key")},
    "auth": {"api_key_file": "api_key_file"},
    "model": {k: k for k in ("model_dir", "accelerator", "threads", "backend", "trusted_keys",
                             "recipient_key", "recipient_id")},
    "batching": {"max_batch": "max_batch", "max_delay_ms": "max_delay_ms", "min_call_us": "batch_min_call_us"},
    "limits": {k: k for k in ("max_body_bytes", "max_held_body_bytes", "max_rows", "max_candidates",
                              "max_events", "request_timeout_s")},
    "cache": {"url": "cache_url", "ttl_s": "cache_ttl_s", "negative_ttl_s": "cache_negative_ttl_s",
              "max_entries": "cache_max_entries"},
    "features": {"source": "feature_source", "user_id_field": "user_id_field"},
    "control": {"token_file": "control_token_file", "allow_remote": "control_allow_remote",
                "timeout_s": "control_timeout_s"},
    "events": {"attribution_window_s": "attribution_window_s", "dedup_bytes": "events_dedup_bytes",
               "dedup_path": "events_dedup_path", "spool_dir": "events_spool_dir",
               "spool_bytes": "events_spool_bytes", "user_key_file": "user_key_file"},
}
_PATHS = ("model_dir", "recipient_key", "control_token_file", "events_dedup_path", "tls_cert", "tls_key",
          "api_key_file", "events_spool_dir", "user_key_file")


# The scoring routes, as Flask matches them (a <name> or <version> is one path segment): any other path,
# "/anything/infer" included, gets the small limit.
_SCORING = re.compile(r"/v1/rank|/v2/models/[^/]+(?:/versions/[^/]+)?/infer"
                      r"|/v1/models/[^/]+(?:/versions/[^/]+)?:predict")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the edge server needs; defaults are safe for a single node."""

    model_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # The HTTP tier (granian and the front, per worker): open connections; the threads that run the app;
    # a request head's time from its first byte (and an idle keep-alive connection's); a body's.
    max_connections: int = 4096
    # Threads per worker that run requests at once (a request waiting for its micro-batch does not count):
    # few, as the GIL serialises Python work; 2 was fastest at 32 clients on 2 cores (docs/benchmarks.md).
    http_threads: int = 2
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    # HTTPS with granian's own TLS (PEM chain and key; the key file 0600); None: plain HTTP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Hashes of the keys the inference routes accept (edge_server/api_keys.py); None: no key needed.
    api_key_file: Path | None = None
    accelerator: Accelerator = "auto"
    threads: int | None = None
    backend: BackendChoice = "auto"
    trusted_keys: tuple[Path, ...] = ()
    recipient_key: Path | None = None
    recipient_id: str | None = None
    max_batch: int = 32
    max_delay_ms: float = 2.0
    # A model whose direct call takes less (a moving average) is not batched: merging would cost more than it saves.
    batch_min_call_us: float = 100.0
    # the body of a scoring request (infer, predict, rank); the other routes take at most small_body_bytes (body_limit)
    max_body_bytes: int = 8 * 1024 * 1024
    # request bodies one worker holds in memory at once (being read or served); past it 503 + Retry-After
    max_held_body_bytes: int = 128 * 1024 * 1024
    max_rows: int = 4096
    max_candidates: int = 2048
    max_events: int = 1000
    request_timeout_s: float = 30.0
    cache_url: str | None = None
    cache_ttl_s: float = 300.0
    cache_negative_ttl_s: float = 30.0
    cache_max_entries: int = 100_000
    feature_source: str | None = None
    user_id_field: str = "user_id"
    experiments: tuple[Experiment, ...] = ()
    control_token_file: Path | None = None
    control_token: str | None = field(default=None, repr=False)
    control_allow_remote: bool = False
    # How long a control call waits for the other worker processes to apply it.
    control_timeout_s: float = 300.0
    attribution_window_s: float = 86400.0
    # The event de-duplication table: its size in bytes, fixed, and where worker processes share
    # it (a folder or file; default: run_dir in multi-worker mode, else this process's memory).
    events_dedup_bytes: int = 32 * 1024 * 1024
    events_dedup_path: Path | None = None
    # The spool of accepted events and operational figures the node daemon reads (off when None), its
    # size cap in bytes, and the key of the users' fingerprints in it (both made by the node).
    events_spool_dir: Path | None = None
    events_spool_bytes: int = 256 * 1024 * 1024
    user_key_file: Path | None = None
    response_key: bytes | None = field(default=None, repr=False)
    access_log: bool = True
    log_format: str = "json"
    log_level: str = "info"
    # > 0: log lines are written in batches at most this many ms apart (warnings and errors at once).
    log_flush_ms: float = 0.0
    # Set by `edgerec serve` for its worker processes: the run folder, the worker's pid.
    run_dir: Path | None = None
    worker_index: int | None = None

    def __post_init__(self) -> None:
        # Files, options and the worker hand-over all arrive here as plain strings.
        try:
            parse_accelerator(self.accelerator)
            parse_backend(self.backend)
        except InvalidInputError as exc:
            raise ConfigError(exc.problem, field=exc.field) from exc
        checks = [
            (1 <= self.port <= 65535 or self.port == 0, "port", "must be 0..65535"),
            (self.workers >= 1, "workers", "must be >= 1"),
            (1 <= self.http_threads <= 256, "http_threads", "must be 1..256"),
            (self.max_connections >= 1, "max_connections", "must be >= 1"),
            (0.1 <= self.header_timeout_s <= 3600, "header_timeout_s", "must be 0.1..3600"),
            (0.1 <= self.body_timeout_s <= 3600, "body_timeout_s", "must be 0.1..3600"),
            (self.control_timeout_s > 0, "control_timeout_s", "must be > 0"),
            (self.threads is None or self.threads >= 1, "threads", "must be >= 1"),
            (self.max_batch >= 1, "max_batch", "must be >= 1"),
            (0 <= self.max_delay_ms <= 1000, "max_delay_ms", "must be 0..1000"),
            (0 <= self.batch_min_call_us <= 1e6, "batch_min_call_us", "must be 0..1000000"),
            (self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024"),
            (self.max_held_body_bytes >= self.max_body_bytes, "max_held_body_bytes", "must be >= max_body_bytes"),
            (self.max_rows >= 1 and self.max_candidates >= 1 and self.max_events >= 1,
             "limits", "max_rows, max_candidates and max_events must be >= 1"),
            (self.request_timeout_s > 0, "request_timeout_s", "must be > 0"),
            (self.cache_ttl_s > 0 and self.cache_negative_ttl_s >= 0, "cache", "TTLs must be > 0"),
            (self.cache_max_entries >= 1, "cache_max_entries", "must be >= 1"),
            (self.attribution_window_s > 0, "attribution_window_s", "must be > 0"),
            (self.events_dedup_bytes >= 4096, "events_dedup_bytes", "must be >= 4096"),
            ((self.tls_cert is None) == (self.tls_key is None), "tls_key", "--tls-cert and --tls-key go together"),
            (self.events_spool_bytes >= 65536, "events_spool_bytes", "must be >= 65536"),
            ((self.events_spool_dir is None) == (self.user_key_file is None), "user_key_file",
             "--events-spool and --user-key-file go together"),
            (bool(self.recipient_key) == bool(self.recipient_id), "recipient_id",
             "--recipient-key and --recipient-id go together"),
            (0 <= self.log_flush_ms <= 10_000, "log_flush_ms", "must be 0..10000"),
            (self.log_level.lower() in LOG_LEVELS, "log_level", "one of " + ", ".join(LOG_LEVELS)),
            (self.log_format in LOG_FORMATS, "log_format", "one of " + ", ".join(LOG_FORMATS)),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(problem, field=name)
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ConfigError("experiment names must be unique", field="experiments")

    @property
    def batching(self) -> bool:
        return self.max_batch > 1 and self.max_delay_ms > 0

    def logs(self) -> LogSettings:
        """The log settings, for :meth:`LogSettings.apply` in each process."""
        return LogSettings(self.log_format, self.log_level, self.log_flush_ms, self.access_log)

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    # -- files ---------------------------------------------------------------

    @property
    def small_body_bytes(self) -> int:
        """The body of a request to any route but scoring (events, control calls): JSON documents of a few KB."""
        return min(self.max_body_bytes, SMALL_BODY_BYTES)

    def body_limit(self, path: str) -> int:
        """The largest body a route takes: ``max_body_bytes`` for scoring (infer, predict, rank),
        :attr:`small_body_bytes` for the others. The front reads no more of it; the app refuses more (413)
        by the Content-Length, unread, after its own checks (API key, control token)."""
        return self.max_body_bytes if _SCORING.fullmatch(path) else self.small_body_bytes

    @classmethod
    def file_values(cls, path: str | Path) -> dict[str, Any]:
        """Field values from a TOML or JSON settings file (relative paths: from its folder)."""
        p = Path(path)
        try:
            text = p.read_text()
            doc = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read ({exc.strerror})", field=str(p)) from exc
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"not valid {'JSON' if p.suffix == '.json' else 'TOML'} ({exc})",
                              field=str(p)) from exc
        if not isinstance(doc, dict):
            raise ConfigError("expected a table of sections", field=str(p))
        values: dict[str, Any] = {}
        for section, body in doc.items():
            if section == "experiments":
                values["experiments"] = parse_experiments(body)
                continue
            keys = _SECTIONS.get(section)
            if keys is None or not isinstance(body, dict):
                raise ConfigError(f"unknown section (expected {', '.join([*_SECTIONS, 'experiments'])})",
                                  field=section)
            for key, value in body.items():
                if key not in keys:
                    raise ConfigError(f"unknown setting (expected {', '.join(keys)})",
                                      field=f"{section}.{key}")
                try:
                    values[keys[key]] = _resolve(keys[key], value, p.parent)
                except ConfigError as exc:  # named as the file names it
                    raise ConfigError(exc.detail, field=f"{section}.{key}") from None
        return values

    # -- hand-over to worker processes ----------------------------------------

    def to_json(self) -> str:
        doc: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "experiments":
                v = [e.to_dict() for e in v]
            elif f.name == "response_key":
                v = v.hex() if v else None
            elif isinstance(v, Path):
                v = str(v)
            elif f.name == "trusted_keys":
                v = [str(k) for k in v]
            doc[f.name] = v
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        doc = json.loads(text)
        doc["experiments"] = parse_experiments(doc["experiments"])
        doc["trusted_keys"] = tuple(Path(k) for k in doc["trusted_keys"])
        doc["response_key"] = bytes.fromhex(doc["response_key"]) if doc["response_key"] else None
        for name in (*_PATHS, "run_dir"):
            if doc.get(name):
                doc[name] = Path(doc[name])
        return cls(**doc)


# Events, control calls and the rest are small documents: a body as large as a scoring request's is refused.
SMALL_BODY_BYTES = 1024 * 1024
_INTS = ("port", "workers", "http_threads", "max_connections", "threads", "max_batch", "max_body_bytes",
         "max_held_body_bytes", "max_rows", "max_candidates", "max_events", "cache_max_entries",
         "events_dedup_bytes", "events_spool_bytes")
_FLOATS = ("max_delay_ms", "batch_min_call_us", "request_timeout_s", "header_timeout_s", "body_timeout_s",
           "control_timeout_s", "cache_ttl_s", "cache_negative_ttl_s", "attribution_window_s", "log_flush_ms")
_BOOLS = ("access_log", "control_allow_remote")


def file_key(field: str) -> str | None:
    """Where a settings file sets ``field`` ("section.key"), to name it in errors; None if no file key does."""
    for section, keys in _SECTIONS.items():
        for key, name in keys.items():
            if name == field:
                return f"{section}.{key}"
    return None


def _resolve(name: str, value: Any, base: Path) -> Any:
    if name in _INTS and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError("expected an integer", field=name)
    if name in _FLOATS and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError("expected a number", field=name)
    if name in _BOOLS and not isinstance(value, bool):
        raise ConfigError("expected true or false", field=name)
    if name not in (*_INTS, *_FLOATS, *_BOOLS, "trusted_keys") and not isinstance(value, str):
        raise ConfigError("expected a string", field=name)
    if name in _FLOATS:
        return float(value)
    if name in _PATHS and isinstance(value, str):
        return base / value
    if name == "trusted_keys":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("expected a list of key file paths", field=name)
        return tuple(base / v for v in value)
    return value


def read_token(path: Path | None) -> str | None:
    """The control token from a file (stripped); an empty file, or one group or others may access, is refused."""
    if path is None:
        return None
    try:
        token = read_secret_text(path, "control token")
    except KeyFileError as exc:
        raise ConfigError(str(exc), field="control_token_file") from exc
    if len(token) < 16:
        raise ConfigError("the control token must be at least 16 characters", field="control_token_file")
    return token


__all__ = ["ServerConfig", "read_token"]
