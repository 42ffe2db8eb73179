"""The ``.edgepkg`` file: build and sign one, open and verify one.

A package is a zip holding ``manifest.json`` (canonical JSON, the signed
document), ``signature.json`` and the files the manifest lists with their
SHA-256 and size. Encrypted packages add ``encryption.json`` (nonces and
ciphertext hashes) and may carry per-recipient key envelopes under
``envelopes/``; see :mod:`edgerec.sdk.encryption`.

:meth:`Package.open` verifies before it trusts, in this order: zip structure
and limits (entry count, sizes, paths, duplicates), the signature over the
raw manifest bytes against the trusted keys, then every file's hash.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import __version__
from .errors import (
    DuplicateEntryError,
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
# Fixed zip timestamps make a package's bytes depend only on its content.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
# Entries at least this large are read in chunks into memory no Python code has touched yet
# (see _read_bounded); smaller ones are plain bytes.
_CHUNK = 1 << 20

Blob = bytes | memoryview
"""An entry's bytes: large artifacts are read-only memoryviews, so loading them copies nothing."""


@dataclass(frozen=True)
class PackageLimits:
    """Bounds a reader enforces before it trusts anything in a package."""

    max_package_size: int = 4 * 1024**3
    max_entries: int = 4096
    max_entry_size: int = 2 * 1024**3
    max_total_size: int = 4 * 1024**3
    max_manifest_size: int = 4 * 1024**2
    max_compression_ratio: int = 200

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


