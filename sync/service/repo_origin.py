"""The repository origin the service names to its nodes, and the admin setting that changes it.

Nodes learn the origin (:mod:`edgerec.sync.protocol.origin`) from the
enrollment answer and then from every signed assignment (``repo_url``). It is
the admin's setting (``edgerec admin repo-url set``) when there is one, else
``sync serve --repo-url``, else none (nodes keep the origin they have). The
setting lives in the database so that every replica names the same origin;
each process reads it again at most every :data:`CACHE_S` seconds, so a change
reaches all replicas' answers within that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.origin import check_origin

from .store import Database
from .store.models import ServiceSetting

SETTING = "repo_url"
#: Seconds a process answers with the origin it read last (a check-in then costs no extra statement).
CACHE_S = 5.0


@dataclass(frozen=True)
class RepoOrigin:
    """The origin nodes are told: ``url`` (a URL, ``/repository``, or "" for none) and where it comes from."""

    url: str
    source: str  # "admin" (the database setting), "serve" (sync serve --repo-url) or "none"

    def to_dict(self) -> dict[str, str | None]:
        return {"repo_url": self.url or None, "source": self.source}


class RepoOriginSetting:
    """Reads (cached for :data:`CACHE_S`) and changes the admin's repository origin."""

    def __init__(self, db: Database, configured: str, cache_s: float = CACHE_S) -> None:
        self.db = db
        self.configured = configured
        self.cache_s = cache_s
        self._cached: tuple[float, RepoOrigin] | None = None
        self._lock = threading.Lock()

    def current(self, conn: Session | Connection | None = None) -> RepoOrigin:
        """The origin to name now (read on ``conn`` when the cached one is older than ``cache_s``)."""
        hit = self._cached
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        query = select(ServiceSetting.value).where(ServiceSetting.name == SETTING)
        if conn is None:
            with self.db.read() as session:
                stored = session.execute(query).scalar_one_or_none()
        else:
            stored = conn.execute(query).scalar_one_or_none()
        origin = self._resolve(stored)
        with self._lock:
            self._cached = (now, origin)
        return origin

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
                values = {"name": SETTING, "value": value, "updated": time.time()}
                session.execute(self.db.insert(ServiceSetting).values(**values).on_conflict_do_update(
                    index_elements=["name"], set_={"value": value, "updated": values["updated"]}))
        with self._lock:
            self._cached = None  # this process answers with the new origin at once
        return self._resolve(value)

    def _resolve(self, stored: str | None) -> RepoOrigin:
        if stored:
            return RepoOrigin(stored, "admin")
        if self.configured:
            return RepoOrigin(self.configured, "serve")
        return RepoOrigin("", "none")
