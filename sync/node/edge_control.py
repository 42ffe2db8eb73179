"""The edge server, as the node daemon sees it: its control API, its metrics and its inference API.

``POST {edge}/control/v1/models/load {"path": ...}`` with a bearer token
answers 200 ``{"name", "version", "accelerator", "state": "serving"}`` or a
4xx ``{"error", "detail"}`` while the old version keeps serving;
``GET /control/v1/models`` lists what is loaded and which version serves.
The daemon reports that list, never what it believes it installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from edgerec.sync.protocol.errors import EdgeControlError


class EdgeUnreachableError(EdgeControlError):
    """The edge server did not answer (down, restarting, or not started yet)."""


class EdgeRefusedError(EdgeControlError):
    """The edge server answered with an error; ``kind`` is its error code."""

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class EdgeControl:
    def __init__(self, base_url: str, token: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {token}"})

    def _request(self, method: str, path: str, doc: dict[str, Any] | None = None,
                 timeout: float | None = None) -> httpx.Response:
        try:
            kw: dict[str, Any] = {"json": doc} if doc is not None else {}
            if timeout is not None:
                kw["timeout"] = timeout
            return self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise EdgeUnreachableError(f"edge server {self.base_url} unreachable: "
                                       f"{exc or type(exc).__name__}") from exc

    def _call(self, method: str, path: str, doc: dict[str, Any] | None = None, what: str = "request",
              timeout: float | None = None) -> Any:
        resp = self._request(method, path, doc, timeout)
        if resp.status_code >= 400:
            try:
                err = resp.json()
                kind, why = str(err.get("error")), f"{err.get('error')}: {err.get('detail')}"
            except ValueError:
                kind, why = "http_error", resp.text[:200]
            raise EdgeRefusedError(f"edge server refused the {what} (HTTP {resp.status_code}): {why}",
                                   resp.status_code, kind)
        try:
            return resp.json()
        except ValueError as exc:
            raise EdgeControlError(f"edge server: the answer to {path} is not JSON") from exc

    # -- control API -------------------------------------------------------------------

    def load(self, path: Path, serve: bool = True) -> dict[str, Any]:
        """Ask the edge server to load (and swap to, with ``serve``) the package at ``path``."""
        out = self._call("POST", "/control/v1/models/load", {"path": str(Path(path).resolve()), "serve": serve},
                         "model")
        if not isinstance(out, dict):
            raise EdgeControlError("edge server: unexpected answer to load")
        return out

    def forget_user(self, user_id: str) -> dict[str, Any]:
        """Erase a user's cached profile and assignments on every worker (``DELETE /v1/users/<id>``)."""
        out = self._call("DELETE", f"/v1/users/{quote(user_id, safe='')}", None, "erasure")
        if not isinstance(out, dict):
            raise EdgeControlError("edge server: unexpected answer to the erasure")
        return out

    def experiments(self) -> list[dict[str, Any]]:
        """The experiments the edge server runs (``GET /control/v1/experiments``)."""
        doc = self._call("GET", "/control/v1/experiments", timeout=10)
        found = doc.get("experiments") if isinstance(doc, dict) else None
        if not isinstance(found, list):
            raise EdgeControlError("edge server: /control/v1/experiments did not list experiments")
        return [e for e in found if isinstance(e, dict)]

    def set_experiment(self, doc: dict[str, Any]) -> None:
        """Run the experiment ``doc`` (name, model, salt, variants) on every worker."""
        self._call("PUT", f"/control/v1/experiments/{quote(str(doc['name']), safe='')}", doc, "experiment")

    def clear_experiment(self, name: str) -> None:
        self._call("DELETE", f"/control/v1/experiments/{quote(name, safe='')}", None, "experiment stop")

    def unload(self, name: str, version: int) -> None:
        self._call("POST", f"/control/v1/models/{name}/versions/{int(version)}/unload", {}, "unload")

    def models(self) -> list[dict[str, Any]]:
        doc = self._call("GET", "/control/v1/models", timeout=10)
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, list):
            raise EdgeControlError("edge server: /control/v1/models did not list models")
        return [m for m in models if isinstance(m, dict)]

    def serving(self) -> dict[str, dict[str, Any]]:
        """What serves now, by model name: ``{"version", "accelerator", ...}`` (raises when unreachable)."""
        out: dict[str, dict[str, Any]] = {}
        for m in self.models():
            if m.get("state") == "serving" and isinstance(m.get("name"), str) and isinstance(m.get("version"), int):
                out[m["name"]] = m
        return out

    def ready(self) -> bool:
        try:
            return self._request("GET", "/v2/health/ready", timeout=5).status_code == 200
        except EdgeUnreachableError:
            return False

    # -- data plane and metrics (what the health window watches) ------------------------

    def metrics(self) -> str:
        resp = self._request("GET", "/metrics", timeout=10)
        if resp.status_code != 200:
            raise EdgeControlError(f"edge server: /metrics answered HTTP {resp.status_code}")
        return resp.text

    def infer(self, name: str, version: int, inputs: Mapping[str, npt.NDArray[Any]],
              output: str) -> npt.NDArray[np.float64]:
        """Score raw inputs on one version over the Open Inference Protocol; the ``output`` tensor."""
        body = {"inputs": [_tensor(k, np.asarray(v)) for k, v in inputs.items()]}
        doc = self._call("POST", f"/v2/models/{name}/versions/{int(version)}/infer", body, "inference",
                         timeout=30)
        for out in doc.get("outputs", []) if isinstance(doc, dict) else []:
            if isinstance(out, dict) and out.get("name") == output:
                return np.asarray(out.get("data"), dtype=np.float64)
        raise EdgeControlError(f"edge server: the answer has no output {output!r}")

    def close(self) -> None:
        self.client.close()


_TYPES = {"U": "BYTES", "S": "BYTES", "O": "BYTES", "i": "INT64", "u": "INT64", "f": "FP32", "b": "BOOL"}


def _tensor(name: str, a: npt.NDArray[Any]) -> dict[str, Any]:
    kind = _TYPES.get(a.dtype.kind)
    if kind is None:
        raise EdgeControlError(f"probe input {name!r}: dtype {a.dtype} has no Open Inference Protocol type")
    data = [x.decode() if isinstance(x, bytes) else x for x in a.ravel().tolist()]
    return {"name": name, "shape": list(a.shape), "datatype": kind, "data": data}


# -- Prometheus text format (the few series the health window reads) ----------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the metric ``names`` from Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) not in names:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile`` over cumulative ``(le, count)`` buckets (linear within a bucket)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_le, lower_count = le, count
    return buckets[-1][0]


__all__ = ["EdgeControl", "EdgeRefusedError", "EdgeUnreachableError", "parse_metrics", "quantile"]
