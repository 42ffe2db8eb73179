"""The sync service's data plane: every operation the HTTP views hand over to.

Views (``api_*.py``) parse HTTP and call one method here; this module knows
nothing of Flask, so the same operations run from tests, the CLI or another
transport.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from edgerec.sdk.errors import PackageError
from edgerec.sdk.http_errors import RequestRefusedError, bounded
from edgerec.sdk.keys import public_key_from_pem
from edgerec.sdk.manifest import check_name
from edgerec.sync.protocol.assignments import Assignment as SignedAssignment
from edgerec.sync.protocol.assignments import sign_assignment
from edgerec.sync.protocol.errors import (
    BadRequestError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    ReplayError,
)
from edgerec.sync.protocol.httpsig import RequestVerifier
from edgerec.sync.service.store.models import (
    MAX_BIGINT,
    Assignment,
    ChannelTarget,
    Node,
    NodeFailure,
    NodeModel,
    Nonce,
    PackageVersion,
    Report,
    Rollout,
    WrappedKey,
)

from .blobs import Blobs, BlobStore
from .config import ServiceConfig
from .datadir import DataDir
from .db_blobs import DbBlobStore
from .enrollment import create_token, enroll
from .envelopes import seal_missing
from .experiments import RUNNING_COLUMN, experiment_versions, node_experiments
from .metrics import SyncMetrics
from .online_keys import OnlineKeys
from .publish import Publisher, PublishResult
from .repo_origin import ORIGIN_COLUMN, RepoOriginSetting
from .reports import ReportResult, store_report
from .retention import prune_due
from .rollout import Rollouts, RolloutSummary
from .s3_blobs import ReplicaBlobs, S3BlobStore
from .signed_cache import SignedAssignmentCache
from .store import Database, migrate
from .tokens import check_admin_token
from .tuf_repo import TufRepository

log = logging.getLogger("edgerec.sync")
_PRUNE_BATCH = 1000


def name_arg(value: object, what: str) -> str:
    """A model, channel or tag name from a request; 400 for anything else (path separators)."""
    try:
        return check_name(value, what)
    except PackageError as exc:
        raise BadRequestError(str(exc).removeprefix(f"{what}: "), field=what) from exc


@dataclass(frozen=True)
class AuthedNode:
    id: str
    status_digest: str | None
    # the node's assignment rows (as _ASSIGNMENTS reads them), when read with the node's key
    assignments: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    tags: list[str]
    root: bytes


class SyncService:
    """Everything one service process needs, built from a data directory, or from the database alone.

    With ``datadir`` None the service is a stateless replica: its online keys
    are ``keys`` (opened from the database with its replica key), package
    ciphertexts and TUF metadata are read from the database, and ``work_dir``
    (local, private to the replica) only spools uploads.
    """

    def __init__(self, datadir: DataDir | None, db: Database, config: ServiceConfig,
                 keys: OnlineKeys | None = None, work_dir: Path | None = None) -> None:
        self.datadir = datadir
        self.db = db
        self.config = config
        self.blobs: Blobs
        if datadir is None:
            if keys is None or work_dir is None:
                raise ValueError("a service without a data directory needs its keys and a work directory")
            self.keys, self.work_dir = keys, work_dir
            s3 = config.blob_store  # S3BlobStore imports boto3 only when a bucket is configured
            self.blobs = DbBlobStore(db, work_dir / "tmp") if s3 is None else S3BlobStore(db, work_dir / "tmp", s3)
        else:
            self.keys, self.work_dir = OnlineKeys(datadir.keys), datadir.root
            self.blobs = BlobStore(datadir.blobs, datadir.tmp)
        self.key_file: Path | None = None  # a stateless replica's own key file
        self.repo = TufRepository(db, datadir, self.keys, config)
        self.publisher = Publisher(db, self.repo, self.blobs, self.keys)
        self.rollouts = Rollouts(db, self._seal)
        self.verifier = RequestVerifier(config.signature_max_age_s, config.clock_skew_s)
        self.metrics = SyncMetrics(db)
        self._keys: dict[str, Ed25519PublicKey] = {}
        # A signature is reused for at most a minute (a tenth of the lifetime, if that is shorter).
        self.signed_docs = SignedAssignmentCache(min(60, config.assignment_expiry_s // 10))
        self.origin = RepoOriginSetting(db, config.repo_url)
        self._nonce_insert = db.insert(Nonce).on_conflict_do_nothing().returning(Nonce.nonce)

    @classmethod
    def open(cls, data_dir: Path, db_url: str | None = None, config: ServiceConfig | None = None) -> SyncService:
        """Open a data directory made by ``edgerec admin init``; migrate its database."""
        if (config or ServiceConfig()).blob_url:
            raise ConfigError("--blob-url is for a stateless replica (--db and --key-file); a data directory "
                              "keeps its packages in DIR/blobs")
        datadir = DataDir(Path(data_dir))
        db = Database(datadir.db_url(db_url), pool_size=(config or ServiceConfig()).threads)
        migrate(db)
        with db.read() as session:
            moved = session.execute(select(WrappedKey.kek_id).limit(1)).first() is not None
        if moved:
            db.dispose()
            # Its blobs and keys now live in the database; files written beside them would be missed.
            raise ConfigError("this database's state was moved into it ('sync migrate --to-database'): serve it "
                              "with --key-file (a stateless replica), not --data-dir")
        service = cls(datadir, db, config or ServiceConfig())
        service.keys.private("timestamp")  # fail at start, not at the first request
        service.repo.materialize_all()
        return service

    @classmethod
    def open_replica(cls, db_url: str, key_file: Path, work_dir: Path,
                     config: ServiceConfig | None = None) -> SyncService:
        """A stateless replica: the database (migrated) and this replica's own key file; nothing shared on disk."""
        from .replica_keys import database_keys

        config = config or ServiceConfig()
        db = Database(db_url, pool_size=config.threads)
        try:
            migrate(db)
            keys = database_keys(db, key_file)
            keys.private("timestamp")
        except BaseException:
            db.dispose()
            raise
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        service = cls(None, db, config, keys, work_dir)
        service.key_file = key_file
        return service

    @classmethod
    def open_any(cls, data_dir: Path | None, db_url: str | None, config: ServiceConfig,
                 key_file: Path | None = None, work_dir: Path | None = None) -> SyncService:
        """:meth:`open` a data directory, or :meth:`open_replica` when there is none (``--db`` and ``--key-file``)."""
        if data_dir is not None:
            if key_file is not None:
                raise ConfigError("--key-file is for a stateless replica: give it --db instead of --data-dir")
            return cls.open(data_dir, db_url, config)
        if not db_url or key_file is None or work_dir is None:
            raise ConfigError("give --data-dir, or --db and --key-file (a stateless replica)")
        return cls.open_replica(db_url, key_file, work_dir, config)

    def close(self) -> None:
        self.db.dispose()

    # -- maintenance ----------------------------------------------------------------

    def resign_after_restore(self, now: float | None = None) -> dict[str, int]:
        """Re-sign the online TUF roles past any version served before a backup was restored; role -> version."""
        now = time.time() if now is None else now
        with self.db.write() as session:
            written = self.repo.resign_past(session, int(now), now)
        self.repo.materialize(written)
        return {role: version for role, version, _ in written}

    def maintain(self, now: float | None = None) -> int:
        """Re-sign expiring metadata and forget nonces past the replay window."""
        now = time.time() if now is None else now
        written: list[Any] = []
        if self.repo.needs_refresh(now):
            with self.db.write() as session:
                written = self.repo.refresh(session, now)
            self.repo.materialize(written)
        horizon = now - self.config.signature_max_age_s - 2 * self.config.clock_skew_s
        with self.db.write() as session:
            # Keep what the nonces about to go say about when each node was last seen.
            seen = session.execute(
                select(Nonce.node_id, func.max(Nonce.created)).where(Nonce.created < horizon).group_by(Nonce.node_id)
            ).all()
            if seen:
                session.connection().execute(_SEEN, [{"nid": n, "t": t} for n, t in seen])
        # Small batches: each delete holds the write lock only briefly.
        while True:
            with self.db.write() as session:
                edge = session.execute(
                    select(Nonce.created).where(Nonce.created < horizon).order_by(Nonce.created)
                    .offset(_PRUNE_BATCH - 1).limit(1)
                ).scalar_one_or_none()
                session.execute(delete(Nonce).where(Nonce.created <= (horizon if edge is None else edge)))
            if edge is None:
                break
        self.step_outcome_gates(now)
        prune_due(self.db, self.config, now)  # retention: at most once per interval over every replica
        if isinstance(self.blobs, ReplicaBlobs):
            self.blobs.sweep_pending(now)  # uploads a killed replica left half written
        self.db.checkpoint()
        return len(written)

    def step_outcome_gates(self, now: float | None = None) -> int:
        """Fleet metrics (issue 10): advance, halt or hold the rollouts gated on outcomes."""
        from .fleet_metrics import policy_of
        from .gated_rollouts import step_gated

        with self.db.write() as session:
            return step_gated(session, self.rollouts, policy_of(self.config), now)

    # -- admin -------------------------------------------------------------------------

    def check_admin(self, token: str | None) -> None:
        with self.db.read() as session:
            check_admin_token(session, token)

    def create_enroll_token(self, tags: list[str], expires_s: float | None) -> dict[str, Any]:
        with self.db.write() as session:
            t = create_token(session, tags, expires_s or self.config.enroll_token_expiry_s)
        return {"token": t.token, "tags": t.tags, "expires": t.expires}

    def publish(self, chunks: Iterable[bytes], channel: str) -> PublishResult:
        upload, _sha, _size = self.blobs.receive(chunks, self.config.max_upload_bytes)
        try:
            return self.publisher.publish(upload, channel)
        finally:
            upload.unlink(missing_ok=True)

    def rollout(self, model: str, version: int, channel: str, percent: float, tags: list[str],
                max_failures: int | None = None, max_failure_percent: float | None = None) -> RolloutSummary:
        with self.db.write() as session:
            return self.rollouts.start(session, model, version, channel, percent, tags, max_failures,
                                       max_failure_percent)

    def pause(self, model: str) -> RolloutSummary:
        with self.db.write() as session:
            return self.rollouts.pause(session, model)

    def resume(self, model: str) -> RolloutSummary:
        with self.db.write() as session:
            return self.rollouts.resume(session, model)

    def rollback(self, model: str, version: int, channel: str | None) -> RolloutSummary:
        with self.db.write() as session:
            return self.rollouts.rollback(session, model, version, channel)

    def revoke(self, node_id: str) -> dict[str, Any]:
        with self.db.write() as session:
            node = session.get(Node, node_id)
            if node is None:
                raise NotFoundError(f"unknown node {node_id!r}")
            if node.revoked_at is None:
                node.revoked_at = time.time()
            return {"node_id": node.id, "revoked_at": node.revoked_at}

    def packages(self) -> list[dict[str, Any]]:
        with self.db.read() as session:
            rows = session.execute(
                select(PackageVersion, ChannelTarget)
                .join(ChannelTarget, ChannelTarget.package_id == PackageVersion.id)
                .order_by(PackageVersion.name, PackageVersion.version, ChannelTarget.channel)
            ).all()
            return [
                {"name": p.name, "version": p.version, "channel": c.channel, "target": c.target_path,
                 "sha256": p.blob_sha256, "size": p.size, "signer": p.signer, "published": c.created}
                for p, c in rows
            ]

    def nodes(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.db.read() as session:
            nodes = session.execute(select(Node).order_by(Node.enrolled)).scalars().all()
            seen = last_seen(session, nodes)
            desired = _by_node(session.execute(select(Assignment)).scalars())
            installed = _by_node(session.execute(select(NodeModel)).scalars())
            return [_node_doc(n, self._liveness(n, seen[n.id], now), desired.get(n.id, {}), installed.get(n.id, {}))
                    for n in nodes]

    def node(self, node_id: str, history: int = 50) -> dict[str, Any]:
        """One node: what it serves per model, its stale flag, and its failure history (newest first)."""
        node_id = name_arg(node_id, "node id")
        with self.db.read() as session:
            n = session.get(Node, node_id)
            if n is None:
                raise NotFoundError(f"unknown node {node_id!r}")
            seen = last_seen(session, [n])[n.id]
            desired = {a.model: a for a in session.execute(select(Assignment).where(Assignment.node_id == n.id))
                       .scalars()}
            installed = {r.model: r for r in session.execute(select(NodeModel).where(NodeModel.node_id == n.id))
                         .scalars()}
            failures = session.execute(
                select(NodeFailure).where(NodeFailure.node_id == n.id)
                .order_by(NodeFailure.at.desc(), NodeFailure.id.desc()).limit(history)
            ).scalars().all()
            doc = _node_doc(n, self._liveness(n, seen, time.time()), desired, installed)
            doc["failures"] = [{"model": f.model, "version": f.version, "reason": f.reason, "at": f.at,
                                "bad": f.bad, "received": f.received} for f in failures]
            return doc

    def _liveness(self, n: Node, seen: float | None, now: float) -> Liveness:
        interval = n.poll_interval_s or self.config.default_poll_interval_s
        stale_after = self.config.stale_intervals * interval
        return Liveness(seen, seen is None or now - seen > stale_after, stale_after, n.edge)

    def model_status(self, model: str) -> dict[str, Any]:
        model = name_arg(model, "model")
        with self.db.read() as session:
            known = session.execute(select(PackageVersion.id).where(PackageVersion.name == model)).first()
            if known is None:
                raise NotFoundError(f"unknown model {model!r}")
            cur = self.rollouts.current(session, model)
            rollouts = session.execute(
                select(Rollout).where(Rollout.model == model).order_by(Rollout.id)
            ).scalars().all()
            desired = {a.node_id: a for a in session.execute(
                select(Assignment).where(Assignment.model == model)).scalars()}
            installed = {r.node_id: r for r in session.execute(
                select(NodeModel).where(NodeModel.model == model)).scalars()}
            nodes = session.execute(select(Node).order_by(Node.enrolled)).scalars().all()
            seen = last_seen(session, nodes)
            now = time.time()
            rows = [
                _model_row(n, self._liveness(n, seen[n.id], now), desired.get(n.id), installed.get(n.id))
                for n in nodes if n.id in desired or n.id in installed
            ]
        return {
            "model": model,
            "rollout": None if cur is None else _rollout_doc(cur),
            "rollouts": [_rollout_doc(r) for r in rollouts],
            "nodes": rows,
        }

    def reports(self, kind: str | None, since: float, limit: int) -> list[dict[str, Any]]:
        with self.db.read() as session:
            q = select(Report).where(Report.received > since)
            if kind:
                q = q.where(Report.kind == kind)
            rows = session.execute(q.order_by(Report.received).limit(min(limit, 10_000))).scalars()
            return [{"node_id": r.node_id, "report_id": r.report_id, "kind": r.kind, "received": r.received,
                     "body": r.body} for r in rows]

    # -- nodes -------------------------------------------------------------------------

    def enroll(self, token: object, signing_key: object, recipient_key: object, name: object) -> Enrolled:
        with self.db.write() as session:
            node = enroll(session, token, signing_key, recipient_key, name)
            self.rollouts.place_new_node(session, node)  # seals envelopes for what it assigns
            root = self.repo.root_bytes(session)
            return Enrolled(node.id, list(node.tags), root)

    def _public_key(self, pem: str) -> Ed25519PublicKey:
        # Parsing a PEM costs more than the signature check; keys are immutable, so cache by PEM.
        key = self._keys.get(pem)
        if key is None:
            parsed = public_key_from_pem(pem, "ed25519")
            assert isinstance(parsed, Ed25519PublicKey)
            key = self._keys[pem] = parsed
        return key

    def authenticate(self, session: Session, method: str, url: str, headers: Any, body: bytes) -> str:
        """The id of the node that signed this request; refuses bad signatures, replays and revoked nodes."""
        return self.authenticate_node(session, method, url, headers, body).id

    def authenticate_node(self, session: Session | Connection, method: str, url: str, headers: Any, body: bytes,
                          with_assignments: bool = False) -> AuthedNode:
        """:meth:`authenticate`, with the node's last stored status digest (and its assignments).

        Every node request passes here, so it is two statements on the session's
        connection: read the node's key, record the nonce. The nonce row is also
        the node's "last seen" (see :func:`last_seen`), so the request writes
        nothing else. ``with_assignments`` reads the node's assignment rows in
        the same statement as its key (a check-in answers with them), used only
        once the signature verified.
        """
        conn = _connection(session)
        found: dict[str, Any] = {}

        asked: list[str] = []

        def lookup(kid: str) -> Ed25519PublicKey | None:
            asked.append(kid)
            if not _NODE_ID.match(kid):
                return None  # not a node id: no query with it
            rows = conn.execute(_NODE_KEY_ASSIGNMENTS if with_assignments else _NODE_KEY, {"id": kid}).all()
            if not rows:
                return None
            found[kid] = rows
            return self._public_key(rows[0].signing_key)

        try:
            verified = self.verifier.verify(method, url, headers, body, lookup)
            node_id = verified.key_id
            if found[node_id][0].revoked_at is not None:
                raise ForbiddenError(f"node {node_id} is revoked")
            now = time.time()
            # RETURNING rather than rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING.
            fresh = conn.execute(self._nonce_insert, {"node_id": node_id, "nonce": verified.nonce, "created": now})
            if fresh.first() is None:
                raise ReplayError("replayed request: this signature's nonce was already used")
        except RequestRefusedError as exc:
            reason = _signed_reason(exc, asked, found)
            # One bounded line, no secrets: never the signature, its input or any header value.
            log.warning("signed request refused (%s): node %s, %s %s: %s", reason,
                        bounded(asked[-1]) if asked else "-", method, bounded(urlsplit(url).path), bounded(str(exc)))
            exc.reason, exc.logged = reason, True  # for the service's error handler
            raise
        rows = found[node_id]
        assigned = tuple(r for r in rows if r.target_path is not None) if with_assignments else None
        return AuthedNode(node_id, rows[0].status_digest, assigned)

    def signed_assignments(self, session: Session | Connection, node_id: str,
                           rows: Sequence[Any] | None = None) -> list[str]:
        """The node's assignments, signed (:class:`.signed_cache.SignedAssignmentCache`: at most a minute ago).

        ``rows``: the node's assignment rows if already read in this transaction (else read here).
        """
        now = int(time.time())
        if rows is None:
            rows = _connection(session).execute(_ASSIGNMENTS, {"nid": node_id}).all()
        key, expiry = self.keys.assignment, self.config.assignment_expiry_s
        # The admin's origin setting comes in the same read as the assignments (a column of each row).
        repo_url = self.origin.resolve(rows[0].repo_origin).url if rows else ""

        def signer(a: Any, exps: tuple[Any, ...], extras: tuple[Any, ...]) -> Callable[[int], str]:
            def sign(issued: int) -> str:
                doc = SignedAssignment(node_id, a.model, a.version, a.channel, a.target_path, a.serial, a.rollback,
                                       issued, issued + expiry, exps, extras, repo_url)
                return sign_assignment(doc, key).decode()
            return sign

        out = []
        for a in rows:
            docs, extra_list = (node_experiments(session, node_id, a.model, a.version, a.channel)
                                if a.running_experiments else ([], []))
            exps, extras = tuple(docs), tuple(extra_list)
            # Keyed by everything the document says (experiments included, as JSON), so a change shows at once.
            content = (node_id, a.model, a.version, a.channel, a.target_path, a.serial, a.rollback,
                       json.dumps(docs, sort_keys=True), tuple((e.version, e.target) for e in extra_list), repo_url)
            out.append(self.signed_docs.get(content, now, signer(a, exps, extras)))
        return out

    def node_envelopes(self, session: Session, node_id: str, model: str, version: int) -> list[str]:
        """The node's key envelopes for a version assigned to it now (403 for any other, 404 if unknown)."""
        model = name_arg(model, "model")
        node = session.get(Node, node_id)
        assert node is not None
        package = _package(session, model, version) if version <= MAX_BIGINT else None
        if package is None:
            raise NotFoundError(f"unknown model version {model} {version}", field="version")
        assigned = session.get(Assignment, (node_id, model))
        if assigned is None or (assigned.version != version
                                and version not in experiment_versions(session, node_id, model)):
            raise ForbiddenError(f"{model} version {version} is not assigned to this node", field="version")
        envelopes, _ = seal_missing(session, self.keys.kek, node, package)
        return [e.decode() for e in envelopes]

    def _seal(self, session: Session, node_id: str, model: str, version: int) -> int:
        """Seal a node's envelopes for the version an assignment just gave it (the rollouts' sealer)."""
        node, package = session.get(Node, node_id), _package(session, model, version)
        if node is None or package is None or node.revoked_at is not None:
            return 0
        return seal_missing(session, self.keys.kek, node, package)[1]

    def report(self, session: Session, node: str | AuthedNode, doc: dict[str, Any]) -> ReportResult:
        if isinstance(node, str):
            digest = session.execute(select(Node.status_digest).where(Node.id == node)).scalar_one()
            node = AuthedNode(node, digest)
        result = store_report(self.db, session, node.id, node.status_digest, doc)
        self._failures_reported(session, result)
        return result

    def _failures_reported(self, session: Session, result: ReportResult) -> None:
        for model, version in result.new_bad:
            paused = self.rollouts.check_failures(session, model, version)
            if paused is not None:
                log.warning("%s: %s", model, paused.paused_reason)

    def checkin(self, method: str, url: str, headers: Any, body: bytes,
                parse: Callable[[bytes], dict[str, Any]]) -> Checkin:
        """A node's check-in: its signed status report in (``parse`` reads the body), its signed assignments out.

        Two statements when the status repeats the stored one (a heartbeat, the
        usual case): the node's key with its assignments, then the nonce, each
        committing on its own on PostgreSQL (:meth:`.Database.statement_connection`;
        one write transaction on SQLite). A changed status is stored in a
        transaction of its own; an ORM session joins it only when a reported
        failure may pause a rollout (and the assignments are read again after it).
        """
        with self.db.statement_connection() as conn:
            node = self.authenticate_node(conn, method, url, headers, body, with_assignments=True)
            doc = parse(body)
            if doc.get("kind") != "status":
                raise BadRequestError("a check-in carries a status report (kind 'status')", field="kind")
            rows = node.assignments
            with self.db.together(conn):
                result = store_report(self.db, conn, node.id, node.status_digest, doc)
                if result.new_bad:
                    with Session(bind=conn) as session:  # joins conn's transaction; commits nothing itself
                        self._failures_reported(session, result)
                        session.flush()
                    rows = None
            return Checkin(node.id, self.signed_assignments(conn, node.id, rows), result)


@dataclass(frozen=True)
class Checkin:
    """What a check-in answers: the node, its signed assignments, what became of its report."""

    node_id: str
    assignments: list[str]
    report: ReportResult


def _connection(session: Session | Connection) -> Connection:
    return session if isinstance(session, Connection) else session.connection()


def _signed_reason(exc: RequestRefusedError, asked: Sequence[str], found: dict[str, Any]) -> str:
    """The refusal reason label of a signed request (see :data:`.metrics.SIGNED_REASONS`)."""
    if isinstance(exc, ReplayError):
        return "replayed"
    if isinstance(exc, ForbiddenError):
        return "revoked"
    if not asked:
        return "unsigned" if "not signed" in exc.detail else "bad_signature"
    return "bad_signature" if asked[-1] in found else "unknown_node"


def _package(session: Session, model: str, version: int) -> PackageVersion | None:
    return session.execute(
        select(PackageVersion).where(PackageVersion.name == model, PackageVersion.version == version)
    ).scalar_one_or_none()


_NODE_ID = re.compile(r"^[a-z0-9]{1,32}$")
_NODE_KEY = select(Node.signing_key, Node.revoked_at, Node.status_digest).where(Node.id == bindparam("id"))
_ASSIGNED = (Assignment.model, Assignment.version, Assignment.channel, Assignment.serial, Assignment.rollback,
             ChannelTarget.target_path, ORIGIN_COLUMN, RUNNING_COLUMN)
_PACKAGE_OF = (PackageVersion.name == Assignment.model) & (PackageVersion.version == Assignment.version)
_TARGET_OF = (ChannelTarget.package_id == PackageVersion.id) & (ChannelTarget.channel == Assignment.channel)
_ASSIGNMENTS = (
    select(*_ASSIGNED).join(PackageVersion, _PACKAGE_OF).join(ChannelTarget, _TARGET_OF)
    .where(Assignment.node_id == bindparam("nid"))
    .order_by(Assignment.model)
)
# The node's key and its assignments in one statement: a row per assignment (the node's columns repeated),
# one row with NULL assignment columns for none; rows without a target are what _ASSIGNMENTS' inner joins drop.
_NODE_KEY_ASSIGNMENTS = (
    select(Node.signing_key, Node.revoked_at, Node.status_digest, *_ASSIGNED)
    .select_from(Node)
    .outerjoin(Assignment, Assignment.node_id == Node.id)
    .outerjoin(PackageVersion, _PACKAGE_OF)
    .outerjoin(ChannelTarget, _TARGET_OF)
    .where(Node.id == bindparam("id"))
    .order_by(Assignment.model)
)


_SEEN = (
    update(Node).where(Node.id == bindparam("nid"), or_(Node.last_seen.is_(None), Node.last_seen < bindparam("t")))
    .values(last_seen=bindparam("t"))
)


def last_seen(session: Session, nodes: Sequence[Node]) -> dict[str, float | None]:
    """When each node last made a signed request: its newest nonce, else the stored time.

    Nonces are pruned after the replay window; maintenance first copies their
    newest time into ``nodes.last_seen``.
    """
    recent = dict(session.execute(select(Nonce.node_id, func.max(Nonce.created)).group_by(Nonce.node_id)).all())
    return {n.id: max((t for t in (n.last_seen, recent.get(n.id)) if t is not None), default=None) for n in nodes}


def _by_node(rows: Iterable[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r.node_id, {})[r.model] = r
    return out


@dataclass(frozen=True)
class Liveness:
    """When a node was last seen, whether that is too long ago, and its edge server's state."""

    seen: float | None
    stale: bool
    stale_after_s: float
    edge: str | None


def _node_doc(
    n: Node, live: Liveness, desired: dict[str, Assignment], installed: dict[str, NodeModel]
) -> dict[str, Any]:
    models = sorted(set(desired) | set(installed))
    return {
        "node_id": n.id, "name": n.name, "tags": n.tags, "enrolled": n.enrolled, "last_seen": live.seen,
        "stale": live.stale, "stale_after_s": live.stale_after_s, "poll_interval_s": n.poll_interval_s,
        # None: no edge server that the node reports on (or an older node that does not say).
        "edge": n.edge, "serving": None if n.edge in (None, "none") else n.edge == "up",
        "revoked": n.revoked_at is not None, "accelerator": n.accelerator, "health": n.health,
        "models": [_model_row(n, live, desired.get(m), installed.get(m), m) for m in models],
    }


def _model_row(
    n: Node, live: Liveness, a: Assignment | None, r: NodeModel | None, model: str | None = None
) -> dict[str, Any]:
    failure = None
    if r is not None and r.failure_reason:
        failure = {"version": r.failure_version, "reason": r.failure_reason, "at": r.failure_at,
                   "bad": bool(r.failure_bad)}
    # What serves is what the node's edge server said it serves; an edge server that is down serves nothing.
    state = r.state if r else None
    serving = r.serving_version if r else None
    if n.edge == "down":
        state, serving = "not_serving", None
    return {
        "node_id": n.id, "name": n.name, "model": model or (a.model if a else r.model if r else None),
        "desired_version": a.version if a else None, "rollback": bool(a and a.rollback),
        "installed_version": r.installed_version if r else None, "serving_version": serving, "state": state,
        "edge": n.edge, "last_seen": live.seen, "stale": live.stale,
        "accelerator": (r.accelerator if r and r.accelerator else n.accelerator),
        "health": (r.health if r and r.health else n.health), "last_failure": failure,
        "revoked": n.revoked_at is not None,
    }


def _rollout_doc(r: Rollout) -> dict[str, Any]:
    return {"id": r.id, "version": r.version, "channel": r.channel, "percent": r.percent, "tags": r.tags,
            "state": r.state, "rollback": r.rollback, "created": r.created, "updated": r.updated,
            "max_failures": r.max_failures, "max_failure_percent": r.max_failure_percent,
            "paused_reason": r.paused_reason}


def summary_doc(s: RolloutSummary) -> dict[str, Any]:
    return asdict(s)

