"""Secrets at the command line: from a file or an environment variable, never an argument.

An argument is visible to every user of the machine (``ps``, ``/proc/PID/cmdline``)
and lands in shell history. Commands that need a token take ``--token-file``
(a file only its owner may read) or an ``EDGEREC_*`` variable; the old
``--token`` stays as a hidden option that refuses with one line saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import click

from ..keys import read_secret_text

F = Callable[..., Any]


def refused_argument(flag: str, instead: str) -> Callable[[F], F]:
    """A hidden ``flag`` taking a value that refuses to run: secrets do not go on a command line."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            raise click.UsageError(f"{flag} would put a secret on the command line, where other users and the "
                                   f"shell history see it; use {instead}")
        return value

    return click.option(flag, hidden=True, expose_value=False, callback=refuse, is_eager=True)


def read_secret(path: Path | None, env: str, what: str) -> str | None:
    """The secret in ``path`` (owner-only file, whitespace stripped), else ``$env``, else None."""
    if path is not None:
        return read_secret_text(path, what)
    value = os.environ.get(env, "").strip()
    return value or None


def no_password_argument(flag: str, instead: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback for a URL option that refuses a URL with a password typed on the command line (``instead``
    says where it goes); the same URL from the option's environment variable passes. The URL is not echoed."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        source = ctx.get_parameter_source(param.name or "")
        if value and url_password(value) and source == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{flag}: this URL holds a password, which other users and the shell history "
                                   f"would see; {instead}")
        return value

    return check


def db_option(f: F) -> F:
    """``--db URL`` (env ``EDGEREC_DB_URL``); a URL with a password only from the environment."""
    check = no_password_argument("--db", "set EDGEREC_DB_URL, or leave the password to PGPASSWORD or ~/.pgpass")
    return click.option("--db", "db_url", default=None, envvar="EDGEREC_DB_URL", callback=check,
                        help="Database URL (default: the data dir's). Env: EDGEREC_DB_URL, the place for a "
                             "URL with a password.")(f)


# Query keys that carry a password: libpq's (password, sslpassword; psycopg and SQLAlchemy pass them on) and
# redis-py's (password).
_SECRET_KEYS = frozenset({"password", "sslpassword"})


def _secret_query(query: str) -> bool:
    return any(k.lower() in _SECRET_KEYS and v for k, v in parse_qsl(query, keep_blank_values=True))


def url_password(url: str) -> bool:
    """Whether a URL (a database URL, say) carries a password: ``user:password@``, or ``?password=``."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or _secret_query(parts.query)
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (in the user part and the query)."""
    try:
        parts = urlsplit(url)
        if not (parts.password or _secret_query(parts.query)):
            return url
    except ValueError:
        return url
    if parts.password:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if _secret_query(parts.query):
        pairs = [(k, "***" if k.lower() in _SECRET_KEYS and v else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(pairs, safe="*"))
    return parts.geturl()


__all__ = ["db_option", "no_password_argument", "read_secret", "redact_url", "refused_argument",
           "url_password"]
