"""Signed assignments: which version of a model a node should run.

An assignment is canonical JSON, signed with the service's online assignment
key (whose public half the offline root lists, see :mod:`.trust`)::

    {"signed": {"type": "edgerec/assignment/v1", "node", "model", "version",
                "channel", "target", "serial", "rollback", "issued", "expires",
                ["experiments": [{"name", "salt", "variants": [{"name", "version", "weight"}]}],
                 "extras": [{"version", "target"}], "repo_url"]},
     "signatures": [{"keyid", "sig"}]}

``experiments`` are the A/B experiments of this model the node runs, and
``extras`` the other versions they need installed next to ``version`` (each
with its target); both are left out when empty, so an assignment without
experiments is the same document as before they existed. The signature
covers them: a node runs only experiments its service signed.

``repo_url`` is where the service wants its nodes to fetch the TUF
repository (:mod:`.origin`: a static origin's URL, or ``/repository`` for the
service itself); left out when the service names none. Being signed, only the
service can move a node to another origin, and the node still checks that
origin through TUF before it switches (:mod:`edgerec.sync.node.origin`).

Fields a node does not know are ignored, so a newer service can add fields
for newer nodes; one that an older node must not ignore is named in the
optional ``critical`` list, and a node that does not know it refuses the
assignment.

``serial`` grows with every change of any node's desired state, so a node
refuses an assignment older than one it accepted (a replay). A lower version
than installed is accepted only with ``rollback: true``. Verification here
does no IO (as python-tuf's ``TrustedMetadataSet``); the daemon does the IO.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgerec.sdk.keys import key_id
from edgerec.sdk.manifest import canonical_json

from .errors import (
    AssignmentError,
    AssignmentExpiredError,
    AssignmentReplayError,
    AssignmentSignatureError,
    ConfigError,
    DowngradeError,
)
from .origin import check_origin

TYPE = "edgerec/assignment/v1"
MAX_EXPERIMENTS = 16
MAX_VARIANTS = 16


@dataclass(frozen=True)
class Extra:
    """Another version of the model the node keeps installed (an experiment's variant)."""

    version: int
    target: str


@dataclass(frozen=True)
class Assignment:
    """The signed part of an assignment."""

    node: str
    model: str
    version: int
    channel: str
    target: str
    serial: int
    rollback: bool
    issued: int
    expires: int
    # [{"name", "salt", "variants": [{"name", "version", "weight"}]}]: the edge server's experiment documents
    experiments: tuple[dict[str, Any], ...] = ()
    extras: tuple[Extra, ...] = ()
    repo_url: str = ""  # the repository origin the service names (edgerec.sync.protocol.origin); "" for none

    def to_dict(self) -> dict[str, Any]:
        doc = {"type": TYPE, **asdict(self)}
        for key in OPTIONAL:
            if doc[key]:
                doc[key] = list(doc[key]) if isinstance(doc[key], tuple) else doc[key]
            else:
                del doc[key]
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Assignment:
        if not isinstance(doc, dict) or doc.get("type") != TYPE:
            raise AssignmentError(f"assignment: not an {TYPE} document")
        try:
            out = cls(
                node=_typed(doc, "node", str), model=_typed(doc, "model", str),
                version=_typed(doc, "version", int), channel=_typed(doc, "channel", str),
                target=_typed(doc, "target", str), serial=_typed(doc, "serial", int),
                rollback=_typed(doc, "rollback", bool), issued=_typed(doc, "issued", int),
                expires=_typed(doc, "expires", int),
                experiments=_experiments(doc.get("experiments", [])), extras=_extras(doc.get("extras", [])),
                repo_url=_repo_url(doc.get("repo_url", "")),
            )
        except KeyError as exc:
            raise AssignmentError(f"assignment: missing field {exc}") from exc
        _check_critical(doc.get("critical", []), {"type", "critical", *asdict(out)})
        return out


def _check_critical(critical: Any, known: set[str]) -> None:
    """Refuse an assignment whose ``critical`` list names a field this node does not know.

    Other fields a node does not know are ignored: they come from a newer
    service (the signature covers them), and an older node does what it
    understands, as TUF clients keep unrecognised fields. A field that must
    not be ignored (one that restricts what a node may do) is named in
    ``critical``, so such a node refuses the assignment and keeps what it runs.
    """
    if not isinstance(critical, list) or len(critical) > 64 or not all(isinstance(c, str) for c in critical):
        raise AssignmentError("assignment.critical: expected a list of field names")
    missing = sorted(set(critical) - known)
    if missing:
        names = ", ".join(repr(m[:64]) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise AssignmentError(f"assignment: needs fields this node does not know ({names}); upgrade the node")


#: Fields left out of the document when empty: an assignment without them is the document it was before them.
OPTIONAL = ("experiments", "extras", "repo_url")


def _repo_url(raw: Any) -> str:
    if raw == "":
        return ""
    if not isinstance(raw, str):
        raise AssignmentError("assignment.repo_url: expected a string")
    try:
        return check_origin(raw, "assignment.repo_url")
    except ConfigError as exc:
        raise AssignmentError(str(exc)) from exc


def _experiments(raw: Any) -> tuple[dict[str, Any], ...]:
    """The experiments' shape (the edge server checks names and weights again when it runs them)."""
    if not isinstance(raw, list) or len(raw) > MAX_EXPERIMENTS:
        raise AssignmentError(f"assignment.experiments: expected a list of at most {MAX_EXPERIMENTS}")
    out = []
    for i, e in enumerate(raw):
        where = f"assignment.experiments[{i}]"
        if not isinstance(e, dict) or set(e) != {"name", "salt", "variants"} or not isinstance(e["name"], str) \
                or not isinstance(e["salt"], str):
            raise AssignmentError(f"{where}: expected name, salt and variants")
        variants = e["variants"]
        if not isinstance(variants, list) or not 1 <= len(variants) <= MAX_VARIANTS or not all(
                isinstance(v, dict) and set(v) == {"name", "version", "weight"} and isinstance(v["name"], str)
                and isinstance(v["version"], int) and not isinstance(v["version"], bool)
                and isinstance(v["weight"], int | float) and not isinstance(v["weight"], bool) for v in variants):
            raise AssignmentError(f"{where}.variants: expected up to {MAX_VARIANTS} of name, version, weight")
        out.append(e)
    return tuple(out)


def _extras(raw: Any) -> tuple[Extra, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_EXPERIMENTS * MAX_VARIANTS:
        raise AssignmentError("assignment.extras: expected a list")
    out = []
    for i, x in enumerate(raw):
        if not isinstance(x, dict) or set(x) != {"version", "target"} or not isinstance(x["target"], str) \
                or not isinstance(x["version"], int) or isinstance(x["version"], bool):
            raise AssignmentError(f"assignment.extras[{i}]: expected version and target")
        out.append(Extra(x["version"], x["target"]))
    return tuple(out)


def _typed(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc[key]
    # bool is an int in Python; keep the two apart.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AssignmentError(f"assignment.{key}: expected {kind.__name__}")
    return value


def sign_assignment(assignment: Assignment, key: Ed25519PrivateKey) -> bytes:
    """The signed assignment document, as bytes."""
    signed = canonical_json(assignment.to_dict())
    sig = {"keyid": key_id(key.public_key()), "sig": base64.b64encode(key.sign(signed)).decode()}
    return canonical_json({"signed": assignment.to_dict(), "signatures": [sig]})


@dataclass(frozen=True)
class Accepted:
    """What a node remembers of the last assignment it accepted for a model."""

    serial: int
    version: int


def verify_assignment(
    data: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    node_id: str,
    accepted: Accepted | None,
    installed: int | None,
    now: float,
) -> Assignment:
    """Check an assignment for this node; raise an AssignmentError subclass to refuse it.

    Order: signature by a trusted key, addressed to this node, not expired,
    not older than the accepted one, no downgrade without ``rollback``.
    """
    try:
        doc = json.loads(data)
        signed, sigs = doc["signed"], doc["signatures"]
        pairs = [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in sigs]
    except (ValueError, KeyError, TypeError) as exc:
        raise AssignmentError(f"assignment: malformed ({exc})") from exc
    payload = canonical_json(signed)
    if not any(_verifies(trusted.get(kid), sig, payload) for kid, sig in pairs):
        raise AssignmentSignatureError("assignment: not signed by a trusted assignment key")
    a = Assignment.from_dict(signed)
    if a.node != node_id:
        raise AssignmentSignatureError(f"assignment: addressed to node {a.node!r}, not {node_id!r}")
    if a.expires <= now:
        raise AssignmentExpiredError(f"assignment {a.model} serial {a.serial}: expired")
    if accepted is not None:
        if a.serial < accepted.serial:
            raise AssignmentReplayError(
                f"assignment {a.model} serial {a.serial}: older than accepted serial {accepted.serial}"
            )
        if a.serial == accepted.serial and a.version != accepted.version:
            raise AssignmentReplayError(f"assignment {a.model} serial {a.serial}: conflicts with the accepted one")
    if installed is not None and a.version < installed and not a.rollback:
        raise DowngradeError(
            f"assignment {a.model}: version {a.version} is lower than installed {installed} "
            "and is not a signed rollback"
        )
    return a


def _verifies(key: Ed25519PublicKey | None, sig: bytes, payload: bytes) -> bool:
    if key is None:
        return False
    try:
        key.verify(sig, payload)
        return True
    except InvalidSignature:
        return False
