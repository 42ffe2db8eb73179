"""The node's HTTP client: signed requests to the sync service's node API."""

from __future__ import annotations

import json
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.sdk.http_errors import OVERLOAD_STATUSES, answer_error, retry_after_seconds
from edgerec.sdk.tracing import client_span
from edgerec.sync.protocol.errors import ApiError, OverloadedError, ServerUnreachableError
from edgerec.sync.protocol.httpsig import RequestSigner
from edgerec.sync.protocol.tls import client_verify

USER_AGENT = "edgerec-node/0.1"
INSTRUMENTATION = "edgerec.sync.node"  # the node's spans (OpenTelemetry's instrumentation scope)


def error_of(resp: httpx.Response) -> ApiError:
    """An ApiError from a service error answer (``{"error", "detail", "field"}``); an overload refusal (503,
    429) is an :class:`OverloadedError` carrying its ``Retry-After``."""
    err = answer_error(resp.status_code, resp.content, resp.reason_phrase)
    if err.status in OVERLOAD_STATUSES:
        return OverloadedError(err.status, err.error, err.detail, err.field,
                               retry_after_seconds(resp.headers.get("Retry-After")))
    return ApiError(err.status, err.error, err.detail, err.field)


def http_client(base_url: str, ca_cert: str | None = None, timeout: float = 30.0, client_cert: str | None = None,
                client_key: str | None = None) -> httpx.Client:
    """The node's HTTP client: the service's CA (or the system's), and its client certificate under mutual TLS."""
    return httpx.Client(base_url=base_url, verify=client_verify(ca_cert, client_cert, client_key), timeout=timeout,
                        headers={"User-Agent": USER_AGENT})


def _route(path: str) -> str:
    """A span name without ids in it (the envelope route names a model and a version)."""
    return "/api/v1/node/envelopes" if path.startswith("/api/v1/node/envelopes/") else path


class NodeClient:
    """Calls the node API as one enrolled node."""

    def __init__(self, client: httpx.Client, node_id: str, signing_key: Ed25519PrivateKey) -> None:
        self.client = client
        self.node_id = node_id
        self.signer = RequestSigner(node_id, signing_key)

    def _call(self, method: str, path: str, doc: dict[str, Any] | None = None) -> Any:
        body = json.dumps(doc).encode() if doc is not None else b""
        url = str(self.client.base_url.join(path))
        headers = {"Content-Type": "application/json"} if doc is not None else {}
        headers = self.signer.sign(method, url, body, headers)
        # The trace context rides outside the signature: it names a trace, it grants nothing.
        with client_span(f"{method} {_route(path)}", INSTRUMENTATION, {"edgerec.node_id": self.node_id}) as tp:
            headers["traceparent"] = tp
            try:
                resp = self.client.request(method, url, content=body or None, headers=headers)
            except httpx.HTTPError as exc:
                raise ServerUnreachableError(f"{self.client.base_url}: {exc or type(exc).__name__}") from exc
            if resp.status_code >= 400:
                raise error_of(resp)
            return resp.json()

    def assignments(self) -> list[bytes]:
        return [a.encode() for a in self._call("GET", "/api/v1/node/assignments")["assignments"]]

    def checkin(self, report: dict[str, Any]) -> list[bytes]:
        """Send a status report and get the signed assignments back (one signed request)."""
        return [a.encode() for a in self._call("POST", "/api/v1/node/checkin", report)["assignments"]]

    def envelopes(self, model: str, version: int) -> list[bytes]:
        doc = self._call("GET", f"/api/v1/node/envelopes/{model}/{int(version)}")
        return [e.encode() for e in doc["envelopes"]]

    def report(self, doc: dict[str, Any]) -> dict[str, Any]:
        out = self._call("POST", "/api/v1/node/reports", doc)
        assert isinstance(out, dict)
        return out


def enroll_request(
    client: httpx.Client, token: str, signing_pem: bytes, recipient_pem: bytes, name: str | None
) -> dict[str, Any]:
    """POST the one-time token and the node's public keys; the answer holds id and root."""
    doc = {"token": token, "signing_key": signing_pem.decode(), "recipient_key": recipient_pem.decode(),
           "name": name}
    try:
        resp = client.post("/api/v1/enroll", json=doc)
    except httpx.HTTPError as exc:
        raise ServerUnreachableError(f"{client.base_url}: {exc or type(exc).__name__}") from exc
    if resp.status_code >= 400:
        raise error_of(resp)
    out = resp.json()
    assert isinstance(out, dict)
    return out