def _load_npz(data: bytes, where: str) -> dict[str, npt.NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
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
    raw: bytes
    _entries: dict[str, Blob] = field(repr=False)
    encryption: dict[str, EncryptionInfo] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike[str] | bytes,
        trusted_keys: Sequence[Ed25519PublicKey] | Ed25519PublicKey,
        limits: PackageLimits | None = None,
    ) -> Package:
        """Read and verify a package from a path or bytes.

        Raises PackageError (and its subclasses UnsafeEntryError, SignatureError,
        IntegrityError) for anything not exactly as the publisher signed it.
        """
        limits = limits or PackageLimits()
        trusted = [trusted_keys] if isinstance(trusted_keys, Ed25519PublicKey) else list(trusted_keys)
        label, raw = _read_source(source, limits)
        entries = _read_entries(label, raw, limits)
        if MANIFEST not in entries:
            raise PackageError(f"{label}: no {MANIFEST}")
        if len(entries[MANIFEST]) > limits.max_manifest_size:
            raise OversizedEntryError(f"{label}: {MANIFEST} is larger than {limits.max_manifest_size}")
        meta = {name: bytes(entries[name]) for name in _META if name in entries}
        manifest_bytes = meta[MANIFEST]
        signer = verify_signature(manifest_bytes, meta.get(SIGNATURE), trusted, label)
        manifest = Manifest.from_bytes(manifest_bytes)
        if manifest.to_bytes() != manifest_bytes:
            raise PackageError(f"{label}: {MANIFEST} is not in canonical form")
        encryption = _parse_encryption(meta.get(ENCRYPTION), manifest, label)
        _check_files(label, manifest, entries, encryption)
        return cls(manifest, signer, raw, entries, encryption)

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
        """Key envelopes carried in the package, by entry name."""
        return {k: bytes(v) for k, v in self._entries.items() if k.startswith(ENVELOPE_DIR)}

    def vocabulary(self, path: str) -> Vocabulary:
        return Vocabulary.from_bytes(self.file_bytes(path), where=path)

    def item_table(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.manifest.item_table
        return None if path is None else _load_npz(self.file_bytes(path), path)

    def warmup(self) -> dict[str, npt.NDArray[Any]] | None:
        path = self.manifest.warmup
        return None if path is None else _load_npz(self.file_bytes(path), path)


def _read_source(source: str | os.PathLike[str] | bytes, limits: PackageLimits) -> tuple[str, bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        raw = bytes(source)
        label = "package"
    else:
        label = str(source)
        try:
            size = os.path.getsize(source)
            if size > limits.max_package_size:
                raise OversizedEntryError(f"{label}: {size} bytes exceeds {limits.max_package_size}")
            # Unbuffered: a buffered read() of a large file copies it again while holding the GIL,
            # which stalls every serving thread of an edge server loading a new version.
            with open(source, "rb", buffering=0) as fh:
                raw = fh.readall()
        except OSError as exc:
            raise PackageError(f"{label}: cannot read ({exc.strerror})") from exc
    if len(raw) > limits.max_package_size:
        raise OversizedEntryError(f"{label}: {len(raw)} bytes exceeds {limits.max_package_size}")
    return label, raw


def _read_entries(label: str, raw: bytes, limits: PackageLimits) -> dict[str, Blob]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise PackageError(f"{label}: not a package (bad or truncated zip: {exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise OversizedEntryError(f"{label}: {len(infos)} entries exceeds {limits.max_entries}")
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if name in seen:
                raise DuplicateEntryError(f"{label}: duplicate entry {name!r}")
            seen.add(name)
            check_path(name, label)
            if info.is_dir():
                raise UnsafeEntryError(f"{label}: unexpected folder entry {name!r}")
            if info.file_size > limits.max_entry_size:
                raise OversizedEntryError(
                    f"{label}: entry {name!r} is {info.file_size} bytes, over {limits.max_entry_size}"
                )
            ratio_cap = max(info.compress_size, 1) * limits.max_compression_ratio
            if info.file_size > ratio_cap and info.file_size > 1024 * 1024:
                raise OversizedEntryError(f"{label}: entry {name!r} has a suspicious compression ratio")
            total += info.file_size
            if total > limits.max_total_size:
                raise OversizedEntryError(f"{label}: contents exceed {limits.max_total_size} bytes")
        entries: dict[str, Blob] = {}
        for info in infos:
            entries[info.filename] = _read_bounded(zf, info, label, limits.max_entry_size)
    return entries


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, limit: int) -> Blob:
    # The header's size can lie; read at most one byte past the limit to find out.
    want = min(limit, info.file_size) + 1
    try:
        with zf.open(info) as fh:
            data = fh.read(want) if want <= _CHUNK else _read_chunks(fh, want)
    except zipfile.BadZipFile as exc:
        raise IntegrityError(f"{label}: entry {info.filename!r} is corrupt ({exc})") from exc
    except (EOFError, OSError, ValueError) as exc:
        raise PackageError(f"{label}: entry {info.filename!r} is truncated ({exc})") from exc
    if len(data) > info.file_size:
        raise OversizedEntryError(f"{label}: entry {info.filename!r} is larger than its header says")
    return data


def _read_chunks(fh: Any, want: int) -> memoryview:
    """Read a large entry a chunk at a time into fresh, untouched memory.

    One ``read`` of a 50 MB entry joins its pieces and faults in every page of
    the result while holding the GIL: 30-40 ms in which an edge server's
    request threads cannot run. Here the GIL is held for one chunk at a time.
    """
    out = np.empty(want, np.uint8)  # not zeroed: pages are faulted in by the copies below
    view = out.data
    n = 0
    while n < want:
        chunk = fh.read(min(_CHUNK, want - n))
        if not chunk:
            break
        view[n:n + len(chunk)] = chunk
        n += len(chunk)
    return view[:n].toreadonly()


def verify_signature(
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted: Sequence[Ed25519PublicKey],
    label: str = "package",
) -> str:
    """Check ``signature.json`` over the manifest; return the trusted signer's key id."""
    if signature_bytes is None:
        raise SignatureError(f"{label}: unsigned (no {SIGNATURE})")
    try:
        doc = json.loads(signature_bytes)
        sigs = [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in doc["signatures"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{label}: {SIGNATURE} is malformed") from exc
    if not trusted:
        raise UntrustedSignerError(f"{label}: no trusted publisher keys were given")
    by_id = {key_id(k): k for k in trusted}
    known = [(kid, sig) for kid, sig in sigs if kid in by_id]
    if not known:
        signers = ", ".join(k[:12] for k, _ in sigs) or "none"
        raise UntrustedSignerError(f"{label}: signed by no trusted key ({signers})")
    for kid, sig in known:
        try:
            by_id[kid].verify(sig, manifest_bytes)
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


def _check_files(
    label: str, manifest: Manifest, entries: Mapping[str, Blob], encryption: Mapping[str, EncryptionInfo]
) -> None:
    listed = manifest.all_paths()
    for name in entries:
        if name not in listed and name not in _META and not name.startswith(ENVELOPE_DIR):
            raise UnsafeEntryError(f"{label}: entry {name!r} is not listed in the manifest")
    for path, (signed_digest, signed_size) in listed.items():
        if path not in entries:
            raise IntegrityError(f"{label}: {path} is missing")
        digest, size = signed_digest, signed_size
        if path in encryption:
            # Ciphertext is checked here; the plaintext hash when it is decrypted.
            digest, size = encryption[path].sha256, encryption[path].size
        data = entries[path]
        if len(data) != size or sha256_hex(data) != digest:
            raise IntegrityError(f"{label}: {path} does not match the signed manifest hash")
