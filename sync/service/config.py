"""Service settings: limits and lifetimes in one typed dataclass with safe defaults.

Checked once in the constructor (as python-tuf's ``UpdaterConfig``); any field
can be set from the environment as ``EDGEREC_SYNC_<FIELD>`` (Flask's
``from_prefixed_env`` convention).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.origin import check_repo_url

from .blob_url import S3Settings, blob_settings, parse_blob_url

ENV_PREFIX = "EDGEREC_SYNC_"


@dataclass(frozen=True)
class ServiceConfig:
    """Limits, lifetimes and intervals of the sync service (seconds and bytes)."""

    # uploads and request bodies
    max_upload_bytes: int = 1024**3
    max_report_bytes: int = 256 * 1024
    max_json_bytes: int = 64 * 1024
    # signed node requests: accepted age of a signature; seen nonces kept this long
    signature_max_age_s: int = 300
    clock_skew_s: int = 30
    # TUF metadata lifetimes; a role is re-signed once less than half is left
    root_expiry_s: int = 365 * 86400
    targets_expiry_s: int = 90 * 86400
    snapshot_expiry_s: int = 7 * 86400
    timestamp_expiry_s: int = 86400
    # a node's signed assignment
    assignment_expiry_s: int = 7 * 86400
    # enrollment tokens
    enroll_token_expiry_s: int = 86400
    # background work: refresh expiring metadata, forget old nonces
    maintenance_interval_s: float = 30.0
    # retention (retention.py): what the nodes sent is forgotten this long after it was received; a run
    # happens at most once per interval over every worker and replica of the database
    retention_reports_s: float = 30 * 86400
    retention_releases_s: float = 400 * 86400
    retention_ops_s: float = 14 * 86400
    retention_interval_s: float = 3600.0
    # a node is flagged stale after this many of its poll intervals without a signed request
    stale_intervals: int = 3
    # the poll interval assumed for a node that has not reported its own
    default_poll_interval_s: float = 30.0
    # waitress worker threads: few, as the GIL serialises Python work anyway (measured in
    # bench/sync.py: 4 beat 16 on tail latency); raise it for a remote, slow database
    threads: int = 4
    # overload: requests that may wait for one of those threads, for how long, and the Retry-After of a refusal
    shed_max_waiting: int = 64
    shed_max_wait_s: float = 0.5
    shed_retry_after_s: int = 10
    # fleet metrics (nodes' private releases): a figure needs this many nodes; the reports' test level;
    # noise-free (test only) releases are refused unless this is set
    metrics_min_nodes: int = 5
    metrics_alpha: float = 0.05
    metrics_accept_noise_free: bool = False
    # /metrics (fleet_gauges.py): a key's latest released window is looked for among the windows that
    # started this long ago or later; alerts there are judged from this long of operational windows
    # (the admin view judges a day's)
    metrics_export_lookback_s: float = 86400.0
    metrics_export_ops_s: float = 3600.0
    # alerts: p99 latency SLO (ms), error rate, score drift (PSI), silence and desired-version mismatch (s)
    alert_p99_ms: float = 250.0
    alert_error_rate: float = 0.01
    alert_psi: float = 0.2
    alert_min_requests: int = 100
    alert_silent_s: float = 900.0
    alert_mismatch_s: float = 3600.0
    # The public URL of the TUF repository's static origin (nginx or a CDN serving DIR/repository/:
    # URL/metadata/, URL/targets/), pinned in each enrollment answer; "" means this API's /repository.
    repo_url: str = ""
    # A stateless replica's object store for package ciphertexts, s3://bucket/prefix (blob_url.py); "" keeps
    # them in the database. Endpoint and credentials come from the standard AWS variables, never from here.
    blob_url: str = ""

    def __post_init__(self) -> None:
        # Errors carry the field's name; from_env and the CLI rename it to what the user wrote.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("str", str):
                continue
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"must be true or false, got {value!r}", field=f.name)
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"must be a number > 0, got {value!r}", field=f.name)
        if not self.metrics_alpha < 1:
            raise ConfigError(f"must be in (0, 1), got {self.metrics_alpha!r}", field="metrics_alpha")
        if self.timestamp_expiry_s > self.snapshot_expiry_s:
            raise ConfigError(f"must not exceed snapshot_expiry_s ({self.snapshot_expiry_s})",
                              field="timestamp_expiry_s")
        if self.repo_url:
            object.__setattr__(self, "repo_url", check_repo_url(self.repo_url, "repo_url"))
        if self.blob_url:
            parse_blob_url(self.blob_url, "blob_url")

    @property
    def blob_store(self) -> S3Settings | None:
        """The object store of :attr:`blob_url`, or None (package ciphertexts in the database)."""
        return blob_settings(self.blob_url, "blob_url")

    def with_changes(self, changes: dict[str, Any], names: Callable[[str], str]) -> ServiceConfig:
        """A copy with ``changes``; an error about one of them names it as ``names(field)`` says (its source)."""
        try:
            return replace(self, **changes)
        except ConfigError as exc:
            if exc.field in changes:
                raise ConfigError(exc.detail, field=names(exc.field)) from None
            raise

    @classmethod
    def from_env(cls, base: ServiceConfig | None = None) -> ServiceConfig:
        """``base`` (or the defaults) with ``EDGEREC_SYNC_*`` variables applied."""
        base = base or cls()
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if f.type in ("str", str):
                changes[f.name] = raw
                continue
            if f.type in ("bool", bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: {raw!r} is not true or false")
                changes[f.name] = raw.lower() in ("1", "true", "yes")
                continue
            try:
                changes[f.name] = float(raw) if f.type in ("float", float) else int(raw)
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}: {raw!r} is not a number") from exc
        return base.with_changes(changes, lambda name: ENV_PREFIX + name.upper())
