"""The edge server's control API, as the node daemon drives it.

``POST {edge}/control/v1/models/load {"path": ...}`` with a bearer token
answers 200 ``{"name", "version", "accelerator", "state": "serving"}`` or a
4xx ``{"error", "detail"}`` while the old version keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edgerec.sync.protocol.errors import EdgeControlError


class EdgeControl:
    def __init__(self, base_url: str, token: str, timeout: float = 120.0) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {token}"})

    def _call(self, method: str, path: str, doc: dict[str, Any] | None = None) -> Any:
        try:
            resp = self.client.request(method, path, json=doc)
        except httpx.HTTPError as exc:
            raise EdgeControlError(f"edge server {self.client.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()
                why = f"{err.get('error')}: {err.get('detail')}"
            except ValueError:
                why = resp.text[:200]
            raise EdgeControlError(f"edge server refused the model (HTTP {resp.status_code}): {why}")
        return resp.json()

    def load(self, path: Path) -> dict[str, Any]:
        """Ask the edge server to load (and swap to) the package at ``path``."""
        out = self._call("POST", "/control/v1/models/load", {"path": str(Path(path).resolve())})
        if not isinstance(out, dict):
            raise EdgeControlError("edge server: unexpected answer to load")
        return out

    def forget_user(self, user_id: str) -> dict[str, Any]:
        """Erase a user's cached profile and assignments on every worker (``DELETE /v1/users/<id>``)."""
        try:
            resp = self.client.delete(f"/v1/users/{quote(user_id, safe='')}")
        except httpx.HTTPError as exc:
            raise EdgeControlError(f"edge server {self.client.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 400:
            try:
                why = str(resp.json().get("detail"))
            except ValueError:
                why = resp.text[:200]
            raise EdgeControlError(f"edge server refused to erase the user (HTTP {resp.status_code}): {why}")
        out = resp.json()
        if not isinstance(out, dict):
            raise EdgeControlError("edge server: unexpected answer to the erasure")
        return out

    def models(self) -> Any:
        return self._call("GET", "/control/v1/models")

    def close(self) -> None:
        self.client.close()
