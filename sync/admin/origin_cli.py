"""``edgerec admin repo-url``: the repository origin the fleet fetches from, and moving it (to a CDN, back)."""

from __future__ import annotations

from typing import Any

import click

from edgerec.sdk.cli.output import console, print_json
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.origin import API_ORIGIN, check_repo_url

from .client import AdminClient

_SOURCES = {"admin": "set with admin repo-url set", "serve": "sync serve --repo-url", "none": "none set"}


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(doc)
        return
    url = doc["repo_url"]
    shown = "none: nodes keep the origin they enrolled with" if url is None else (
        "the service's own /repository" if url == API_ORIGIN else url)
    console.print(f"repository origin: {shown} ({_SOURCES.get(doc['source'], doc['source'])})", markup=False)


def register(admin: click.Group, client: Any) -> None:
    """Add ``repo-url show|set`` to the ``edgerec admin`` group (``client(ctx)`` opens an AdminClient)."""

    @admin.group("repo-url")
    def repo_url() -> None:
        """The TUF repository origin nodes fetch from (signed into their assignments)."""

    @repo_url.command("show")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def show(ctx: click.Context, as_json: bool) -> None:
        """The origin nodes are told now, and where it comes from."""
        c: AdminClient
        with client(ctx) as c:
            doc = c.repo_url()
        _print(doc, as_json)

    @repo_url.command("set")
    @click.argument("url", required=False)
    @click.option("--api", is_flag=True, help="Nodes fetch from this service's own /repository.")
    @click.option("--clear", is_flag=True, help="Drop the setting: the sync serve --repo-url origin applies.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def set_cmd(ctx: click.Context, url: str | None, api: bool, clear: bool, as_json: bool) -> None:
        """Move the fleet to the origin at URL (http or https, serving the service's repository folder).

        Each node checks the new origin through TUF on its next cycle and switches only if it serves the
        repository, not older than the one it has; until then it keeps fetching from its current origin.
        """
        if (url is not None) + api + clear != 1:
            raise ConfigError("give exactly one of URL, --api or --clear")
        value = None if clear else API_ORIGIN if api else check_repo_url(str(url), "URL")
        c: AdminClient
        with client(ctx) as c:
            doc = c.set_repo_url(value)
        _print(doc, as_json)
