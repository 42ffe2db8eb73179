"""The admin's HTTP client for the sync service, and where its credentials come from.

Server URL and admin token come from, in order: explicit arguments, the
environment (``EDGEREC_SERVER``, ``EDGEREC_ADMIN_TOKEN``, ``EDGEREC_CA_CERT``)
and the credentials file (``EDGEREC_ADMIN_CONFIG`` or
``~/.config/edgerec/admin.json``), which must be mode 0600 as it holds the
token. Every failure becomes one :class:`~.errors.SyncError` with a one-line
message.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from edgerec.sdk.files import write_atomic
from edgerec.sync.node.client import error_of
from edgerec.sync.protocol.errors import ConfigError, ServerUnreachableError
from edgerec.sync.protocol.tls import client_verify

CONFIG_ENV, SERVER_ENV, TOKEN_ENV, CA_ENV = (
    "EDGEREC_ADMIN_CONFIG", "EDGEREC_SERVER", "EDGEREC_ADMIN_TOKEN", "EDGEREC_CA_CERT",
)
DEFAULT_SERVER = "http://127.0.0.1:8470"
_CHUNK = 256 * 1024


def default_config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgerec" / "admin.json"


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str
    ca_cert: str | None = None
    client_cert: str | None = None  # mutual TLS: certificate and key files
    client_key: str | None = None


def save_credentials(creds: Credentials, path: Path | None = None) -> Path:
    """Write the credentials file with mode 0600 (never readable by others, even briefly)."""
    path = path or default_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(asdict(creds), indent=2).encode(), mode=0o600)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: holds the admin token but is readable by others; run: chmod 600 {path}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable credentials file ({exc})") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return doc


def load_credentials(
    path: Path | None = None, server: str | None = None, token: str | None = None
) -> Credentials:
    """Credentials from arguments, then environment, then the file."""
    path = path or default_config_path()
    doc = _read_file(path)
    server = server or os.environ.get(SERVER_ENV) or doc.get("server")
    token = token or os.environ.get(TOKEN_ENV) or doc.get("token")
    ca = os.environ.get(CA_ENV) or doc.get("ca_cert")
    if not server:
        raise ConfigError(f"no server URL: set {SERVER_ENV} or run 'edgerec admin login' ({path})")
    if not token:
        raise ConfigError(f"no admin token: set {TOKEN_ENV} or run 'edgerec admin login' ({path})")
    cert, key = doc.get("client_cert"), doc.get("client_key")
    return Credentials(str(server).rstrip("/"), str(token), ca, str(cert) if cert else None,
                       str(key) if key else None)


class AdminClient:
    """One method per admin API call; answers are the service's JSON documents."""

    def __init__(self, creds: Credentials, timeout: float = 120.0) -> None:
        self.creds = creds
        self.client = httpx.Client(
            base_url=creds.server, timeout=timeout,
            verify=client_verify(creds.ca_cert, creds.client_cert, creds.client_key),
            headers={"Authorization": f"Bearer {creds.token}", "User-Agent": "edgerec-admin/0.1"},
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            raise ServerUnreachableError(f"cannot reach the sync service at {self.creds.server}: {why}") from exc
        if resp.status_code >= 400:
            raise error_of(resp)
        return resp.json()

    def whoami(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/admin/whoami"))

    def create_enroll_token(self, tags: list[str], expires_s: float | None) -> dict[str, Any]:
        return dict(self._call("POST", "/api/v1/admin/enroll-tokens", json={"tags": tags, "expires_s": expires_s}))

    def publish(self, pkg: Path, channel: str, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        try:
            size = pkg.stat().st_size
        except OSError as exc:
            raise ConfigError(f"{pkg}: cannot read ({exc.strerror})") from exc

        def chunks() -> Iterator[bytes]:
            with open(pkg, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        return dict(self._call("POST", "/api/v1/admin/packages", params={"channel": channel},
                               content=chunks(), headers=headers))

    def packages(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/admin/packages")["packages"])

    def rollout(self, model: str, version: int, channel: str, percent: float, tags: list[str],
                max_failures: int | None = None, max_failure_percent: float | None = None) -> dict[str, Any]:
        doc = {"model": model, "version": version, "channel": channel, "percent": percent, "tags": tags,
               "max_failures": max_failures, "max_failure_percent": max_failure_percent}
        return dict(self._call("POST", "/api/v1/admin/rollouts", json=doc))

    def pause(self, model: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/admin/models/{model}/pause"))

    def resume(self, model: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/admin/models/{model}/resume"))

    def rollback(self, model: str, version: int, channel: str | None) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/admin/models/{model}/rollback",
                               json={"version": version, "channel": channel}))

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/admin/nodes")["nodes"])

    def node(self, node_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/admin/nodes/{node_id}"))

    def status(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/admin/models/{model}"))

    def revoke(self, node_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/admin/nodes/{node_id}/revoke"))

    def reports(self, kind: str | None = None, since: float = 0, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since, "limit": limit}
        if kind:
            params["kind"] = kind
        return list(self._call("GET", "/api/v1/admin/reports", params=params)["reports"])

    def prune(self) -> dict[str, Any]:
        return dict(self._call("POST", "/api/v1/admin/prune"))

    def repo_url(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/admin/repo-url"))

    def set_repo_url(self, url: str | None) -> dict[str, Any]:
        """Set the fleet's repository origin (a URL or ``/repository``); None drops the admin setting."""
        return dict(self._call("PUT", "/api/v1/admin/repo-url", json={"repo_url": url}))

    # -- fleet metrics (issue 10) ------------------------------------------------------

    def ab_report(self, experiment: str, variants: list[str] | None = None, control: str | None = None,
                  since: float = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"since": since}
        if variants:
            params["variants"] = ",".join(variants)
        if control:
            params["control"] = control
        return dict(self._call("GET", f"/api/v1/admin/experiments/{experiment}/report", params=params))

    def fleet_metrics(self, model: str | None = None, since: float = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"since": since}
        if model:
            params["model"] = model
        return dict(self._call("GET", "/api/v1/admin/fleet-metrics", params=params))

    def create_experiment(self, name: str, model: str, variants: list[dict[str, Any]], tags: list[str],
                          salt: str | None) -> dict[str, Any]:
        doc = {"name": name, "model": model, "variants": variants, "tags": tags, "salt": salt}
        return dict(self._call("POST", "/api/v1/admin/experiments", json=doc))

    def experiments(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/admin/experiments")["experiments"])

    def stop_experiment(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/api/v1/admin/experiments/{name}/stop"))

    def alerts(self) -> dict[str, Any]:
        return dict(self._call("GET", "/api/v1/admin/alerts"))

    def ops_metrics(self, windows: int = 12, model: str | None = None, node: str | None = None,
                    max_nodes: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"windows": windows, "max_nodes": max_nodes}
        if model:
            params["model"] = model
        if node:
            params["node"] = node
        return dict(self._call("GET", "/api/v1/admin/ops-metrics", params=params))

    def gated_rollout(self, model: str, version: int, channel: str, phases: list[float], gates: list[str],
                      tags: list[str], alpha: float = 0.05, max_windows: int = 24) -> dict[str, Any]:
        doc = {"model": model, "version": version, "channel": channel, "phases": phases, "gates": gates,
               "tags": tags, "alpha": alpha, "max_windows": max_windows}
        return dict(self._call("POST", "/api/v1/admin/gated-rollouts", json=doc))

    def gated_rollouts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/admin/gated-rollouts")["gated_rollouts"])
