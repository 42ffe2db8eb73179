"""Test helpers: a node-side TUF client, and node clients that play a network attacker."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import httpx
from tuf.ngclient import Updater

from edgerec.sdk.encryption import Envelope
from edgerec.sync.node.client import NodeClient, http_client
from edgerec.sync.node.fetcher import HttpxFetcher
from edgerec.sync.node.state import NodeState


def zip_with_a_big_member(big: int) -> bytes:
    """A zip of ``big.bin`` (``big`` random bytes) then ``small.json``: a reader of the small member that
    reads only the directory and that member stays far below ``big``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("big.bin", os.urandom(big))
        zf.writestr("small.json", "{}")
    return buf.getvalue()


def tuf_updater(server: str, root: bytes, folder: Path) -> Updater:
    """python-tuf's ngclient with the node's httpx fetcher, bootstrapped with ``root``."""
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    return Updater(
        str(folder / "meta"), f"{server}/repository/metadata/", str(folder / "targets"),
        f"{server}/repository/targets/", fetcher=HttpxFetcher(httpx.Client(timeout=30)), bootstrap=root,
    )


def node_client(state: NodeState) -> NodeClient:
    ident = state.identity()
    return NodeClient(http_client(ident.server), ident.node_id, state.signing_key())


class OtherEnvelopes(NodeClient):
    """Hands this node another node's envelopes, optionally relabelled as its own."""

    def __init__(self, state: NodeState, other: NodeClient, relabel: bool) -> None:
        ident = state.identity()
        super().__init__(http_client(ident.server), ident.node_id, state.signing_key())
        self.other = other
        self.relabel = relabel

    def envelopes(self, model: str, version: int) -> list[bytes]:
        theirs = [Envelope.from_bytes(e) for e in self.other.envelopes(model, version)]
        if self.relabel:
            theirs = [Envelope(self.node_id, e.package, e.version, e.artifact, e.sealed) for e in theirs]
        return [e.to_bytes() for e in theirs]


class Replaying(NodeClient):
    """Records assignment answers; when ``replay`` is set, answers with it instead."""

    def __init__(self, state: NodeState) -> None:
        ident = state.identity()
        super().__init__(http_client(ident.server), ident.node_id, state.signing_key())
        self.seen: list[list[bytes]] = []
        self.replay: list[bytes] | None = None

    def checkin(self, report: dict[str, Any]) -> list[bytes]:
        if self.replay is not None:
            return self.replay
        docs = super().checkin(report)
        self.seen.append(docs)
        return docs
