"""TLS settings node and admin clients share with the service."""

from __future__ import annotations

import ssl


def client_verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a private CA bundle, or the system's trust store."""
    return ssl.create_default_context(cafile=ca_cert) if ca_cert else True
