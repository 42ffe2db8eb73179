"""The service's data directory: where keys, blobs, metadata and settings live.

::

    DIR/service.json          database URL and creation time (0600: it may hold a password)
    DIR/keys/                 online keys (0600): targets, snapshot, timestamp, channels,
                              assignment (Ed25519) and kek (AES key wrapping data keys)
    DIR/blobs/sha256/ab/...   content-addressed package store
    DIR/repository/metadata/  TUF metadata, served as static files
    DIR/repository/targets/   TUF targets (hard links into blobs/), served as static files
    DIR/tmp/                  uploads in progress (same file system as blobs/)
    DIR/sync.db               the SQLite database, unless a URL says otherwise

The root keys are not here: ``edgerec admin init`` writes them where the admin
keeps them.

Several replicas do not share this folder: ``edgerec sync migrate --to-database``
moves the keys (wrapped with a replica key) and the blobs into the database
(schema 4), after which each replica runs with ``--db`` and its own
``--key-file`` and keeps nothing here (:mod:`.replica_keys`, :mod:`.db_blobs`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerec.sdk.files import write_atomic
from edgerec.sync.protocol.errors import ConfigError

SERVICE_FILE = "service.json"


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data directory."""

    root: Path

    def __post_init__(self) -> None:
        # Absolute from the start: Flask's instance_path and the stored settings need it.
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def service_file(self) -> Path:
        return self.root / SERVICE_FILE

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def metadata(self) -> Path:
        return self.repository / "metadata"

    @property
    def targets(self) -> Path:
        return self.repository / "targets"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def lock_file(self) -> Path:
        return self.root / "repository.lock"

    def default_db_url(self) -> str:
        return f"sqlite:///{(self.root / 'sync.db').resolve()}"

    def create(self) -> None:
        """Make the folders; refuse a directory that already holds a service."""
        if self.service_file.exists():
            raise ConfigError(f"{self.root}: already initialised (found {SERVICE_FILE})")
        for d in (self.keys, self.blobs, self.metadata, self.targets, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys, 0o700)

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_atomic(self.service_file, json.dumps(settings, indent=2).encode(), mode=0o600)

    def settings(self) -> dict[str, Any]:
        """``service.json``; ConfigError if the directory was never initialised."""
        try:
            doc = json.loads(self.service_file.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{self.root}: not a sync data directory (no {SERVICE_FILE}); run 'edgerec admin init'"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.service_file}: unreadable ({exc})") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.service_file}: expected a JSON object")
        return doc

    def db_url(self, override: str | None = None) -> str:
        return override or str(self.settings().get("db") or self.default_db_url())
