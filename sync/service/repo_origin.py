"""The repository origin the service names to its nodes, and the admin setting that changes it.

Nodes learn the origin (:mod:`edgerec.sync.protocol.origin`) from the
enrollment answer and then from every signed assignment (``repo_url``). It is
the admin's setting (``edgerec admin repo-url set``) when there is one, else
``sync serve --repo-url``, else none (nodes keep the origin they have). The
setting lives in the database, so every replica names the same origin; a
check-in reads it in the same statement as the node's assignments
(:data:`ORIGIN_COLUMN`), so no process answers with an origin the database
no longer holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select

from edgerec.sync.protocol.origin import check_origin

from .store import Database
from .store.models import ServiceSetting

SETTING = "repo_url"
#: The admin's origin (or NULL) as a column of another query: ``row.repo_origin``.
ORIGIN_COLUMN = (
    select(ServiceSetting.value).where(ServiceSetting.name == SETTING).scalar_subquery().label("repo_origin")
)


@dataclass(frozen=True)
class RepoOrigin:
    """The origin nodes are told: ``url`` (a URL, ``/repository``, or "" for none) and where it comes from."""

    url: str
    source: str  # "admin" (the database setting), "serve" (sync serve --repo-url) or "none"

    def to_dict(self) -> dict[str, str | None]:
        return {"repo_url": self.url or None, "source": self.source}


class RepoOriginSetting:
    """Reads and changes the admin's repository origin (``configured``: the ``sync serve --repo-url`` one)."""

    def __init__(self, db: Database, configured: str) -> None:
        self.db = db
        self.configured = configured

    def current(self) -> RepoOrigin:
        """The origin to name now."""
        with self.db.read() as session:
            stored = session.execute(select(ServiceSetting.value).where(ServiceSetting.name == SETTING))
            return self.resolve(stored.scalar_one_or_none())

    def set(self, url: str | None) -> RepoOrigin:
        """Store ``url`` (checked: :func:`~edgerec.sync.protocol.origin.check_origin`), or drop the setting
        with None (the ``sync serve --repo-url`` origin applies again); returns the origin now named."""
        value = None if url is None else check_origin(url, "repo_url")
        with self.db.write() as session:
            if value is None:
                row = session.get(ServiceSetting, SETTING)
                if row is not None:
                    session.delete(row)
            else:
                now = time.time()
                session.execute(self.db.insert(ServiceSetting).values(name=SETTING, value=value, updated=now)
                                .on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated": now}))
        return self.resolve(value)

    def resolve(self, stored: str | None) -> RepoOrigin:
        """The origin named given the admin's stored setting (None: not set)."""
        if stored:
            return RepoOrigin(stored, "admin")
        if self.configured:
            return RepoOrigin(self.configured, "serve")
        return RepoOrigin("", "none")
