"""The TUF repository of the service, kept in the database, served as files.

Every signed version of every role is a row of ``tuf_metadata``; changes run
inside one write transaction holding the ``repository`` lock, so several
service processes on one database produce one linear history. After commit
the new versions are written to ``repository/metadata`` as static files
(consistent snapshots: ``N.role.json``; only ``timestamp.json`` is
unversioned, and it is written last and never replaced by an older one), so a
CDN or object store can serve them. A stateless replica (no data directory)
writes no files: it serves every version from the table (:meth:`TufRepository.file`),
keeping what it read: a versioned file never changes, and ``timestamp.json``
and ``root.json`` (which every node polls with each check-in) are read again
at most once a second, or at once after this process changed them.

Roles: root (offline, threshold of admin keys), targets, snapshot and
timestamp (online keys), and one delegated role per channel,
``channel-<name>``, trusted for the paths ``<name>/*/*`` and signed with the
online ``channels`` key. python-tuf's :class:`tuf.repository.Repository`
provides the snapshot and timestamp logic; this module gives it storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.repository import Repository

from edgerec.sdk.files import write_atomic
from edgerec.sdk.manifest import check_name
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.service.store.models import TufMetadata

from .config import ServiceConfig
from .datadir import DataDir
from .online_keys import OnlineKeys
from .store import Database

log = logging.getLogger("edgerec.sync.tuf")

CHANNEL_PREFIX = "channel-"
TOP_LEVEL = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
Written = list[tuple[str, int, bytes]]
POLLED_TTL_S = 1.0  # how stale a replica's timestamp.json and root.json may be (another process's change)
VERSIONED_CACHE_BYTES = 16 << 20  # versioned metadata a replica keeps in memory


def channel_role(channel: str) -> str:
    """The delegated role that signs a channel's targets."""
    return CHANNEL_PREFIX + check_name(channel, "channel")


def target_path(channel: str, name: str, version: int) -> str:
    """A package version's TUF target path on a channel."""
    check_name(channel, "channel")
    check_name(name, "name")
    return f"{channel}/{name}/{int(version)}.edgepkg"


def metadata_filename(role: str, version: int) -> str:
    return "timestamp.json" if role == Timestamp.type else f"{version}.{role}.json"


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), UTC)


class _DbRepository(Repository):
    """python-tuf's Repository over the ``tuf_metadata`` table of one transaction."""

    def __init__(self, session: Session, keys: OnlineKeys, config: ServiceConfig, now: float) -> None:
        self.session = session
        self.keys = keys
        self.config = config
        self.now = now
        self.written: Written = []
        self.version_floor = 0  # see TufRepository.resign_past

    def _latest(self, role: str) -> TufMetadata | None:
        return self.session.execute(
            select(TufMetadata).where(TufMetadata.role == role).order_by(TufMetadata.version.desc()).limit(1)
        ).scalar_one_or_none()

    def latest_version(self, role: str) -> int:
        row = self._latest(role)
        return 0 if row is None else row.version

    def open(self, role: str) -> Metadata[Any]:
        row = self._latest(role)
        if row is not None:
            return Metadata.from_bytes(row.data)
        if role == Root.type:
            raise ConfigError("the repository has no root metadata; run 'edgerec admin init'")
        if role == Snapshot.type:
            return Metadata(Snapshot())
        if role == Timestamp.type:
            return Metadata(Timestamp())
        return Metadata(Targets())

    def expiry_s(self, role: str) -> int:
        if role == Snapshot.type:
            return self.config.snapshot_expiry_s
        if role == Timestamp.type:
            return self.config.timestamp_expiry_s
        return self.config.targets_expiry_s

    def close(self, role: str, md: Metadata[Any]) -> None:
        if role == Root.type:
            raise ConfigError("root metadata is signed offline by the admin keys")
        md.signed.version = max(self.latest_version(role) + 1, self.version_floor)
        md.signed.expires = _utc(self.now + self.expiry_s(role))
        md.sign(self.keys.signer(role))
        self.store(role, md.signed.version, md.to_bytes(), md.signed.expires.timestamp())

    def store(self, role: str, version: int, data: bytes, expires: float) -> None:
        self.session.add(TufMetadata(role=role, version=version, data=data, expires=expires, created=self.now))
        self.session.flush()
        self.written.append((role, version, data))

    def delegated_roles(self) -> list[str]:
        targets = self.targets()
        if targets.delegations is None or targets.delegations.roles is None:
            return []
        return list(targets.delegations.roles)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        roles = [Targets.type, *self.delegated_roles()]
        return {f"{r}.json": MetaFile(version=self.latest_version(r)) for r in roles}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(version=self.latest_version(Snapshot.type))


def _resign_online_roles(repo: _DbRepository) -> None:
    """A new version of every role below root: the channels, targets, snapshot and timestamp."""
    for role in repo.delegated_roles():
        with repo.edit_targets(role):
            pass
    with repo.edit_targets():
        pass
    repo.do_snapshot(force=True)
    repo.do_timestamp(force=True)


