"""Replica keys: each replica's own key file, which opens the online keys stored in the database.

A stateless replica keeps no shared file. The online keys (the files of a data
directory's ``keys/`` folder: the Ed25519 role keys and the AES ``kek``) are
stored in ``wrapped_keys``, once per replica key, each sealed with AES-256-GCM
under that replica key (the key's name and id are the associated data, so a
row cannot be moved to another name). A replica key is 32 random bytes in a
file of its own, mode 0600 (refused when wider); its id is a digest of it, so
the database never holds the key. Several replica keys may be valid at once:
:func:`add_replica_key` wraps the online keys for a new one (opened with one
already there), :func:`remove_replica_key` drops one; that is how a key is
rotated without stopping the service.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, func, select

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import read_private_file
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.service.store.models import WrappedKey

from .online_keys import OnlineKeys, key_files
from .store import Database

KEY_BYTES = 32
_NONCE = 12


def create_key_file(path: Path) -> Path:
    """Write a new replica key to ``path`` (mode 0600); refuses to overwrite one."""
    if path.exists():
        raise ConfigError(f"{path}: already exists (a replica key is never overwritten)")
    return write_atomic(path, AESGCM.generate_key(bit_length=8 * KEY_BYTES), mode=0o600)


def read_key_file(path: Path) -> bytes:
    """A replica key file's 32 bytes; ConfigError when missing, malformed or readable by others."""
    try:
        raw = read_private_file(path)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"{path}: a replica key file holds {KEY_BYTES} bytes, this one {len(raw)}")
    return raw


def key_id(key: bytes) -> str:
    """The public name of a replica key (the first 16 hex digits of a domain-separated SHA-256)."""
    return hashlib.sha256(b"edgerec replica key\0" + key).hexdigest()[:16]


def _aad(kid: str, name: str) -> bytes:
    return f"edgerec-online-key\0{kid}\0{name}".encode()


def wrap_online_keys(db: Database, key: bytes, secrets: dict[str, bytes]) -> int:
    """Store ``secrets`` (key file name -> bytes) wrapped with ``key``; returns how many were new."""
    kid, aead, added = key_id(key), AESGCM(key), 0
    with db.write() as session:
        have = set(session.execute(select(WrappedKey.name).where(WrappedKey.kek_id == kid)).scalars())
        for name, secret in sorted(secrets.items()):
            if name in have:
                continue
            nonce = os.urandom(_NONCE)
            session.add(WrappedKey(kek_id=kid, name=name, created=time.time(),
                                   wrapped=nonce + aead.encrypt(nonce, secret, _aad(kid, name))))
            added += 1
    return added


def unwrap_online_keys(db: Database, key: bytes) -> dict[str, bytes]:
    """The online keys this replica key opens; ConfigError when it opens none (an unknown key)."""
    kid, aead = key_id(key), AESGCM(key)
    with db.read() as session:
        rows = session.execute(select(WrappedKey.name, WrappedKey.wrapped).where(WrappedKey.kek_id == kid)).all()
    if not rows:
        raise ConfigError(f"the database holds no online keys for replica key {kid}: add it with "
                          "'edgerec sync replica-key add', or move a data directory in with "
                          "'edgerec sync migrate --to-database'")
    out: dict[str, bytes] = {}
    for name, wrapped in rows:
        try:
            out[name] = aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _aad(kid, name))
        except InvalidTag as exc:
            raise ConfigError(f"online key {name!r}: does not open with replica key {kid} (tampered?)") from exc
    return out


def database_keys(db: Database, key_file: Path) -> OnlineKeys:
    """The online keys of a stateless replica, opened with its key file (all of them, or ConfigError at start)."""
    secrets = unwrap_online_keys(db, read_key_file(key_file))
    missing = [name for name in key_files() if name not in secrets]
    if missing:
        raise ConfigError(f"the database lacks online keys {', '.join(missing)} for this replica key: "
                          "finish the move with 'edgerec sync migrate --to-database'")
    return OnlineKeys(secrets=secrets)


def add_replica_key(db: Database, key_file: Path, new_key_file: Path) -> str:
    """Wrap the online keys (opened with ``key_file``) for a new replica key written to ``new_key_file``."""
    secrets = unwrap_online_keys(db, read_key_file(key_file))
    new = read_key_file(create_key_file(new_key_file))
    wrap_online_keys(db, new, secrets)
    return key_id(new)


def remove_replica_key(db: Database, kid: str) -> int:
    """Drop every key wrapped for replica key ``kid``; refuses to drop the last replica key."""
    with db.write() as session:
        mine = session.execute(select(func.count()).where(WrappedKey.kek_id == kid)).scalar_one()
        if not mine:
            raise ConfigError(f"replica key {kid!r} is not known to this database")
        others = session.execute(
            select(func.count(func.distinct(WrappedKey.kek_id))).where(WrappedKey.kek_id != kid)
        ).scalar_one()
        if not others:
            raise ConfigError(f"replica key {kid} is the only one: add another before removing it")
        session.execute(delete(WrappedKey).where(WrappedKey.kek_id == kid))
        return int(mine)
