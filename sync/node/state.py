"""A node's state directory: its keys, identity, pinned root and what it has installed.

::

    DIR/keys/signing.key      Ed25519, signs requests (0600; never leaves the node)
    DIR/keys/recipient.key    X25519, opens model key envelopes (0600)
    DIR/node.json             node id and server URLs (0600)
    DIR/root.json             the TUF root pinned at enrollment (the trust anchor)
    DIR/tuf/                  TUF metadata cache (python-tuf's Updater)
    DIR/targets/              verified target files (ciphertext packages)
    DIR/partial/              interrupted downloads, resumed with HTTP ranges
    DIR/status.json           accepted assignments, installed versions, failures
    DIR/trust/<keyid>.pub     the publisher keys the verified TUF root trusts, for the edge
                              server's ``--trusted-key`` (rewritten when the root rotates them)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import generate_keypair, load_recipient_key, load_signing_key, public_pem
from edgerec.sync.protocol.assignments import Accepted
from edgerec.sync.protocol.errors import ConfigError

MAX_PENDING_REPORTS = 20


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    server: str
    metadata_url: str
    targets_url: str
    tags: list[str] = field(default_factory=list)
    ca_cert: str | None = None


@dataclass
class Installed:
    version: int
    path: str
    at: float
    accelerator: str | None = None


@dataclass
class Failure:
    version: int | None
    reason: str
    at: float


@dataclass
class NodeStatus:
    """What the daemon remembers between cycles (and across restarts)."""

    accepted: dict[str, Accepted] = field(default_factory=dict)
    installed: dict[str, Installed] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    pending_reports: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": {k: asdict(v) for k, v in self.accepted.items()},
            "installed": {k: asdict(v) for k, v in self.installed.items()},
            "failures": {k: asdict(v) for k, v in self.failures.items()},
            "pending_reports": self.pending_reports[-MAX_PENDING_REPORTS:],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NodeStatus:
        return cls(
            accepted={k: Accepted(**v) for k, v in doc.get("accepted", {}).items()},
            installed={k: Installed(**v) for k, v in doc.get("installed", {}).items()},
            failures={k: Failure(**v) for k, v in doc.get("failures", {}).items()},
            pending_reports=list(doc.get("pending_reports", [])),
        )


class NodeState:
    """Paths and files of one node's state directory."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)

    @property
    def keys(self) -> Path:
        return self.dir / "keys"

    @property
    def identity_file(self) -> Path:
        return self.dir / "node.json"

    @property
    def root_file(self) -> Path:
        return self.dir / "root.json"

    @property
    def status_file(self) -> Path:
        return self.dir / "status.json"

    @property
    def tuf_dir(self) -> Path:
        return self.dir / "tuf"

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    @property
    def partial_dir(self) -> Path:
        return self.dir / "partial"

    @property
    def trust_dir(self) -> Path:
        return self.dir / "trust"

    @property
    def enrolled(self) -> bool:
        return self.identity_file.exists()

    def ensure_keys(self) -> tuple[bytes, bytes]:
        """The public PEMs of the node's keys, made on first use (private files 0600)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not (self.keys / "signing.key").exists():
            generate_keypair(self.keys, "signing", "ed25519")
            generate_keypair(self.keys, "recipient", "x25519")
            os.chmod(self.keys, 0o700)
        return public_pem(self.signing_key().public_key()), public_pem(self.recipient_key().public_key())

    def signing_key(self) -> Ed25519PrivateKey:
        return load_signing_key(self.keys / "signing.key")

    def recipient_key(self) -> X25519PrivateKey:
        return load_recipient_key(self.keys / "recipient.key")

    def save_identity(self, ident: NodeIdentity, root: bytes) -> None:
        write_atomic(self.root_file, root, mode=0o600)
        write_atomic(self.identity_file, json.dumps(asdict(ident), indent=2).encode(), mode=0o600)

    def identity(self) -> NodeIdentity:
        try:
            return NodeIdentity(**json.loads(self.identity_file.read_text()))
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.dir}: this node is not enrolled (run 'edgerec node enroll')") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.identity_file}: unreadable ({exc})") from exc

    def pinned_root(self) -> bytes:
        try:
            return self.root_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.root_file}: cannot read the pinned root ({exc.strerror})") from exc

    def export_publisher_keys(self, keys: dict[str, bytes]) -> list[Path]:
        """Keep ``trust/<keyid>.pub`` equal to ``keys`` (key id -> PEM); returns the files."""
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        wanted = {self.trust_dir / f"{kid}.pub": pem for kid, pem in keys.items()}
        for path, pem in wanted.items():
            if not path.exists() or path.read_bytes() != pem:
                write_atomic(path, pem, mode=0o644)
        for stale in set(self.trust_dir.glob("*.pub")) - set(wanted):
            stale.unlink(missing_ok=True)
        return sorted(wanted)

    def load_status(self) -> NodeStatus:
        try:
            return NodeStatus.from_dict(json.loads(self.status_file.read_text()))
        except FileNotFoundError:
            return NodeStatus()
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.status_file}: unreadable ({exc})") from exc

    def save_status(self, status: NodeStatus) -> None:
        write_atomic(self.status_file, json.dumps(status.to_dict(), indent=2).encode(), mode=0o600)
