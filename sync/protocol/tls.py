"""TLS settings node and admin clients share with the service."""

from __future__ import annotations

import ssl

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.keys import read_private_file

from .errors import ConfigError


def client_verify(ca_cert: str | None, client_cert: str | None = None,
                  client_key: str | None = None) -> ssl.SSLContext | bool:
    """httpx's ``verify``: a private CA bundle or the system's trust store, with this client's certificate
    and key when the service asks for one (mutual TLS; the key file must be 0600)."""
    if not ca_cert and not client_cert:
        return True
    try:
        context = ssl.create_default_context(cafile=ca_cert or None)
    except OSError as exc:  # ssl names neither the file nor, for PEM errors, what is wrong with it
        raise ConfigError(f"{ca_cert}: cannot use it as a CA bundle ({exc.strerror or exc})") from exc
    if client_cert:
        if not client_key:
            raise ConfigError("a client certificate needs its key (--client-key)")
        try:
            read_private_file(client_key)  # refused when group or others may read it
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            context.load_cert_chain(client_cert, client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{client_cert}: cannot use it with {client_key} as a client certificate "
                              f"({getattr(exc, 'strerror', None) or exc})") from exc
    return context
