"""A node's state directory: its keys, identity, pinned root, and one SQLite file of what it knows.

::

    DIR/keys/signing.key      Ed25519, signs requests (0600; never leaves the node)
    DIR/keys/recipient.key    X25519, opens model key envelopes (0600)
    DIR/node.json             node id, server and repository URLs (0600; the repository URLs
                              follow the signed assignments, see :mod:`.origin`)
    DIR/root.json             the TUF root pinned at enrollment (the trust anchor)
    DIR/node.db               SQLite: accepted assignments, installs, failures, bad versions,
                              activations in progress, the report queue, settings
    DIR/control.token         the edge server's control token (0600, made by ``node run --serve``)
    DIR/keys/user.key         the key of user fingerprints in the event spool (0600)
    DIR/events/               the edge server's event spool (:mod:`.event_spool`)
    DIR/privacy.sqlite        the privacy budget ledger (:mod:`.privacy`)
    DIR/daemon.lock           held (flock) by a running daemon
    DIR/tuf/                  TUF metadata cache (python-tuf's Updater)
    DIR/targets/              verified target files (ciphertext packages)
    DIR/partial/              interrupted downloads, resumed with HTTP ranges
    DIR/trust/<keyid>.pub     the publisher keys the verified TUF root trusts, for the edge
                              server's ``--trusted-key`` (rewritten when the root rotates them)

What serves is not in the database: it is the model directory's ``current``
pointers (:mod:`edgerec.sdk.modeldir`). The ``installed`` table only adds
when and on which accelerator a version was activated.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.sdk.files import make_dirs, private_sqlite_file, write_atomic
from edgerec.sdk.keys import generate_keypair, load_recipient_key, load_signing_key, public_pem, read_secret_text
from edgerec.sync.protocol.assignments import Accepted
from edgerec.sync.protocol.errors import ConfigError

#: Sent reports kept in the queue table (for ``node status`` and tests); older ones go.
KEEP_SENT_REPORTS = 200
#: Unsent reports kept while the service is unreachable; the oldest go first past this.
MAX_PENDING_REPORTS = 10_000
SCHEMA = 1


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    server: str
    metadata_url: str
    targets_url: str
    tags: list[str] = field(default_factory=list)
    ca_cert: str | None = None
    # Mutual TLS: this node's certificate and key files (kept where the operator put them).
    client_cert: str | None = None
    client_key: str | None = None


@dataclass
class Installed:
    version: int
    path: str
    at: float
    accelerator: str | None = None


@dataclass
class Failure:
    version: int | None
    reason: str
    at: float
    bad: bool = False  # the version is marked bad on this node: it is not tried again


@dataclass(frozen=True)
class QueuedReport:
    seq: int
    report_id: str
    body: dict[str, Any]
    created: float
    sent_at: float | None


_TABLES = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accepted (model TEXT PRIMARY KEY, serial INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS installed (model TEXT PRIMARY KEY, version INTEGER NOT NULL, path TEXT NOT NULL,
    at REAL NOT NULL, accelerator TEXT);
CREATE TABLE IF NOT EXISTS failures (model TEXT PRIMARY KEY, version INTEGER, reason TEXT NOT NULL,
    at REAL NOT NULL, bad INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bad_versions (model TEXT NOT NULL, version INTEGER NOT NULL, reason TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS activations (model TEXT PRIMARY KEY, version INTEGER NOT NULL, started REAL NOT NULL,
    attempts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reports (seq INTEGER PRIMARY KEY AUTOINCREMENT, report_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL, created REAL NOT NULL, sent_at REAL);
CREATE INDEX IF NOT EXISTS reports_unsent ON reports (sent_at, seq);
CREATE TABLE IF NOT EXISTS forget_requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL,
    files TEXT NOT NULL, at REAL NOT NULL);
"""


_REPORTS = "SELECT seq, report_id, body, created, sent_at FROM reports"


