"""TLS settings node and admin clients share with the service."""

from __future__ import annotations

import ssl

from .errors import ConfigError


def client_verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for a private CA bundle, or the system's trust store."""
    if not ca_cert:
        return True
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except OSError as exc:  # ssl names neither the file nor, for PEM errors, what is wrong with it
        raise ConfigError(f"{ca_cert}: cannot use it as a CA bundle ({exc.strerror or exc})") from exc
