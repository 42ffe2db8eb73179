"""The service's online keys, kept in the data directory with mode 0600.

Ed25519 keys sign the online TUF roles (targets, snapshot, timestamp and the
per-channel delegations) and node assignments; ``kek`` is an AES-256 key that
wraps artifact data keys at rest, so a copy of the database alone opens no
model. The root keys are offline and never here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from securesystemslib.signer import CryptoSigner, SSlibKey

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import generate_keypair, load_signing_key, read_private_file
from edgerec.sync.protocol.errors import ConfigError

ONLINE_ROLES = ("targets", "snapshot", "timestamp", "channels", "assignment")
KEK_FILE = "kek.key"


def tuf_key(public: Ed25519PublicKey) -> SSlibKey:
    """The TUF (securesystemslib) form of an Ed25519 public key."""
    return SSlibKey.from_crypto(public)


@dataclass(frozen=True)
class OnlineKeys:
    """Loads the online keys of a data directory on first use."""

    folder: Path

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
        try:
            return load_signing_key(self.folder / f"{role}.key")
        except KeyFileError as exc:
            raise ConfigError(f"online key for {role}: {exc}") from exc

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
        try:
            raw = read_private_file(self.folder / KEK_FILE)
        except KeyFileError as exc:
            raise ConfigError(str(exc)) from exc
        if len(raw) != 32:
            raise ConfigError(f"{self.folder / KEK_FILE}: expected 32 bytes")
        return AESGCM(raw)
