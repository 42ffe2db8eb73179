"""Where nodes fetch the TUF repository: the service's own ``/repository`` or a static origin.

A static origin (nginx, a CDN, an object-store website) serves the files the
service writes under ``DIR/repository``: ``URL/metadata/*.json`` and
``URL/targets/*``. TUF makes the origin untrusted: a node verifies every file
against its pinned root, so an origin can withhold updates (which timestamp
expiry bounds) but never change one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import ConfigError

MAX_URL_CHARS = 2048


def check_repo_url(url: str, field: str = "repo_url") -> str:
    """``url`` as a repository base (http or https, a host, no query or fragment, no trailing slash)."""
    if len(url) > MAX_URL_CHARS:
        raise ConfigError(f"{field}: longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{field}: expected an http(s) URL without query or fragment, got {url!r}")
    return url.rstrip("/")


def repository_urls(repo_url: str) -> tuple[str, str]:
    """(metadata URL, targets URL), each ending in a slash, as python-tuf's Updater takes them."""
    base = check_repo_url(repo_url)
    return base + "/metadata/", base + "/targets/"


__all__ = ["check_repo_url", "repository_urls"]
