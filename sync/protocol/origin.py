"""Where nodes fetch the TUF repository: the service's own ``/repository`` or a static origin.

A static origin (nginx, a CDN, an object-store website) serves the files the
service writes under ``DIR/repository``: ``URL/metadata/*.json`` and
``URL/targets/*``. TUF makes the origin untrusted: a node verifies every file
against its pinned root, so an origin can withhold updates (which timestamp
expiry bounds) but never change one.

The origin nodes use is part of the service's signed configuration: the
enrollment answer names it, and every signed assignment carries it as
``repo_url`` (an origin's URL, or :data:`API_ORIGIN` for the service's own
``/repository``), so an operator can move the fleet to another origin (a CDN)
with ``edgerec admin repo-url set`` and each node follows on its next cycle
once the new origin serves the repository.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from .errors import ConfigError

MAX_URL_CHARS = 2048
#: ``repo_url`` meaning "the service's own ``/repository``", relative to the service URL a node talks to.
API_ORIGIN = "/repository"


def split_plain_url(url: str, field: str, no_credentials: str) -> SplitResult:
    """``url`` split, once it is known to be short, printable and free of a user name or password (a URL
    that is stored, logged or shown in errors); ConfigError naming ``field`` otherwise, ``no_credentials``
    saying where credentials belong."""
    if len(url) > MAX_URL_CHARS:
        raise ConfigError(f"longer than {MAX_URL_CHARS} characters", field=field)
    # urlsplit drops tabs and newlines silently; a stored, logged URL must not hold them.
    if not url.isprintable() or " " in url:
        raise ConfigError("a URL must not hold spaces or control characters", field=field)
    parts = urlsplit(url)
    # Checked before any error that shows the URL.
    if "@" in parts.netloc:
        raise ConfigError(no_credentials, field=field)
    return parts


def check_repo_url(url: str, field: str = "repo_url") -> str:
    """``url`` as a repository base (http or https, a host, no query or fragment, no trailing slash)."""
    # No credentials in a URL that is signed into every node's assignments.
    parts = split_plain_url(url, field, "a repository URL must not hold a user name or password")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"expected an http(s) URL without query or fragment, got {url!r}", field=field)
    return url.rstrip("/")


def check_origin(value: str, field: str = "repo_url") -> str:
    """A signed ``repo_url``: :data:`API_ORIGIN`, or a checked repository base (:func:`check_repo_url`)."""
    return API_ORIGIN if value == API_ORIGIN else check_repo_url(value, field)


def origin_urls(origin: str, server: str) -> tuple[str, str]:
    """(metadata URL, targets URL) of ``origin`` (:func:`check_origin`) for a node of the service at ``server``."""
    if check_origin(origin) == API_ORIGIN:
        base = server.rstrip("/") + API_ORIGIN
        return base + "/metadata/", base + "/targets/"
    return repository_urls(origin)


def repository_urls(repo_url: str) -> tuple[str, str]:
    """(metadata URL, targets URL), each ending in a slash, as python-tuf's Updater takes them."""
    base = check_repo_url(repo_url)
    return base + "/metadata/", base + "/targets/"


__all__ = ["API_ORIGIN", "check_origin", "check_repo_url", "origin_urls", "repository_urls"]
