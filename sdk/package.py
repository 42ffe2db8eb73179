"""The ``.edgepkg`` file: build and sign one, open and verify one.

A package is a zip holding ``manifest.json`` (canonical JSON, the signed
document), ``signature.json`` and the files the manifest lists with their
SHA-256 and size. Encrypted packages add ``encryption.json`` (nonces and
ciphertext hashes) and may carry per-recipient key envelopes under
``envelopes/``; see :mod:`edgerec.sdk.encryption`.

:meth:`Package.open` verifies before it trusts, in this order: zip structure
and limits (directory size, entry count, sizes, paths, duplicates), the
signature over the raw manifest bytes against the trusted keys (reading only
``signature.json`` and ``manifest.json``, both bounded), then that every
other entry is a file the signed manifest lists (checked against its hash) or
a well-formed key envelope (:data:`ENVELOPE_NAME`, bounded in size and count,
parsed and matched to this package; see :func:`.encryption.check_envelope_entry`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import __version__, _zip
from ._zip import check_infos, open_source, open_zip, read_entry
from .errors import (
    IntegrityError,
    MissingEntryError,
    OversizedEntryError,
    PackageError,
    SignatureError,
    UnsafeEntryError,
    UntrustedSignerError,
)
from .files import write_atomic
from .keys import key_id
from .manifest import (
    Artifact,
    Batch,
    Device,
    FeatureSpec,
    FileEntry,
    Format,
    Manifest,
    ModelSignature,
    NpuTarget,
    canonical_json,
    check_name,
    check_path,
)
from .vocab import Vocabulary

MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
ENCRYPTION = "encryption.json"
ENVELOPE_DIR = "envelopes/"
_META = (MANIFEST, SIGNATURE, ENCRYPTION)
# Envelopes are added after signing (see encryption.add_envelopes), so they cannot be listed in
# the manifest: ``envelopes/<recipient id>/<first 16 hex digits of SHA-256(artifact path)>.json``.
ENVELOPE_NAME = re.compile(r"^envelopes/[a-z0-9][a-z0-9._-]{0,63}/[0-9a-f]{16}\.json$")
Blob: TypeAlias = _zip.Blob
"""An entry's bytes: large artifacts are read-only memoryviews, so loading them copies nothing."""
# Fixed zip timestamps make a package's bytes depend only on its content.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PackageLimits:
    """Bounds a reader enforces before it trusts anything in a package."""

    max_package_size: int = 4 * 1024**3
    max_entries: int = 4096
    max_entry_size: int = 2 * 1024**3
    max_total_size: int = 4 * 1024**3
    max_manifest_size: int = 4 * 1024**2
    max_compression_ratio: int = 200
    # read before the signature is checked: the zip directory and signature.json
    max_directory_size: int = 1024**2
    max_signature_size: int = 64 * 1024
    max_signatures: int = 16
    # key envelopes under envelopes/ (not signed: added per node after signing)
    max_envelopes: int = 1024
    max_envelope_size: int = 4096

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value <= 0:
                raise ValueError(f"PackageLimits.{name} must be > 0")


