"""The service's online keys: files of the data directory (mode 0600), or from the database.

Ed25519 keys sign the online TUF roles (targets, snapshot, timestamp and the
per-channel delegations) and node assignments; ``kek`` is an AES-256 key that
wraps artifact data keys at rest, so a copy of the database alone opens no
model. The root keys are offline and never here. A stateless replica gets the
same files' bytes from the database, unwrapped with its own replica key
(:mod:`.replica_keys`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from securesystemslib.signer import CryptoSigner, SSlibKey

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import generate_keypair, read_private_file
from edgerec.sync.protocol.errors import ConfigError

ONLINE_ROLES = ("targets", "snapshot", "timestamp", "channels", "assignment")
KEK_FILE = "kek.key"


def tuf_key(public: Ed25519PublicKey) -> SSlibKey:
    """The TUF (securesystemslib) form of an Ed25519 public key."""
    return SSlibKey.from_crypto(public)


def key_files() -> list[str]:
    """The file names of the online keys (what a data directory's ``keys/`` holds and the database wraps)."""
    return [f"{role}.key" for role in ONLINE_ROLES] + [KEK_FILE]


@dataclass(frozen=True)
class OnlineKeys:
    """Loads the online keys on first use: from ``folder``, or from ``secrets`` (file name -> bytes)."""

    folder: Path | None = None
    secrets: Mapping[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        """The bytes of one key file (see :func:`key_files`)."""
        if self.secrets is not None:
            try:
                return self.secrets[name]
            except KeyError as exc:
                raise ConfigError(f"online key {name!r} is not in the database") from exc
        if self.folder is None:
            raise ConfigError("no online keys: neither a data directory nor the database's")
        try:
            return read_private_file(self.folder / name)
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from exc

    def all(self) -> dict[str, bytes]:
        """Every key file's bytes (to move them into the database)."""
        return {name: self.read(name) for name in key_files()}

    @classmethod
    def generate(cls, folder: Path) -> OnlineKeys:
        """Write a fresh set of online keys (refuses to overwrite)."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for role in ONLINE_ROLES:
            generate_keypair(folder, role, "ed25519")
        kek = folder / KEK_FILE
        if kek.exists():
            raise ConfigError(f"{kek}: already exists")
        write_atomic(kek, AESGCM.generate_key(bit_length=256), mode=0o600)
        return cls(folder)

    def private(self, role: str) -> Ed25519PrivateKey:
        if role not in ONLINE_ROLES:
            raise ConfigError(f"no online key for role {role!r}")
        data = self.read(f"{role}.key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"online key for {role}: not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"online key for {role}: expected an Ed25519 key")
        return key

    @cached_property
    def _signers(self) -> dict[str, CryptoSigner]:
        return {role: CryptoSigner(self.private(role)) for role in ONLINE_ROLES if role != "assignment"}

    def signer(self, role: str) -> CryptoSigner:
        """The TUF signer of an online role; delegated channel roles share ``channels``."""
        return self._signers["channels" if role.startswith("channel-") else role]

    def public(self, role: str) -> SSlibKey:
        return self.signer(role).public_key

    @cached_property
    def assignment(self) -> Ed25519PrivateKey:
        return self.private("assignment")

    @cached_property
    def kek(self) -> AESGCM:
        raw = self.read(KEK_FILE)
        if len(raw) != 32:
            raise ConfigError(f"online key {KEK_FILE}: expected 32 bytes")
        return AESGCM(raw)
