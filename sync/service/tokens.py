"""Bearer secrets: admin tokens and one-time enrollment tokens.

Tokens are 256 random bits, so a plain SHA-256 is the right way to store
them (a slow password hash protects guessable secrets; these are not). Only
the hash is kept; the lookup by hash leaks nothing about the token.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgerec.sync.protocol.errors import AuthenticationError
from edgerec.sync.service.store.models import AdminToken

ADMIN_PREFIX = "era_"
ENROLL_PREFIX = "ert_"


def new_token(prefix: str) -> str:
    """A fresh secret; the prefix tells a leaked token's kind at a glance."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_admin_token(session: Session, name: str = "admin") -> str:
    """Store a new admin token's hash; return the token (shown once)."""
    token = new_token(ADMIN_PREFIX)
    session.add(AdminToken(token_hash=hash_token(token), name=name, created=time.time()))
    session.flush()
    return token


def check_admin_token(session: Session, token: str | None) -> AdminToken:
    """The admin token row for a bearer token; AuthenticationError if none or revoked."""
    if not token:
        raise AuthenticationError("an admin token is required (Authorization: Bearer ...)")
    row = session.execute(
        select(AdminToken).where(AdminToken.token_hash == hash_token(token))
    ).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        raise AuthenticationError("the admin token is not valid")
    return row
