"""Key pairs: Ed25519 for signing, X25519 for receiving wrapped model keys.

Private keys are PKCS#8 PEM files written with mode 0600, and loaders refuse
one that group or others may read or write; public keys are PEM files. A key
id is the SHA-256 of the raw public key bytes (hex), so the same key always
has the same id wherever it is stored.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import KeyFileError
from .files import write_atomic

KeyKind = Literal["ed25519", "x25519"]
KEY_KINDS: tuple[KeyKind, ...] = ("ed25519", "x25519")
PublicKey = Ed25519PublicKey | X25519PublicKey
PrivateKey = Ed25519PrivateKey | X25519PrivateKey


def raw_public_bytes(key: PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: PublicKey) -> str:
    """Stable id of a public key: hex SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()


@dataclass(frozen=True)
class GeneratedKey:
    """Paths and id of a key pair written by :func:`generate_keypair`."""

    kind: KeyKind
    key_id: str
    private_path: Path
    public_path: Path


def generate_keypair(
    directory: str | os.PathLike[str], name: str, kind: KeyKind = "ed25519", overwrite: bool = False
) -> GeneratedKey:
    """Create a key pair as ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r}: must be a plain file name")
    folder = Path(directory)
    priv_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    if not overwrite:
        for p in (priv_path, pub_path):
            if p.exists():
                raise KeyFileError(f"{p}: already exists (pass overwrite to replace it)")
    private: PrivateKey = (
        Ed25519PrivateKey.generate() if kind == "ed25519" else X25519PrivateKey.generate()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key()
    write_atomic(priv_path, pem, mode=0o600)
    write_atomic(pub_path, public_pem(public), mode=0o644)
    return GeneratedKey(kind, key_id(public), priv_path, pub_path)


def public_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from exc


def read_private_file(path: str | os.PathLike[str], what: str = "private key") -> bytes:
    """The bytes of a secret file (private key, key-encryption key, token) only if no one but its owner has access.

    The mode is checked on the opened file, so the file read is the file checked. ``what`` names the
    file in the one-line error ("control token" -> "control token file is accessible ...").
    """
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileError(f"{path}: {what} file is accessible by group or others "
                                   f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
            return fh.read()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what} file ({exc.strerror})") from exc


def read_secret_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of an owner-only secret file (a token), whitespace stripped; an empty or binary one is refused."""
    try:
        text = read_private_file(path, what).decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: the {what} file is not text") from exc
    if not text:
        raise KeyFileError(f"{path}: the {what} file is empty")
    return text


def load_private_key(path: str | os.PathLike[str], kind: KeyKind | None = None) -> PrivateKey:
    """Load an Ed25519 or X25519 private key from a PEM file (mode 0600 or stricter)."""
    try:
        key = serialization.load_pem_private_key(read_private_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, PrivateKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    _check_kind(path, key, kind)
    return key


def load_public_key(path: str | os.PathLike[str], kind: KeyKind | None = None) -> PublicKey:
    """Load an Ed25519 or X25519 public key from a PEM file."""
    return public_key_from_pem(_read(path), kind, source=str(path))


def public_key_from_pem(
    pem: bytes | str, kind: KeyKind | None = None, source: str = "public key"
) -> PublicKey:
    """Parse a public key PEM (as sent over the wire or stored in a database)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source}: not a PEM public key") from exc
    if not isinstance(key, PublicKey):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    _check_kind(source, key, kind)
    return key


def _check_kind(source: object, key: PublicKey | PrivateKey, kind: KeyKind | None) -> None:
    if kind == "ed25519" and not isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        raise KeyFileError(f"{source}: expected an Ed25519 key")
    if kind == "x25519" and not isinstance(key, X25519PublicKey | X25519PrivateKey):
        raise KeyFileError(f"{source}: expected an X25519 key")


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the Ed25519 private key a publisher signs packages with."""
    key = load_private_key(path, "ed25519")
    assert isinstance(key, Ed25519PrivateKey)
    return key


def load_verify_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a trusted Ed25519 publisher public key."""
    key = load_public_key(path, "ed25519")
    assert isinstance(key, Ed25519PublicKey)
    return key


def load_recipient_key(path: str | os.PathLike[str]) -> X25519PrivateKey:
    """Load the X25519 private key a node unwraps model keys with."""
    key = load_private_key(path, "x25519")
    assert isinstance(key, X25519PrivateKey)
    return key


def load_recipient_public_key(path: str | os.PathLike[str]) -> X25519PublicKey:
    """Load a recipient's X25519 public key: what model keys are sealed to."""
    key = load_public_key(path, "x25519")
    assert isinstance(key, X25519PublicKey)
    return key