def sha256_hex(data: Blob) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_bytes(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of ``entries`` with fixed timestamps, so its bytes depend on content only."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def sign_manifest(manifest_bytes: bytes, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """``signature.json`` for canonical manifest bytes, one entry per key."""
    sigs = [
        {"keyid": key_id(k.public_key()), "sig": base64.b64encode(k.sign(manifest_bytes)).decode()}
        for k in keys
    ]
    return canonical_json({"signatures": sigs})


class PackageBuilder:
    """Collects a model's files and metadata, then writes a signed package."""

    def __init__(self, name: str, version: int, signature: ModelSignature) -> None:
        check_name(name, "name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise PackageError(f"version: expected an integer >= 0, got {version!r}")
        self.name = name
        self.version = version
        self.signature = signature
        self.producer: dict[str, str] = {"edgerec": __version__}
        self.metadata: dict[str, Any] = {}
        self.eval_report: dict[str, Any] | None = None
        self.score_distribution: dict[str, Any] | None = None
        self.score_output: str | None = None
        self._artifacts: list[Artifact] = []
        self._files: list[FileEntry] = []
        self._features: list[FeatureSpec] = []
        self._blobs: dict[str, bytes] = {}
        self._item_table: str | None = None
        # The request fields naming an item and a user (the converter sets them from the feature roles).
        self.item_id_field = "item_id"
        self.user_id_field: str | None = None
        self._warmup: str | None = None

    def _put(self, path: str, data: bytes) -> None:
        check_path(path, "path")
        if path in self._blobs or path in _META or path.startswith(ENVELOPE_DIR):
            raise PackageError(f"{path}: already in the package or reserved")
        self._blobs[path] = data

    def add_artifact(
        self,
        path: str,
        data: bytes,
        format: Format,
        *,
        precision: str = "fp32",
        batch: Batch = "dynamic",
        accelerators: Sequence[Device] = ("cpu",),
        runtime: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        npu_target: NpuTarget | None = None,
    ) -> Artifact:
        """Add a model file (``tflite``, ``ort`` or ``onnx``); ``npu_target``: compiled for that SoC's NPU."""
        self._put(path, data)
        art = Artifact(
            path=path,
            format=format,
            sha256=sha256_hex(data),
            size=len(data),
            precision=precision,
            batch=batch,
            accelerators=tuple(accelerators),
            runtime=dict(runtime or {}),
            extra=dict(extra or {}),
            npu_target=npu_target,
        )
        self._artifacts.append(art)
        return art

    def add_file(self, path: str, data: bytes, kind: str = "aux") -> FileEntry:
        """Add a supporting file (operator config, documentation, ...)."""
        self._put(path, data)
        entry = FileEntry(path, sha256_hex(data), len(data), kind)
        self._files.append(entry)
        return entry

    def add_feature(self, spec: FeatureSpec, vocabulary: Vocabulary | None = None) -> FeatureSpec:
        """Declare how a model input is filled; a vocabulary is stored with it."""
        if vocabulary is not None:
            path = f"vocab/{spec.input}.json"
            self.add_file(path, vocabulary.to_bytes(), kind="vocabulary")
            spec = replace(spec, vocabulary=path)
        self._features.append(spec)
        return spec

    def set_item_table(self, columns: Mapping[str, npt.ArrayLike], id_field: str = "item_id") -> None:
        """Item features by item id, so ``rank`` can take bare candidate ids."""
        arrays = {k: np.asarray(v) for k, v in columns.items()}
        if id_field not in arrays:
            raise PackageError(f"item table: missing id column {id_field!r}")
        self.add_file("items.npz", _npz(arrays), kind="item_table")
        self._item_table, self.item_id_field = "items.npz", id_field

    def set_warmup(self, samples: Mapping[str, npt.ArrayLike]) -> None:
        """Inputs a server runs before it swaps a new version in."""
        self.add_file("warmup.npz", _npz({k: np.asarray(v) for k, v in samples.items()}), "warmup")
        self._warmup = "warmup.npz"

    def set_score_distribution(self, scores: npt.ArrayLike) -> None:
        """Record the reference score distribution (for drift detection)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        qs = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
        self.score_distribution = {
            "count": int(s.size),
            "mean": float(s.mean()) if s.size else 0.0,
            "std": float(s.std()) if s.size else 0.0,
            "quantiles": {str(q): float(np.quantile(s, q)) for q in qs} if s.size else {},
            "histogram": np.histogram(s, bins=20, range=(0.0, 1.0))[0].tolist() if s.size else [],
        }

    def manifest(self) -> Manifest:
        m = Manifest(
            name=self.name,
            version=self.version,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            signature=self.signature,
            artifacts=tuple(self._artifacts),
            features=tuple(self._features),
            files=tuple(self._files),
            producer=dict(self.producer),
            score_output=self.score_output,
            item_table=self._item_table,
            item_id_field=self.item_id_field,
            user_id_field=self.user_id_field,
            warmup=self._warmup,
            eval_report=self.eval_report,
            score_distribution=self.score_distribution,
            metadata=dict(self.metadata),
        )
        # Round-trip through the strict reader so a builder cannot write what readers refuse.
        return Manifest.from_bytes(m.to_bytes())

    def build(self, signing_keys: Ed25519PrivateKey | Sequence[Ed25519PrivateKey]) -> bytes:
        """The signed package as bytes."""
        keys = [signing_keys] if isinstance(signing_keys, Ed25519PrivateKey) else list(signing_keys)
        if not keys:
            raise SignatureError("build: at least one signing key is needed")
        manifest_bytes = self.manifest().to_bytes()
        entries = [(MANIFEST, manifest_bytes), (SIGNATURE, sign_manifest(manifest_bytes, keys))]
        entries += sorted(self._blobs.items())
        return zip_bytes(entries)

    def write(
        self, path: str | os.PathLike[str], signing_keys: Ed25519PrivateKey | Sequence[Ed25519PrivateKey]
    ) -> Path:
        """Build and write atomically: the file is whole or absent."""
        return write_atomic(path, self.build(signing_keys))


def _npz(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)  # readers load with allow_pickle=False too
    return buf.getvalue()


# numpy parses each .npy header with ast.literal_eval, and CPython 3.11 keeps the AST converter's
# recursion depth in interpreter-wide state (see gh-106905): two threads converting at once can
# fail with "SystemError: AST constructor recursion depth mismatch". Nodes and servers load packages
# from several threads, so the reads take turns; the arrays here are small.
_NPZ_READ = threading.Lock()


def _load_npz(data: bytes, where: str) -> dict[str, npt.NDArray[Any]]:
    try:
        with _NPZ_READ, np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PackageError(f"{where}: not a readable .npz file ({exc})") from exc


@dataclass(frozen=True)
class EncryptionInfo:
    """What ``encryption.json`` says of one encrypted artifact."""

    nonce: bytes
    sha256: str
    size: int


@dataclass
class Package:
    """A package whose signature and file hashes have been verified.

    Construct with :meth:`open`; the constructor itself checks nothing.
    """

    manifest: Manifest
    signer: str
    size: int
    _entries: dict[str, Blob] = field(repr=False)
    encryption: dict[str, EncryptionInfo] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        trusted_keys: Sequence[Ed25519PublicKey] | Ed25519PublicKey,
        limits: PackageLimits | None = None,
    ) -> Package:
        """Read and verify a package from a path, bytes or a seekable binary file.

        Verifies before it reads: zip directory and entry names, then the
        signature over ``manifest.json``, then only the entries the signed
        manifest lists (and well-formed key envelopes), each against its hash.
        Raises PackageError (and its subclasses UnsafeEntryError, SignatureError,
        IntegrityError) for anything not exactly as the publisher signed it.
        """
        limits = limits or PackageLimits()
        trusted = [trusted_keys] if isinstance(trusted_keys, Ed25519PublicKey) else list(trusted_keys)
        with open_source(source, limits.max_package_size) as (label, fh, size), \
                open_zip(label, fh, size, limits) as zf:
            infos = check_infos(label, zf, limits)
            manifest, manifest_bytes, signer, meta = _verified_manifest(label, zf, infos, trusted, limits)
            envelopes = _unlisted_entries(label, manifest, infos, limits)
            encryption = _parse_encryption(meta.get(ENCRYPTION), manifest, label)
            entries: dict[str, Blob] = {MANIFEST: manifest_bytes, **meta}
            entries.update(_read_listed(label, zf, infos, manifest, encryption, limits))
            entries.update(_read_envelopes(label, zf, infos, envelopes, manifest, encryption, limits))
        return cls(manifest, signer, size, entries, encryption)

    # -- contents ---------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption)

    def file_bytes(self, path: str) -> bytes:
        """A verified non-artifact file (vocabulary, item table, ...)."""
        self.manifest.file(path)  # MissingEntryError for paths the manifest does not list
        return bytes(self._entries[path])

    def stored_bytes(self, path: str) -> Blob:
        """An entry as stored (ciphertext for encrypted artifacts); read-only."""
        try:
            return self._entries[path]
        except KeyError:
            raise MissingEntryError(path) from None

    def envelope_entries(self) -> dict[str, bytes]:
        """Key envelopes carried in the package (each checked well-formed), by entry name."""
        return {k: bytes(v) for k, v in self._entries.items() if k.startswith(ENVELOPE_DIR)}

    def vocabulary(self, path: str) -> Vocabulary:
        return Vocabulary.from_bytes(self.file_bytes(path), where=path)

    def item_table(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.manifest.item_table
        return None if path is None else _load_npz(self.file_bytes(path), path)

    def warmup(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.manifest.warmup
        return None if path is None else _load_npz(self.file_bytes(path), path)


def read_unverified_manifest(
    source: str | os.PathLike[str] | bytes | IO[bytes], limits: PackageLimits | None = None
) -> Manifest:
    """A package's manifest, NOT verified: only to choose which files to verify (an edge server's model folder).

    The same bounded reading as :meth:`Package.open` before the signature is
    checked: the end record, the central directory (under
    ``limits.max_directory_size``), entry checks, then ``manifest.json`` alone
    (under ``limits.max_manifest_size``). PackageError for anything else.
    """
    limits = limits or PackageLimits()
    with open_source(source, limits.max_package_size) as (label, fh, size), open_zip(label, fh, size, limits) as zf:
        info = check_infos(label, zf, limits).get(MANIFEST)
        if info is None:
            raise PackageError(f"{label}: no {MANIFEST}")
        data = bytes(read_entry(zf, info, label, limits.max_manifest_size))
    return Manifest.from_bytes(data)


def _verified_manifest(
    label: str, zf: zipfile.ZipFile, infos: Mapping[str, zipfile.ZipInfo], trusted: Sequence[Ed25519PublicKey],
    limits: PackageLimits,
) -> tuple[Manifest, bytes, str, dict[str, bytes]]:
    """(manifest, its bytes, signer, the other metadata entries): nothing else is read before this."""
    sig_info, man_info = infos.get(SIGNATURE), infos.get(MANIFEST)
    if sig_info is None:
        raise SignatureError(f"{label}: unsigned (no {SIGNATURE})")
    if man_info is None:
        raise PackageError(f"{label}: no {MANIFEST}")
    sigs = parse_signatures(bytes(read_entry(zf, sig_info, label, limits.max_signature_size)), label,
                            limits.max_signatures)
    known = _trusted_signatures(sigs, trusted, label)  # before the manifest is even read
    if man_info.file_size > limits.max_manifest_size:
        raise OversizedEntryError(f"{label}: {MANIFEST} is larger than {limits.max_manifest_size}")
    manifest_bytes = bytes(read_entry(zf, man_info, label, limits.max_manifest_size))
    signer = _check_signatures(manifest_bytes, known, label)
    manifest = Manifest.from_bytes(manifest_bytes)
    if manifest.to_bytes() != manifest_bytes:
        raise PackageError(f"{label}: {MANIFEST} is not in canonical form")
    meta = {SIGNATURE: bytes(read_entry(zf, sig_info, label, limits.max_signature_size))}
    enc_info = infos.get(ENCRYPTION)
    if enc_info is not None:
        meta[ENCRYPTION] = bytes(read_entry(zf, enc_info, label, limits.max_manifest_size))
    return manifest, manifest_bytes, signer, meta


def _unlisted_entries(
    label: str, manifest: Manifest, infos: Mapping[str, zipfile.ZipInfo], limits: PackageLimits
) -> list[str]:
    """The envelope entries; any other entry the signed manifest does not list is refused."""
    listed = manifest.all_paths()
    envelopes = []
    for name, info in infos.items():
        if name in listed or name in _META:
            continue
        if not ENVELOPE_NAME.match(name):
            raise UnsafeEntryError(f"{label}: entry {name!r} is not listed in the manifest")
        if info.file_size > limits.max_envelope_size:
            raise OversizedEntryError(f"{label}: envelope {name!r} is over {limits.max_envelope_size} bytes")
        envelopes.append(name)
    if len(envelopes) > limits.max_envelopes:
        raise OversizedEntryError(f"{label}: {len(envelopes)} key envelopes exceeds {limits.max_envelopes}")
    return envelopes


def _read_listed(
    label: str, zf: zipfile.ZipFile, infos: Mapping[str, zipfile.ZipInfo], manifest: Manifest,
    encryption: Mapping[str, EncryptionInfo], limits: PackageLimits,
) -> dict[str, Blob]:
    """Every file the manifest lists, each checked against its signed size (before reading) and hash."""
    out: dict[str, Blob] = {}
    for path, signed in manifest.all_paths().items():
        info = infos.get(path)
        if info is None:
            raise IntegrityError(f"{label}: {path} is missing")
        # Ciphertext is checked here; the plaintext hash when it is decrypted.
        enc = encryption.get(path)
        digest, size = (enc.sha256, enc.size) if enc is not None else signed
        if info.file_size != size:
            raise IntegrityError(f"{label}: {path} does not match the signed manifest hash (size)")
        data = read_entry(zf, info, label, limits.max_entry_size)
        if len(data) != size or sha256_hex(data) != digest:
            raise IntegrityError(f"{label}: {path} does not match the signed manifest hash")
        out[path] = data
    return out


def _read_envelopes(
    label: str, zf: zipfile.ZipFile, infos: Mapping[str, zipfile.ZipInfo], names: Sequence[str],
    manifest: Manifest, encryption: Mapping[str, EncryptionInfo], limits: PackageLimits,
) -> dict[str, Blob]:
    """Envelope entries, each parsed and matching its name, this package and an encrypted artifact."""
    from .encryption import check_envelope_entry  # encryption builds on this module

    out: dict[str, Blob] = {}
    for name in names:
        data = bytes(read_entry(zf, infos[name], label, limits.max_envelope_size))
        check_envelope_entry(name, data, manifest, encryption, label)
        out[name] = data
    return out


def verify_signature(
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted: Sequence[Ed25519PublicKey],
    label: str = "package",
    max_signatures: int = 16,
) -> str:
    """Check ``signature.json`` over the manifest; return the trusted signer's key id."""
    if signature_bytes is None:
        raise SignatureError(f"{label}: unsigned (no {SIGNATURE})")
    sigs = parse_signatures(signature_bytes, label, max_signatures)
    return _check_signatures(manifest_bytes, _trusted_signatures(sigs, trusted, label), label)


def parse_signatures(data: bytes, label: str = "package", max_signatures: int = 16) -> list[tuple[str, bytes]]:
    """(key id, Ed25519 signature) pairs of ``signature.json``; malformed or too many is a SignatureError."""
    try:
        doc = json.loads(data)
        raw = doc["signatures"]
        if not isinstance(raw, list):
            raise TypeError("signatures is not a list")
        if len(raw) > max_signatures:
            raise SignatureError(f"{label}: {SIGNATURE} holds {len(raw)} signatures, over {max_signatures}")
        sigs = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in raw]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SignatureError(f"{label}: {SIGNATURE} is malformed") from exc
    for kid, sig in sigs:
        if not isinstance(kid, str) or len(kid) != 64 or len(sig) != 64:
            raise SignatureError(f"{label}: {SIGNATURE} is malformed (key ids are 64 hex digits, "
                                 "signatures 64 bytes)")
    return sigs


