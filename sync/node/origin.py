"""Following the repository origin the service signs into the assignments (``repo_url``).

The node moves to another origin (``edgerec admin repo-url set``, say to a
CDN) only when both hold:

1. the origin comes from assignments that verified (a trusted assignment key,
   addressed to this node, not expired, not a replay): an unsigned or tampered
   document never names one here;
2. the new origin serves the repository: a TUF refresh against it, from the
   node's trusted roots only, loads timestamp, snapshot and targets metadata
   signed under them, and none is older than what the node already trusts
   (an origin that lags behind, or serves nothing, is refused).

Then the new URLs replace the old ones in ``node.json`` (an atomic write) and
one line is logged. A refused switch is logged (one bounded line) and kept in
node.db for ``node status``; the next cycle tries again, and the old origin
keeps serving meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Snapshot, Timestamp
from tuf.ngclient import FetcherInterface, Updater

from edgerec.sdk.http_errors import bounded
from edgerec.sync.protocol.assignments import Assignment
from edgerec.sync.protocol.errors import OriginRefusedError
from edgerec.sync.protocol.origin import origin_urls

from .state import NodeIdentity, NodeState

log = logging.getLogger("edgerec.sync.node")
#: node.db setting: the last origin switch refused ({"url", "reason", "at"}), cleared once the origin is followed.
REFUSED = "origin.refused"
_PROBE = ".origin-probe-"  # the probe's scratch folders in the state directory


def wanted_origin(assignments: Sequence[Assignment]) -> str | None:
    """The origin verified assignments name (the most recently issued one's), or None if none names one."""
    named = [a for a in assignments if a.repo_url]
    return max(named, key=lambda a: a.issued).repo_url if named else None


def follow_origin(state: NodeState, ident: NodeIdentity, assignments: Sequence[Assignment],
                  fetcher: FetcherInterface) -> NodeIdentity | None:
    """Switch to the origin ``assignments`` (verified) name if it serves the repository; the new identity,
    or None when nothing changed (no origin named, the same one, or a refused switch)."""
    origin = wanted_origin(assignments)
    if origin is None:
        return None
    metadata_url, targets_url = origin_urls(origin, ident.server)
    if (metadata_url, targets_url) == (ident.metadata_url, ident.targets_url):
        if state.db.setting(REFUSED):  # the service named this one again: an earlier refusal is moot
            state.db.set_setting(REFUSED, "")
        return None
    try:
        probe_origin(state, metadata_url, targets_url, fetcher)
    except (RepositoryError, DownloadError, OriginRefusedError, OSError) as exc:
        reason = bounded(f"{type(exc).__name__}: {exc}")
        log.warning("repository origin %s refused, still fetching from %s: %s", bounded(metadata_url),
                    ident.metadata_url, reason)
        state.db.set_setting(REFUSED, json.dumps({"url": metadata_url, "reason": reason, "at": time.time()}))
        return None
    new = dataclasses.replace(ident, metadata_url=metadata_url, targets_url=targets_url)
    state.save_origin(new)
    state.db.set_setting(REFUSED, "")
    log.info("repository origin: now %s (was %s)", metadata_url, ident.metadata_url)
    return new


def probe_origin(state: NodeState, metadata_url: str, targets_url: str, fetcher: FetcherInterface) -> None:
    """Raise unless the origin serves the repository under the node's trusted roots, not older than the
    node's trusted metadata (python-tuf's errors, or :class:`OriginRefusedError`)."""
    for stale in state.dir.glob(f"{_PROBE}*"):  # left by a daemon killed while probing
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=state.dir, prefix=_PROBE) as tmp:
        meta = Path(tmp) / "metadata"
        # Only the roots: the new origin's timestamp, snapshot and targets are all fetched and verified.
        history = state.tuf_dir / "root_history"
        if history.is_dir():
            shutil.copytree(history, meta / "root_history")
        else:
            meta.mkdir()
        updater = Updater(str(meta), metadata_url, str(Path(tmp) / "targets"), targets_url, fetcher=fetcher,
                          bootstrap=state.pinned_root())
        updater.refresh()
        for role in (Timestamp.type, Snapshot.type):
            theirs, ours = _version(meta / f"{role}.json"), _version(state.tuf_dir / f"{role}.json")
            if theirs is None:
                raise OriginRefusedError(f"serves no {role} metadata")
            if ours is not None and theirs < ours:
                raise OriginRefusedError(f"serves {role} version {theirs}, older than version {ours} this node has")


def _version(path: Path) -> int | None:
    """The version of a metadata file python-tuf verified and stored, or None if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return Metadata.from_bytes(data).signed.version


__all__ = ["REFUSED", "follow_origin", "probe_origin", "wanted_origin"]
