"""Artifact encryption: one AES-256-GCM ciphertext for the fleet, keys per node.

Each artifact gets a random 256-bit data key. The ciphertext is the same for
every recipient (so a CDN can cache it); the data key is sealed to each
recipient's X25519 key with HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, AES-256-GCM). The HPKE ``info`` binds recipient id, package name,
version and artifact path, so an envelope cannot be replayed for another node,
package or file. The GCM associated data binds the same package coordinates and
the plaintext hash the publisher signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import DecryptionError, PackageError, UnsafeEntryError
from .manifest import Manifest, canonical_json, check_name
from .package import (
    ENCRYPTION,
    ENVELOPE_DIR,
    MANIFEST,
    SIGNATURE,
    Blob,
    EncryptionInfo,
    Package,
    sha256_hex,
    zip_bytes,
)

SUITE_NAME = "DHKEM-X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@dataclass(frozen=True)
class Recipient:
    """A node's identity for unwrapping: its id and X25519 private key."""

    id: str
    private_key: X25519PrivateKey


@dataclass(frozen=True)
class Envelope:
    """A data key sealed to one recipient for one artifact of one package version."""

    recipient: str
    package: str
    version: int
    artifact: str
    sealed: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "recipient": self.recipient,
                "package": self.package,
                "version": self.version,
                "artifact": self.artifact,
                "suite": SUITE_NAME,
                "sealed": base64.b64encode(self.sealed).decode(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        try:
            d = json.loads(data)
            if d.get("suite") != SUITE_NAME:
                raise ValueError(f"unsupported suite {d.get('suite')!r}")
            return cls(
                str(d["recipient"]),
                str(d["package"]),
                int(d["version"]),
                str(d["artifact"]),
                base64.b64decode(d["sealed"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecryptionError(f"envelope: malformed ({exc})") from exc

    @property
    def entry_name(self) -> str:
        """Where the envelope lives inside a package."""
        digest = hashlib.sha256(self.artifact.encode()).hexdigest()[:16]
        return f"{ENVELOPE_DIR}{self.recipient}/{digest}.json"


# X25519 encapsulated key (32 bytes) + a sealed 32-byte data key with its 16-byte GCM tag.
SEALED_SIZE = 32 + 32 + 16


def check_envelope_entry(
    name: str, data: bytes, manifest: Manifest, encryption: Mapping[str, EncryptionInfo], label: str = "package"
) -> Envelope:
    """An ``envelopes/`` entry a reader accepts: well-formed, and naming this package.

    It must parse as an envelope of the supported suite with a sealed key of
    the right size, for this package's name and version and one of its
    encrypted artifacts, stored under exactly the name :attr:`Envelope.entry_name`
    gives it. Anything else is refused as an entry the manifest does not list.
    """
    try:
        env = Envelope.from_bytes(data)
    except DecryptionError as exc:
        raise UnsafeEntryError(f"{label}: entry {name!r} is not a key envelope ({exc})") from exc
    problem = None
    if (env.package, env.version) != (manifest.name, manifest.version):
        problem = "is for another package"
    elif env.artifact not in encryption:
        problem = "names no encrypted artifact"
    elif env.entry_name != name:
        problem = "is stored under another recipient's or artifact's name"
    elif len(env.sealed) != SEALED_SIZE:
        problem = "holds a sealed key of the wrong size"
    if problem is not None:
        raise UnsafeEntryError(f"{label}: key envelope {name!r} {problem}")
    return env


def hpke_info(recipient: str, package: str, version: int, artifact: str) -> bytes:
    """The HPKE ``info`` string that binds an envelope to its use."""
    return canonical_json(
        {"ctx": "edgerec/envelope/v1", "recipient": recipient, "package": package,
         "version": version, "artifact": artifact}
    )


def _aad(package: str, version: int, artifact: str, plaintext_sha256: str) -> bytes:
    return canonical_json(
        {"ctx": "edgerec/artifact/v1", "package": package, "version": version,
         "artifact": artifact, "sha256": plaintext_sha256}
    )


def seal_data_key(
    data_key: bytes, recipient: str, public_key: X25519PublicKey, package: str, version: int, artifact: str
) -> Envelope:
    """Wrap ``data_key`` for one recipient with HPKE; recipient ids are names (see ``check_name``)."""
    check_name(recipient, "recipient id")
    info = hpke_info(recipient, package, version, artifact)
    return Envelope(recipient, package, version, artifact, _SUITE.encrypt(data_key, public_key, info=info))


def open_envelope(env: Envelope, recipient: Recipient, package: str, version: int, artifact: str) -> bytes:
    """Unwrap a data key; the expected coordinates come from the verified manifest."""
    info = hpke_info(recipient.id, package, version, artifact)
    try:
        key = _SUITE.decrypt(env.sealed, recipient.private_key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(
            f"{artifact}: the key envelope does not open for recipient {recipient.id!r}"
        ) from exc
    if len(key) != 32:
        raise DecryptionError(f"{artifact}: the unwrapped data key has the wrong size")
    return key


@dataclass(frozen=True)
class EncryptedPackage:
    """An encrypted package and the data keys a distributor keeps to add recipients later."""

    data: bytes
    data_keys: dict[str, bytes]


def encrypt_package(
    package: Package,
    recipients: Mapping[str, X25519PublicKey] | None = None,
    data_keys: Mapping[str, bytes] | None = None,
) -> EncryptedPackage:
    """Encrypt every artifact of a verified package; embed envelopes for ``recipients``.

    The signed manifest is kept byte for byte, so the publisher's signature
    still covers the plaintext hashes.
    """
    if package.encrypted:
        raise PackageError("package is already encrypted")
    m = package.manifest
    keys = dict(data_keys or {})
    entries: list[tuple[str, bytes]] = [
        (MANIFEST, bytes(package.stored_bytes(MANIFEST))),
        (SIGNATURE, bytes(package.stored_bytes(SIGNATURE))),
    ]
    enc_doc: dict[str, dict[str, object]] = {}
    for art in m.artifacts:
        key = keys.setdefault(art.path, AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, package.stored_bytes(art.path), _aad(m.name, m.version, art.path, art.sha256))
        entries.append((art.path, ct))
        enc_doc[art.path] = {"nonce": base64.b64encode(nonce).decode(), "sha256": sha256_hex(ct), "size": len(ct)}
    entries.append((ENCRYPTION, canonical_json({"alg": "AES-256-GCM", "artifacts": enc_doc})))
    entries += [(f.path, package.file_bytes(f.path)) for f in m.files]
    for rid, pub in (recipients or {}).items():
        for art in m.artifacts:
            env = seal_data_key(keys[art.path], rid, pub, m.name, m.version, art.path)
            entries.append((env.entry_name, env.to_bytes()))
    return EncryptedPackage(zip_bytes(entries), keys)


def decrypt_artifact(
    package: Package, path: str, recipient: Recipient, envelopes: Iterable[Envelope] = ()
) -> Blob:
    """Plaintext bytes of one artifact, in memory only; checked against the signed hash."""
    m = package.manifest
    art = m.artifact(path)
    if path not in package.encryption:
        return package.stored_bytes(path)
    candidates = list(envelopes) + [
        Envelope.from_bytes(b) for b in package.envelope_entries().values()
    ]
    env = next(
        (e for e in candidates if e.recipient == recipient.id and e.artifact == path
         and e.package == m.name and e.version == m.version),
        None,
    )
    if env is None:
        raise DecryptionError(f"{path}: no key envelope for recipient {recipient.id!r}")
    key = open_envelope(env, recipient, m.name, m.version, path)
    info = package.encryption[path]
    try:
        plain = AESGCM(key).decrypt(info.nonce, package.stored_bytes(path), _aad(m.name, m.version, path, art.sha256))
    except InvalidTag as exc:
        raise DecryptionError(f"{path}: ciphertext does not authenticate") from exc
    if sha256_hex(plain) != art.sha256 or len(plain) != art.size:
        raise DecryptionError(f"{path}: decrypted bytes do not match the signed hash")
    return plain


def add_envelopes(package_bytes: bytes, envelopes: Iterable[Envelope]) -> bytes:
    """The same package with key envelopes added (or replaced) under ``envelopes/``.

    Envelopes are not covered by the publisher's signature and need not be:
    a wrong one fails to open, and a key that opens the ciphertext still has to
    produce the plaintext hash the manifest signs. A node uses this to keep its
    envelope next to the fleet-wide ciphertext it downloaded.
    """
    import io
    import zipfile

    new = {e.entry_name: e.to_bytes() for e in envelopes}
    with zipfile.ZipFile(io.BytesIO(package_bytes)) as zf:
        kept = [(i.filename, zf.read(i)) for i in zf.infolist() if i.filename not in new]
    return zip_bytes(kept + sorted(new.items()))