def _trusted_signatures(
    sigs: Sequence[tuple[str, bytes]], trusted: Sequence[Ed25519PublicKey], label: str
) -> list[tuple[Ed25519PublicKey, str, bytes]]:
    if not trusted:
        raise UntrustedSignerError(f"{label}: no trusted publisher keys were given")
    by_id = {key_id(k): k for k in trusted}
    known = [(by_id[kid], kid, sig) for kid, sig in sigs if kid in by_id]
    if not known:
        signers = ", ".join(k[:12] for k, _ in sigs) or "none"
        raise UntrustedSignerError(f"{label}: signed by no trusted key ({signers})")
    return known


def _check_signatures(manifest_bytes: bytes, known: Sequence[tuple[Ed25519PublicKey, str, bytes]],
                      label: str) -> str:
    for key, kid, sig in known:
        try:
            key.verify(sig, manifest_bytes)
            return kid
        except InvalidSignature:
            continue
    raise SignatureError(f"{label}: signature does not match {MANIFEST}")


def _parse_encryption(data: bytes | None, manifest: Manifest, label: str) -> dict[str, EncryptionInfo]:
    if data is None:
        return {}
    try:
        doc = json.loads(data)
        if doc.get("alg") != "AES-256-GCM":
            raise ValueError(f"unsupported alg {doc.get('alg')!r}")
        out = {
            str(path): EncryptionInfo(
                base64.b64decode(e["nonce"], validate=True), str(e["sha256"]), int(e["size"])
            )
            for path, e in doc["artifacts"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackageError(f"{label}: {ENCRYPTION} is malformed ({exc})") from exc
    artifact_paths = {a.path for a in manifest.artifacts}
    for path in out:
        if path not in artifact_paths:
            raise PackageError(f"{label}: {ENCRYPTION} names {path!r}, which is not an artifact")
    return out
