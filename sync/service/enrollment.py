"""Enrollment: one-time tokens in, node identities out.

A token is consumed with one conditional UPDATE (unused and unexpired), so two
service processes can never enroll two nodes with the same token.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edgerec.sdk.errors import KeyFileError, PackageError
from edgerec.sdk.keys import public_key_from_pem, public_pem
from edgerec.sdk.manifest import check_name
from edgerec.sync.protocol.errors import AuthenticationError, BadRequestError
from edgerec.sync.service.store.models import EnrollToken, Node

from .tokens import ENROLL_PREFIX, hash_token, new_token


@dataclass(frozen=True)
class CreatedToken:
    token: str
    tags: list[str]
    expires: float


def check_tags(tags: list[str]) -> list[str]:
    """Tags are names (lower case, digits, ``.``, ``_``, ``-``); sorted and unique."""
    try:
        return sorted({check_name(t, "tag") for t in tags})
    except PackageError as exc:
        raise BadRequestError(str(exc)) from exc


def create_token(session: Session, tags: list[str], expires_s: float) -> CreatedToken:
    """A new one-time enrollment token; only its hash is stored."""
    if expires_s <= 0:
        raise BadRequestError("expires: must be > 0 seconds")
    token = new_token(ENROLL_PREFIX)
    now = time.time()
    clean = check_tags(tags)
    session.add(EnrollToken(token_hash=hash_token(token), tags=clean, created=now, expires=now + expires_s))
    session.flush()
    return CreatedToken(token, clean, now + expires_s)


def parse_node_keys(signing_pem: object, recipient_pem: object) -> tuple[Ed25519PublicKey, X25519PublicKey]:
    """The node's Ed25519 (request signing) and X25519 (key wrapping) public keys."""
    if not isinstance(signing_pem, str) or not isinstance(recipient_pem, str):
        raise BadRequestError("PEM strings are required (signing_key and recipient_key)",
                              field="signing_key" if not isinstance(signing_pem, str) else "recipient_key")
    try:
        signing = public_key_from_pem(signing_pem, "ed25519", source="signing_key")
        recipient = public_key_from_pem(recipient_pem, "x25519", source="recipient_key")
    except KeyFileError as exc:
        field = "signing_key" if str(exc).startswith("signing_key") else "recipient_key"
        raise BadRequestError(str(exc).removeprefix(f"{field}: "), field=field) from exc
    assert isinstance(signing, Ed25519PublicKey) and isinstance(recipient, X25519PublicKey)
    return signing, recipient


def enroll(session: Session, token: object, signing_pem: object, recipient_pem: object, name: object) -> Node:
    """Consume ``token`` and create a node with the given public keys."""
    if not isinstance(token, str) or not token:
        raise AuthenticationError("an enrollment token is required")
    signing, recipient = parse_node_keys(signing_pem, recipient_pem)
    now = time.time()
    h = hash_token(token)
    consumed = session.execute(
        update(EnrollToken)
        .where(EnrollToken.token_hash == h, EnrollToken.used_at.is_(None), EnrollToken.expires > now)
        .values(used_at=now)
        .returning(EnrollToken.id)
    ).first()
    if consumed is None:
        row = session.execute(select(EnrollToken).where(EnrollToken.token_hash == h)).scalar_one_or_none()
        if row is None:
            raise AuthenticationError("the enrollment token is not valid")
        if row.used_at is not None:
            raise AuthenticationError("the enrollment token was already used")
        raise AuthenticationError("the enrollment token has expired")
    row = session.execute(select(EnrollToken).where(EnrollToken.token_hash == h)).scalar_one()
    node_id = "n" + secrets.token_hex(8)
    label = name if isinstance(name, str) and name else node_id
    node = Node(
        id=node_id,
        name=label[:64],
        signing_key=public_pem(signing).decode(),
        recipient_key=public_pem(recipient).decode(),
        tags=list(row.tags),
        enrolled=now,
    )
    session.add(node)
    row.node_id = node_id
    session.flush()
    return node
