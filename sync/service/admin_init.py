"""Offline admin operations on the server machine: set a service up, rotate its root.

``init_service`` makes the data directory, the online keys, the offline root
keys (in a folder the admin keeps, ideally off the server afterwards), the
database, root metadata v1 signed by every root key (threshold ``t`` of ``n``)
and the first admin token. ``update_root`` signs a new root version with the
root keys to change the trusted publisher keys; nodes follow it through TUF.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from edgerec.sdk.keys import generate_keypair, load_signing_key
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.trust import EXTENSION, TrustInfo

from .config import ServiceConfig
from .datadir import DataDir
from .online_keys import OnlineKeys, tuf_key
from .replica_keys import database_keys
from .store import Database, migrate
from .tokens import create_admin_token
from .tuf_repo import TufRepository, expires_in


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    db_url: str
    root_key_files: list[Path]
    threshold: int
    admin_token: str


def _sign_root(root: Root, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    md = Metadata(root)
    for k in keys:
        md.sign(CryptoSigner(k), append=True)
    return md.to_bytes()


def init_service(
    data_dir: Path,
    keys_dir: Path,
    publisher_keys: Sequence[Ed25519PublicKey],
    db_url: str | None = None,
    root_keys: int = 3,
    threshold: int = 2,
    config: ServiceConfig | None = None,
) -> InitResult:
    """Create a service's data directory, keys, database and TUF repository."""
    config = config or ServiceConfig()
    if not publisher_keys:
        raise ConfigError("at least one publisher public key is needed (--publisher-key)")
    if not 1 <= threshold <= root_keys:
        raise ConfigError(f"root threshold {threshold} must be between 1 and the number of root keys ({root_keys})")
    dd = DataDir(Path(data_dir))
    dd.create()
    keys_dir = Path(keys_dir)
    root_files = [generate_keypair(keys_dir, f"root-{i + 1}", "ed25519") for i in range(root_keys)]
    online = OnlineKeys.generate(dd.keys)
    url = db_url or dd.default_db_url()
    dd.write_settings({"db": url, "created": time.time()})
    db = Database(url)
    try:
        migrate(db)
        trust = TrustInfo.build(publisher_keys, [online.assignment.public_key()])
        root = Root(expires=expires_in(config.root_expiry_s), consistent_snapshot=True,
                    unrecognized_fields={EXTENSION: trust.to_dict()})
        root_priv = [load_signing_key(g.private_path) for g in root_files]
        for k in root_priv:
            root.add_key(tuf_key(k.public_key()), Root.type)
        root.roles[Root.type].threshold = threshold
        for role in ("targets", "snapshot", "timestamp"):
            root.add_key(online.public(role), role)
        repo = TufRepository(db, dd, online, config)
        with db.write() as session:
            written = repo.bootstrap(session, _sign_root(root, root_priv))
            token = create_admin_token(session, "admin")
        repo.materialize(written)
    finally:
        db.dispose()
    return InitResult(dd.root, url, [g.private_path for g in root_files], threshold, token)


def root_signing_keys(keys_dir: Path) -> list[Ed25519PrivateKey]:
    files = sorted(Path(keys_dir).glob("root-*.key"))
    if not files:
        raise ConfigError(f"{keys_dir}: no root keys (root-*.key)")
    return [load_signing_key(f) for f in files]


def _open_state(data_dir: Path | None, db_url: str | None, key_file: Path | None = None,
                need_keys: bool = False) -> tuple[Database, DataDir | None, OnlineKeys | None]:
    """The database, and the data directory (or, for stateless replicas, ``key_file``'s online keys)."""
    if data_dir is not None:
        dd = DataDir(Path(data_dir))
        db = Database(dd.db_url(db_url))
        migrate(db)
        return db, dd, OnlineKeys(dd.keys)
    if not db_url or (need_keys and key_file is None):
        raise ConfigError("give --data-dir, or --db" + (" and --key-file (a replica key)" if need_keys else ""))
    db = Database(db_url)
    try:
        migrate(db)
        return db, None, database_keys(db, key_file) if key_file is not None else None
    except BaseException:
        db.dispose()
        raise


def update_root(
    data_dir: Path | None,
    keys_dir: Path,
    add_publishers: Sequence[Ed25519PublicKey] = (),
    remove_publishers: Sequence[str] = (),
    db_url: str | None = None,
    config: ServiceConfig | None = None,
    key_file: Path | None = None,
) -> int:
    """Sign and store the next root version with changed publisher keys; returns its version.

    Without ``data_dir`` (state moved into the database) the online keys that
    re-sign the roles below root are opened with the replica key ``key_file``.
    """
    config = config or ServiceConfig()
    db, dd, keys = _open_state(data_dir, db_url, key_file, need_keys=True)
    assert keys is not None
    try:
        repo = TufRepository(db, dd, keys, config)
        with db.read() as session:
            current = Metadata[Root].from_bytes(repo.root_bytes(session)).signed
        trust = TrustInfo.from_root(current)
        publishers = dict(trust.publisher_keys)
        for kid in remove_publishers:
            matches = [k for k in publishers if k.startswith(kid)]
            if len(matches) != 1:
                raise ConfigError(f"publisher key {kid!r} matches {len(matches)} trusted keys")
            del publishers[matches[0]]
        publishers.update(TrustInfo.build(add_publishers, []).publisher_keys)
        if not publishers:
            raise ConfigError("the root must keep at least one publisher key")
        current.unrecognized_fields[EXTENSION] = TrustInfo(publishers, trust.assignment_keys).to_dict()
        current.version += 1
        current.expires = expires_in(config.root_expiry_s)
        data = _sign_root(current, root_signing_keys(keys_dir))
        with db.write() as session:
            written = repo.add_root(session, data)
        repo.materialize(written)
        return current.version
    finally:
        db.dispose()


def new_admin_token(data_dir: Path | None, name: str, db_url: str | None = None) -> str:
    """Another admin token, made on the server machine (the service keeps only its hash)."""
    db, _dd, _keys = _open_state(data_dir, db_url)
    try:
        with db.write() as session:
            return create_admin_token(session, name)
    finally:
        db.dispose()