class TufRepository:
    """Changes to the TUF repository, and the static files they produce."""

    def __init__(self, db: Database, datadir: DataDir | None, keys: OnlineKeys, config: ServiceConfig) -> None:
        self.db = db
        self.datadir = datadir
        self.keys = keys
        self.config = config
        # A replica's reads of the table (see the module): name -> (read at, bytes or None), name -> bytes.
        self._polled: dict[str, tuple[float, bytes | None]] = {}
        self._versioned: OrderedDict[str, bytes] = OrderedDict()
        self._versioned_bytes = 0
        self._changes = 0  # this process's changes so far: a read begun before one is not kept
        self._cache_lock = threading.Lock()

    def _repo(self, session: Session, now: float | None = None) -> _DbRepository:
        self.db.lock(session, "repository")
        return _DbRepository(session, self.keys, self.config, time.time() if now is None else now)

    # -- changes (call inside db.write(); then materialize() what they return) ----------

    def bootstrap(self, session: Session, root_bytes: bytes) -> Written:
        """Store root v1 and sign the first targets, snapshot and timestamp."""
        repo = self._repo(session)
        if repo.latest_version(Root.type):
            raise ConfigError("the repository already has root metadata")
        root = Metadata[Root].from_bytes(root_bytes)
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
        repo.store(Root.type, root.signed.version, root_bytes, root.signed.expires.timestamp())
        with repo.edit_targets():
            pass
        repo.do_snapshot(force=True)
        repo.do_timestamp(force=True)
        return repo.written

    def add_root(self, session: Session, root_bytes: bytes) -> Written:
        """Store a new root version signed offline (a key rotation); checked as a client would."""
        repo = self._repo(session)
        current = repo.root()
        new = Metadata[Root].from_bytes(root_bytes)
        if new.signed.version != current.version + 1:
            raise ConfigError(f"new root must be version {current.version + 1}, got {new.signed.version}")
        current.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        repo.store(Root.type, new.signed.version, root_bytes, new.signed.expires.timestamp())
        # Online keys may have changed: re-sign everything below root with them.
        _resign_online_roles(repo)
        return repo.written

    def add_target(self, session: Session, channel: str, path: str, length: int, sha256: str) -> Written:
        """Add a target to a channel's role (delegating the channel first if new)."""
        repo = self._repo(session)
        role = channel_role(channel)
        if role not in repo.delegated_roles():
            with repo.edit_targets() as targets:
                if targets.delegations is None:
                    targets.delegations = Delegations(keys={}, roles={})
                assert targets.delegations.roles is not None
                targets.delegations.roles[role] = DelegatedRole(
                    role, [], 1, terminating=True, paths=[f"{channel}/*/*"]
                )
                targets.add_key(self.keys.public(role), role)
        with repo.edit_targets(role) as chan:
            chan.targets[path] = TargetFile(length, {"sha256": sha256}, path)
        repo.do_snapshot()
        repo.do_timestamp()
        return repo.written

    def resign_past(self, session: Session, floor: int, now: float | None = None) -> Written:
        """Re-sign every online role (channels, targets, snapshot, timestamp) at version ``floor`` or above.

        After a backup is restored, the repository may be older than what nodes
        saw: metadata signed after the backup was taken. A TUF client refuses a
        version below one it trusts (a rollback attack looks the same), so the
        restored service must sign past anything it could have signed since;
        the caller passes the current time in seconds, which no version counted
        up one by one reaches.
        """
        repo = self._repo(session, now)
        repo.version_floor = floor
        _resign_online_roles(repo)
        log.info("re-signed TUF metadata past version %d: %s", floor,
                 ", ".join(f"{r} v{v}" for r, v, _ in repo.written))
        return repo.written

    def refresh(self, session: Session, now: float | None = None) -> Written:
        """Re-sign every online role with less than half of its lifetime left."""
        repo = self._repo(session, now)
        expiring = self._expiring(session, repo.now)
        for role in [r for r in expiring if r.startswith(CHANNEL_PREFIX) or r == Targets.type]:
            with repo.edit_targets(role):
                pass
        repo.do_snapshot(force=Snapshot.type in expiring)
        repo.do_timestamp(force=Timestamp.type in expiring)
        if repo.written:
            log.info("refreshed TUF metadata: %s", ", ".join(f"{r} v{v}" for r, v, _ in repo.written))
        return repo.written

    # -- queries ----------------------------------------------------------------

    def _expiring(self, session: Session, now: float) -> list[str]:
        probe = _DbRepository(session, self.keys, self.config, now)
        latest = (
            select(TufMetadata.role, func.max(TufMetadata.version).label("v"))
            .group_by(TufMetadata.role)
            .subquery()
        )
        rows = session.execute(
            select(TufMetadata.role, TufMetadata.expires).join(
                latest, (TufMetadata.role == latest.c.role) & (TufMetadata.version == latest.c.v)
            )
        ).all()
        return [
            role for role, expires in rows
            if role != Root.type and expires - now < probe.expiry_s(role) / 2
        ]

    def needs_refresh(self, now: float | None = None) -> bool:
        """A cheap read-only check, so idle processes take no lock."""
        with self.db.read() as session:
            return bool(self._expiring(session, time.time() if now is None else now))

    def root_bytes(self, session: Session) -> bytes:
        row = _DbRepository(session, self.keys, self.config, 0)._latest(Root.type)
        if row is None:
            raise ConfigError("the repository has no root metadata; run 'edgerec admin init'")
        return row.data

    def latest(self, session: Session) -> Written:
        """The newest version of every role."""
        latest = (
            select(TufMetadata.role, func.max(TufMetadata.version).label("v"))
            .group_by(TufMetadata.role)
            .subquery()
        )
        rows = session.execute(
            select(TufMetadata.role, TufMetadata.version, TufMetadata.data).join(
                latest, (TufMetadata.role == latest.c.role) & (TufMetadata.version == latest.c.v)
            )
        ).all()
        return [(r, v, d) for r, v, d in rows]

    def file(self, name: str) -> bytes | None:
        """The bytes of one metadata file as the static folder names it (``N.role.json``,
        ``timestamp.json``, ``root.json``), from the database (or what this process read of it, see the
        module); None if there is none."""
        now = time.monotonic()
        with self._cache_lock:
            changes = self._changes
            polled = self._polled.get(name)
            if polled is not None and now - polled[0] < POLLED_TTL_S:
                return polled[1]
            kept = self._versioned.get(name)
            if kept is not None:
                self._versioned.move_to_end(name)
                return kept
        data = self._read_file(name)
        with self._cache_lock:
            if name in ("timestamp.json", "root.json"):
                if changes == self._changes:  # else it may predate this process's change: not kept
                    self._polled[name] = (now, data)
            elif data is not None and len(data) <= VERSIONED_CACHE_BYTES // 4 and name not in self._versioned:
                self._versioned[name] = data
                self._versioned_bytes += len(data)
                while self._versioned_bytes > VERSIONED_CACHE_BYTES:
                    self._versioned_bytes -= len(self._versioned.popitem(last=False)[1])
        return data

    def _read_file(self, name: str) -> bytes | None:
        if name in ("timestamp.json", "root.json"):
            role, version = name.removesuffix(".json"), None
        else:
            m = _VERSIONED.match(name)
            if m is None:
                return None
            role, version = m[2], int(m[1])
        if role == Timestamp.type and version is not None:
            return None  # consistent snapshots: only the unversioned timestamp.json
        q = select(TufMetadata.data).where(TufMetadata.role == role)
        q = q.order_by(TufMetadata.version.desc()).limit(1) if version is None else q.where(
            TufMetadata.version == version)
        with self.db.read() as session:
            return session.execute(q).scalar_one_or_none()

    # -- files --------------------------------------------------------------------

    @contextlib.contextmanager
    def _file_lock(self, datadir: DataDir) -> Iterator[None]:
        # Processes on one data dir write files in turn, so an older timestamp
        # can never replace a newer one.
        datadir.lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(datadir.lock_file, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def materialize(self, written: Written) -> None:
        """Write committed metadata versions as files; timestamp last, never backwards (without files: serve
        them from the table at once)."""
        if not written:
            return
        if self.datadir is None:
            with self._cache_lock:
                self._changes += 1
                self._polled.clear()
            return
        folder = self.datadir.metadata
        folder.mkdir(parents=True, exist_ok=True)
        order = {Root.type: 0, Timestamp.type: 2}
        with self._file_lock(self.datadir):
            for role, version, data in sorted(written, key=lambda w: (order.get(w[0], 1), w[1])):
                path = folder / metadata_filename(role, version)
                if role == Timestamp.type:
                    if _file_version(path) >= version:
                        continue
                elif path.exists():
                    continue
                write_atomic(path, data, mode=0o644)
                if role == Root.type:
                    write_atomic(folder / "root.json", data, mode=0o644)

    def materialize_all(self) -> None:
        """Write the newest version of every role (a service start heals a crash)."""
        if self.datadir is None:
            return
        with self.db.read() as session:
            written = self.latest(session)
            # Clients walk root versions one by one from the root they pinned.
            roots = session.execute(
                select(TufMetadata.version, TufMetadata.data).where(TufMetadata.role == Root.type)
            ).all()
        self.materialize(written + [(Root.type, v, d) for v, d in roots])


_VERSIONED = re.compile(r"^([1-9][0-9]{0,17})\.([A-Za-z0-9_.-]{1,128})\.json$")


def _file_version(path: Path) -> int:
    try:
        return int(json.loads(path.read_bytes())["signed"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def expires_in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


__all__ = ["CHANNEL_PREFIX", "TufRepository", "channel_role", "expires_in", "metadata_filename", "target_path"]
