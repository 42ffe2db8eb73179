"""Publishing: verify a package, encrypt it once for the fleet, seal keys per node, add the target.

The upload must be the plaintext package signed by a publisher key that the
root metadata trusts. The service encrypts every artifact (one AES-256-GCM
ciphertext for all nodes), stores the result once in the blob store, keeps
the data keys wrapped with its key-encryption key and adds the target to the
channel's TUF role. No node gets a key yet: envelopes are sealed per node
when a rollout (or rollback) assigns the version to it (:mod:`.envelopes`). The same
version may be published on more channels (the blob is reused); the same
name and version with other content is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root

from edgerec.sdk.encryption import encrypt_package
from edgerec.sdk.errors import PackageError, SignatureError
from edgerec.sdk.manifest import check_name
from edgerec.sdk.package import MANIFEST, Package
from edgerec.sync.protocol.errors import BadRequestError, ConflictError, UntrustedPackageError
from edgerec.sync.protocol.trust import TrustInfo
from edgerec.sync.service.store.models import MAX_BIGINT, ChannelTarget, DataKey, PackageVersion

from .blobs import Blobs, BlobStore
from .envelopes import wrap_data_key
from .online_keys import OnlineKeys
from .store import Database
from .tuf_repo import TufRepository, target_path


@dataclass(frozen=True)
class PublishResult:
    name: str
    version: int
    channel: str
    target: str
    sha256: str
    size: int
    signer: str
    new_version: bool


def trust_info(repo: TufRepository, session: Session) -> TrustInfo:
    """Publisher and assignment keys of the current root."""
    return TrustInfo.from_root(Metadata[Root].from_bytes(repo.root_bytes(session)).signed)


class Publisher:
    def __init__(self, db: Database, repo: TufRepository, blobs: Blobs, keys: OnlineKeys) -> None:
        self.db = db
        self.repo = repo
        self.blobs = blobs
        self.keys = keys

    def publish(self, upload: Path, channel: str) -> PublishResult:
        """Publish the package at ``upload`` (a verified temporary file) on ``channel``."""
        try:
            check_name(channel, "channel")
        except PackageError as exc:
            raise BadRequestError(str(exc)) from exc
        with self.db.read() as session:
            trust = trust_info(self.repo, session)
        pkg = self._open(upload, trust)
        m = pkg.manifest
        if m.version > MAX_BIGINT:
            raise BadRequestError(f"a package version is at most {MAX_BIGINT}", field="version")
        manifest_sha = hashlib.sha256(pkg.stored_bytes(MANIFEST)).hexdigest()
        path = target_path(channel, m.name, m.version)
        with self.db.read() as session:
            existing = self._existing(session, m.name, m.version, manifest_sha, channel)
        if existing is None:
            enc = encrypt_package(pkg)
            sha, size, keys = self.blobs.put_bytes(enc.data), len(enc.data), enc.data_keys
        else:
            sha, size, keys = existing.blob_sha256, existing.size, {}
        # The target file exists before any metadata names it (a stateless replica serves it from the database).
        if self.repo.datadir is not None and isinstance(self.blobs, BlobStore):
            self.blobs.link(sha, self.repo.datadir.targets / channel / m.name / f"{sha}.{m.version}.edgepkg")
        try:
            with self.db.write() as session:
                package = existing or self._add_version(session, pkg, manifest_sha, sha, size, keys)
                session.add(ChannelTarget(package_id=package.id, channel=channel, target_path=path,
                                          created=time.time()))
                session.flush()
                written = self.repo.add_target(session, channel, path, size, sha)
        except IntegrityError as exc:
            # Another process published the same version between our check and our write.
            raise ConflictError(f"{m.name} version {m.version} is already published") from exc
        self.repo.materialize(written)
        return PublishResult(m.name, m.version, channel, path, sha, size, pkg.signer, existing is None)

    def _open(self, upload: Path, trust: TrustInfo) -> Package:
        try:
            pkg = Package.open(upload, list(trust.publisher_keys.values()))
        except SignatureError as exc:
            raise UntrustedPackageError(str(exc).replace(str(upload), "package")) from exc
        except PackageError as exc:
            raise BadRequestError(str(exc).replace(str(upload), "package")) from exc
        if pkg.encrypted:
            raise BadRequestError("package is already encrypted: publish the signed plaintext package")
        return pkg

    def _existing(
        self, session: Session, name: str, version: int, manifest_sha: str, channel: str
    ) -> PackageVersion | None:
        row = session.execute(
            select(PackageVersion).where(PackageVersion.name == name, PackageVersion.version == version)
        ).scalar_one_or_none()
        if row is None:
            return None
        if row.manifest_sha256 != manifest_sha:
            raise ConflictError(f"{name} version {version} is already published with other content")
        on = session.execute(
            select(ChannelTarget.id).where(ChannelTarget.package_id == row.id, ChannelTarget.channel == channel)
        ).first()
        if on is not None:
            raise ConflictError(f"{name} version {version} is already published on channel {channel!r}")
        return row

    def _add_version(
        self, session: Session, pkg: Package, manifest_sha: str, sha: str, size: int,
        keys: dict[str, bytes],
    ) -> PackageVersion:
        m = pkg.manifest
        package = PackageVersion(
            name=m.name, version=m.version, manifest_sha256=manifest_sha, blob_sha256=sha, size=size,
            signer=pkg.signer, artifacts=sorted(keys), created=time.time(),
        )
        session.add(package)
        session.flush()
        for art, key in keys.items():
            session.add(DataKey(package_id=package.id, artifact=art,
                                wrapped=wrap_data_key(self.keys.kek, package.id, art, key)))
        session.flush()
        return package