class NodeDB:
    """The node's durable state in one SQLite file (rollback journal, ``synchronous=FULL``).

    Every method is one transaction; a kill at any point leaves the state
    before or after it. One connection, guarded by a lock (the daemon has
    one thread that writes; the CLI reads).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_dirs(self.path.parent)
        private_sqlite_file(str(self.path))  # 0600 before SQLite opens it: it holds erasure requests
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA synchronous=FULL")
        # Erasure: deleted rows (a user's fingerprint in a forget request) are overwritten, not left in free pages.
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.executescript(_TABLES)
        with self.tx() as c:
            c.execute("INSERT OR IGNORE INTO settings VALUES ('schema', ?)", (str(SCHEMA),))
            found = int(c.execute("SELECT value FROM settings WHERE key='schema'").fetchone()[0])
        if found > SCHEMA:
            raise ConfigError(f"{self.path}: state schema {found} is newer than this node knows ({SCHEMA})")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- settings ------------------------------------------------------------------

    def setting(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM settings WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (key, value))

    # -- assignments, installs, failures --------------------------------------------

    def accepted(self) -> dict[str, Accepted]:
        return {m: Accepted(s, v) for m, s, v in self._rows("SELECT model, serial, version FROM accepted")}

    def set_accepted(self, model: str, a: Accepted) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO accepted VALUES (?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                      "serial=excluded.serial, version=excluded.version", (model, a.serial, a.version))

    def installed(self) -> dict[str, Installed]:
        rows = self._rows("SELECT model, version, path, at, accelerator FROM installed")
        return {m: Installed(v, p, at, acc) for m, v, p, at, acc in rows}

    def set_installed(self, model: str, inst: Installed) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO installed VALUES (?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                      "version=excluded.version, path=excluded.path, at=excluded.at, "
                      "accelerator=excluded.accelerator", (model, inst.version, inst.path, inst.at, inst.accelerator))

    def failures(self) -> dict[str, Failure]:
        rows = self._rows("SELECT model, version, reason, at, bad FROM failures")
        return {m: Failure(v, r, at, bool(b)) for m, v, r, at, b in rows}

    def set_failure(self, model: str, f: Failure) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO failures VALUES (?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                      "version=excluded.version, reason=excluded.reason, at=excluded.at, bad=excluded.bad",
                      (model, f.version, f.reason[:2000], f.at, int(f.bad)))

    def clear_failure(self, model: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM failures WHERE model=?", (model,))

    # -- bad versions ----------------------------------------------------------------

    def bad(self, model: str, version: int) -> Failure | None:
        """The failure that marked ``version`` bad here, or None."""
        rows = self._rows("SELECT reason, at FROM bad_versions WHERE model=? AND version=?", (model, version))
        return Failure(version, str(rows[0][0]), float(rows[0][1]), bad=True) if rows else None

    def bad_versions(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for m, v, r in self._rows("SELECT model, version, reason FROM bad_versions ORDER BY model, version"):
            out.setdefault(m, {})[v] = r
        return out

    def mark_bad(self, model: str, version: int, reason: str, at: float | None = None) -> Failure:
        """Mark ``version`` bad (never tried again here) and make it the model's current failure."""
        f = Failure(version, reason[:2000], time.time() if at is None else at, bad=True)
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO bad_versions VALUES (?, ?, ?, ?)", (model, version, f.reason, f.at))
            c.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, 1)", (model, version, f.reason, f.at))
            c.execute("DELETE FROM activations WHERE model=?", (model,))
        return f

    def forget_bad(self, model: str, version: int | None = None) -> int:
        with self.tx() as c:
            if version is None:
                return c.execute("DELETE FROM bad_versions WHERE model=?", (model,)).rowcount
            return c.execute("DELETE FROM bad_versions WHERE model=? AND version=?", (model, version)).rowcount

    # -- activations in progress: which version, and how often the edge server died during one ----

    def begin_activation(self, model: str, version: int) -> None:
        """Record that ``version`` is being swapped in and watched (a restart mid-window finds it)."""
        with self.tx() as c:
            row = c.execute("SELECT version FROM activations WHERE model=?", (model,)).fetchone()
            if row is None or row[0] != version:
                c.execute("INSERT OR REPLACE INTO activations VALUES (?, ?, ?, 0)", (model, version, time.time()))

    def edge_died(self, model: str, version: int) -> int:
        """Count one death of the edge server during ``version``'s activation; returns how many so far."""
        with self.tx() as c:
            c.execute("UPDATE activations SET attempts = attempts + 1 WHERE model=? AND version=?", (model, version))
            row = c.execute("SELECT attempts FROM activations WHERE model=? AND version=?", (model, version)).fetchone()
        return int(row[0]) if row else 1

    def activation(self, model: str) -> tuple[int, int] | None:
        """(version, edge server deaths) of the activation under way, if any."""
        rows = self._rows("SELECT version, attempts FROM activations WHERE model=?", (model,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def end_activation(self, model: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM activations WHERE model=?", (model,))

    # -- the report queue ---------------------------------------------------------------

    def enqueue(self, report: dict[str, Any], settings: dict[str, str] | None = None) -> None:
        """Queue ``report``; ``settings`` change in the same transaction (a metrics cursor moves with it)."""
        with self.tx() as c:
            for key, value in (settings or {}).items():
                c.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                          (key, value))
            c.execute("INSERT INTO reports (report_id, body, created, sent_at) VALUES (?, ?, ?, NULL)",
                      (report["report_id"], json.dumps(report), time.time()))
            # A node offline for weeks keeps the newest reports; the oldest unsent ones go.
            c.execute("DELETE FROM reports WHERE sent_at IS NULL AND seq NOT IN (SELECT seq FROM reports "
                      "WHERE sent_at IS NULL ORDER BY seq DESC LIMIT ?)", (MAX_PENDING_REPORTS,))

    def pending(self) -> list[QueuedReport]:
        return self._reports(_REPORTS + " WHERE sent_at IS NULL ORDER BY seq")

    def reports(self) -> list[QueuedReport]:
        """Every report still in the table (sent ones too), oldest first."""
        return self._reports(_REPORTS + " ORDER BY seq")

    def last_report(self, kind: str = "status") -> QueuedReport | None:
        """The newest queued report of ``kind`` (status reports and metrics reports share the queue)."""
        got = self._reports(_REPORTS + " WHERE json_extract(body, '$.kind') = ? ORDER BY seq DESC LIMIT 1", (kind,))
        return got[0] if got else None

    def _reports(self, sql: str, args: tuple[Any, ...] = ()) -> list[QueuedReport]:
        return [QueuedReport(s, r, json.loads(b), c, t) for s, r, b, c, t in self._rows(sql, args)]

    # -- erasure requests for the daemon ---------------------------------------------------

    def request_forget(self, fingerprint: str, files: list[str]) -> int:
        """Ask the running daemon to erase a user (by fingerprint) from its windows and these spool files."""
        with self.tx() as c:
            cur = c.execute("INSERT INTO forget_requests (fingerprint, files, at) VALUES (?, ?, ?)",
                            (fingerprint, json.dumps(files), time.time()))
        return int(cur.lastrowid or 0)

    def forget_requests(self) -> list[tuple[int, str, list[str]]]:
        return [(int(s), str(f), json.loads(n)) for s, f, n in
                self._rows("SELECT seq, fingerprint, files FROM forget_requests ORDER BY seq")]

    def forget_done(self, seq: int) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM forget_requests WHERE seq=?", (seq,))

    def forget_pending(self, seq: int) -> bool:
        return bool(self._rows("SELECT 1 FROM forget_requests WHERE seq=?", (seq,)))

    def mark_sent(self, report_id: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE reports SET sent_at=? WHERE report_id=?", (time.time(), report_id))
            c.execute("DELETE FROM reports WHERE sent_at IS NOT NULL AND seq NOT IN (SELECT seq FROM reports "
                      "WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", (KEEP_SENT_REPORTS,))

    def prune_sent_reports(self, before: float) -> int:
        """Forget reports sent before ``before`` (retention); unsent ones stay."""
        with self.tx() as c:
            return c.execute("DELETE FROM reports WHERE sent_at IS NOT NULL AND sent_at < ?", (before,)).rowcount

    # -- a view for the CLI -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": {k: asdict(v) for k, v in self.accepted().items()},
            "installed": {k: asdict(v) for k, v in self.installed().items()},
            "failures": {k: asdict(v) for k, v in self.failures().items()},
            "bad_versions": {m: {str(v): r for v, r in vs.items()} for m, vs in self.bad_versions().items()},
            "pending_reports": len(self.pending()),
        }

    def import_legacy(self, doc: dict[str, Any]) -> None:
        """Take over a ``status.json`` of an older node (accepted, installed, failures, pending reports)."""
        for m, a in doc.get("accepted", {}).items():
            self.set_accepted(m, Accepted(int(a["serial"]), int(a["version"])))
        for m, i in doc.get("installed", {}).items():
            self.set_installed(m, Installed(int(i["version"]), str(i["path"]), float(i["at"]), i.get("accelerator")))
        for m, f in doc.get("failures", {}).items():
            self.set_failure(m, Failure(f.get("version"), str(f["reason"]), float(f["at"])))
        for r in doc.get("pending_reports", []):
            if isinstance(r, dict) and isinstance(r.get("report_id"), str):
                self.enqueue(r)


class NodeState:
    """Paths and files of one node's state directory."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)
        self._db: NodeDB | None = None

    @property
    def keys(self) -> Path:
        return self.dir / "keys"

    @property
    def identity_file(self) -> Path:
        return self.dir / "node.json"

    @property
    def root_file(self) -> Path:
        return self.dir / "root.json"

    @property
    def db_file(self) -> Path:
        return self.dir / "node.db"

    @property
    def legacy_status_file(self) -> Path:
        return self.dir / "status.json"

    @property
    def control_token_file(self) -> Path:
        return self.dir / "control.token"

    @property
    def tuf_dir(self) -> Path:
        return self.dir / "tuf"

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    @property
    def partial_dir(self) -> Path:
        return self.dir / "partial"

    @property
    def trust_dir(self) -> Path:
        return self.dir / "trust"

    @property
    def user_key_file(self) -> Path:
        return self.keys / "user.key"

    @property
    def spool_dir(self) -> Path:
        return self.dir / "events"

    @property
    def ledger_file(self) -> Path:
        return self.dir / "privacy.sqlite"

    @property
    def lock_file(self) -> Path:
        return self.dir / "daemon.lock"


    @property
    def enrolled(self) -> bool:
        return self.identity_file.exists()

    @property
    def db(self) -> NodeDB:
        """The state database (opened on first use; a ``status.json`` of an older node is taken over)."""
        if self._db is None:
            self._db = NodeDB(self.db_file)
            legacy = self.legacy_status_file
            if legacy.exists():
                try:
                    self._db.import_legacy(json.loads(legacy.read_text()))
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    raise ConfigError(f"{legacy}: unreadable ({exc})") from exc
                legacy.unlink()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def ensure_keys(self) -> tuple[bytes, bytes]:
        """The public PEMs of the node's keys, made on first use (private files 0600)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not (self.keys / "signing.key").exists():
            generate_keypair(self.keys, "signing", "ed25519")
            generate_keypair(self.keys, "recipient", "x25519")
            os.chmod(self.keys, 0o700)
        return public_pem(self.signing_key().public_key()), public_pem(self.recipient_key().public_key())

    def signing_key(self) -> Ed25519PrivateKey:
        return load_signing_key(self.keys / "signing.key")

    def recipient_key(self) -> X25519PrivateKey:
        return load_recipient_key(self.keys / "recipient.key")

    def control_token(self) -> str:
        """The edge server's control token, made on first use (file 0600)."""
        path = self.control_token_file
        if not path.exists():
            write_atomic(path, secrets.token_urlsafe(32).encode(), mode=0o600)
        token = read_secret_text(path, "control token")
        if len(token) < 16:
            raise ConfigError(f"{path}: the control token must be at least 16 characters")
        return token

    def save_identity(self, ident: NodeIdentity, root: bytes) -> None:
        write_atomic(self.root_file, root, mode=0o600)
        self.save_origin(ident)

    def save_origin(self, ident: NodeIdentity) -> None:
        """Rewrite ``node.json`` with ``ident`` (another repository origin), atomically; the pinned root stays."""
        write_atomic(self.identity_file, json.dumps(asdict(ident), indent=2).encode(), mode=0o600)

    def identity(self) -> NodeIdentity:
        try:
            return NodeIdentity(**json.loads(self.identity_file.read_text()))
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.dir}: this node is not enrolled (run 'edgerec node enroll')") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.identity_file}: unreadable ({exc})") from exc

    def pinned_root(self) -> bytes:
        try:
            return self.root_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.root_file}: cannot read the pinned root ({exc.strerror})") from exc

    def export_publisher_keys(self, keys: dict[str, bytes]) -> bool:
        """Keep ``trust/<keyid>.pub`` equal to ``keys`` (key id -> PEM); returns whether anything changed."""
        make_dirs(self.trust_dir)
        wanted = {self.trust_dir / f"{kid}.pub": pem for kid, pem in keys.items()}
        changed = False
        for path, pem in wanted.items():
            if not path.exists() or path.read_bytes() != pem:
                write_atomic(path, pem, mode=0o644)
                changed = True
        for stale in set(self.trust_dir.glob("*.pub")) - set(wanted):
            stale.unlink(missing_ok=True)
            changed = True
        return changed

    def publisher_key_files(self) -> list[Path]:
        return sorted(self.trust_dir.glob("*.pub"))
