"""Data keys at rest and the HPKE envelopes that hand them to nodes.

Each artifact's AES data key is kept wrapped with the data directory's key-
encryption key (AES-GCM, bound to the package id and artifact). A node gets
envelopes only for a version assigned to it: when a rollout, a rollback or
its enrollment assigns it one, the data keys are sealed to the node's X25519
key (:func:`edgerec.sdk.encryption.seal_data_key`, whose HPKE ``info`` binds
node id, package, version and artifact); the node API hands them out only
while that assignment stands. One ciphertext for the fleet, a small envelope
per assigned node, none for the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sdk.encryption import seal_data_key
from edgerec.sdk.keys import public_key_from_pem
from edgerec.sdk.manifest import canonical_json
from edgerec.sync.service.store.models import DataKey, EnvelopeRow, Node, PackageVersion


def _aad(package_id: int, artifact: str) -> bytes:
    return canonical_json({"ctx": "edgerec/data-key/v1", "package_id": package_id, "artifact": artifact})


def wrap_data_key(kek: AESGCM, package_id: int, artifact: str, key: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + kek.encrypt(nonce, key, _aad(package_id, artifact))


def unwrap_data_key(kek: AESGCM, package_id: int, artifact: str, wrapped: bytes) -> bytes:
    return kek.decrypt(wrapped[:12], wrapped[12:], _aad(package_id, artifact))


def recipient_key(node: Node) -> X25519PublicKey:
    key = public_key_from_pem(node.recipient_key, "x25519", source=f"node {node.id}")
    assert isinstance(key, X25519PublicKey)
    return key


def seal(node: Node, package: PackageVersion, data_keys: Mapping[str, bytes]) -> list[EnvelopeRow]:
    """Envelope rows for one node, one for each artifact of ``package``."""
    pub = recipient_key(node)
    return [
        EnvelopeRow(
            node_id=node.id,
            package_id=package.id,
            artifact=art,
            data=seal_data_key(key, node.id, pub, package.name, package.version, art).to_bytes(),
        )
        for art, key in sorted(data_keys.items())
    ]


def data_keys(session: Session, kek: AESGCM, package: PackageVersion) -> dict[str, bytes]:
    rows = session.execute(select(DataKey).where(DataKey.package_id == package.id)).scalars()
    return {r.artifact: unwrap_data_key(kek, package.id, r.artifact, r.wrapped) for r in rows}


def seal_missing(session: Session, kek: AESGCM, node: Node, package: PackageVersion) -> tuple[list[bytes], int]:
    """A node's envelopes for a package (sealing any still missing) and how many were sealed now.

    Callers check first that the version is assigned to the node.
    """
    rows = list(
        session.execute(
            select(EnvelopeRow).where(EnvelopeRow.node_id == node.id, EnvelopeRow.package_id == package.id)
        ).scalars()
    )
    new: list[EnvelopeRow] = []
    if len(rows) != len(package.artifacts):
        have = {r.artifact for r in rows}
        keys = {a: k for a, k in data_keys(session, kek, package).items() if a not in have}
        new = seal(node, package, keys)
        session.add_all(new)
        session.flush()
        rows += new
    return [r.data for r in sorted(rows, key=lambda r: r.artifact)], len(new)
