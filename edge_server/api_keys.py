"""API keys for the inference routes: a file of key hashes, checked in constant time.

The file holds one ``NAME sha256:HEX`` line per key (``#`` starts a comment),
never a key itself: a copy of the file (a backup, a config repository) lets
no one call the server. Keys are 32 random bytes, so one unsalted SHA-256 is
enough (nothing to guess by dictionary). A client sends its key as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

The server re-reads the file when its modification time or size changes
(looked at most once a second), so a key is added or revoked without a restart;
a file that became unreadable or malformed keeps the keys last read and says so
in the log, rather than locking every client out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgerec.sdk.files import write_atomic

from .errors import ConfigError

log = logging.getLogger("edgerec.edge_server.api_keys")

PREFIX = "erk_"  # recognisable in a leaked log or paste, like other services' key prefixes
_LINE = re.compile(r"^([A-Za-z0-9._-]{1,64})\s+sha256:([0-9a-f]{64})$")
MAX_FILE_BYTES = 1024 * 1024
MAX_KEY_CHARS = 256  # a presented key longer than this is refused before it is hashed
_CHECK_EVERY_S = 1.0


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes


def new_key() -> str:
    """A fresh API key: ``erk_`` and 32 random bytes, base64url."""
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_entries(path: Path) -> list[KeyEntry]:
    """The entries of a key file; a one-line :class:`ConfigError` naming the file and line when malformed."""
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file ({exc.strerror})", field=str(path)) from exc
    if mode & stat.S_IWOTH:
        raise ConfigError(f"the API key file is writable by others (mode {stat.S_IMODE(mode):04o}); "
                          f"run: chmod 600 {path}", field=str(path))
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"the API key file is over {MAX_FILE_BYTES} bytes", field=str(path))
    entries: list[KeyEntry] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise ConfigError(f"line {number}: expected 'NAME sha256:HEX' (64 hex digits)", field=str(path))
        entries.append(KeyEntry(m[1], bytes.fromhex(m[2])))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError("key names must be unique", field=str(path))
    return entries


def add_key(path: Path, name: str) -> str:
    """Append a new key named ``name`` to the file (made 0600 if new); the key, for the caller to hand over."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise ConfigError("1-64 letters, digits, '.', '_' or '-'", field="name")
    entries = read_entries(path) if path.exists() else []
    if any(e.name == name for e in entries):
        raise ConfigError(f"a key named {name!r} exists (revoke it first)", field="name")
    key = new_key()
    entries.append(KeyEntry(name, key_digest(key)))
    _write(path, entries)
    return key


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named ``name`` from the file."""
    entries = read_entries(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        raise ConfigError(f"no key named {name!r}", field="name")
    _write(path, kept)


def _write(path: Path, entries: list[KeyEntry]) -> None:
    text = "# edgerec API keys: NAME sha256:HEX (hashes only; see `edgerec api-key --help`)\n"
    text += "".join(f"{e.name} sha256:{e.digest.hex()}\n" for e in entries)
    write_atomic(path, text.encode(), mode=0o600)


class ApiKeys:
    """The keys the inference routes accept, from a key file kept up to date."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries = read_entries(path)  # a bad file at start is a startup error
        self._seen = self._signature()
        self._checked = time.monotonic()

    def _signature(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < _CHECK_EVERY_S:
            return
        with self._lock:
            if now - self._checked < _CHECK_EVERY_S:
                return
            self._checked = now
            sig = self._signature()
            if sig == self._seen:
                return
            self._seen = sig
            try:
                self._entries = read_entries(self.path)
                log.info("API keys reloaded", extra={"keys": len(self._entries)})
            except ConfigError as exc:
                log.error("API key file not reloaded, the keys read before stay: %s", exc)

    def check(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` is, or None. Compares with every key, in constant time each."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        self._refresh()
        digest = key_digest(presented)
        found = None
        for entry in self._entries:  # no early exit: the time does not say which entry matched
            if hmac.compare_digest(digest, entry.digest):
                found = entry.name
        return found


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: ``X-API-Key``, else a bearer token."""
    if x_api_key:
        return x_api_key.strip()
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


__all__ = ["PREFIX", "ApiKeys", "KeyEntry", "add_key", "key_digest", "new_key", "presented_key", "read_entries",
           "revoke_key"]
