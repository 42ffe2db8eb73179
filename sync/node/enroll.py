"""Enroll a node: make its keys locally, trade a one-time token for an id and a root to pin."""

from __future__ import annotations

import base64
from pathlib import Path

from tuf.api.metadata import Metadata, Root

from edgerec.sdk.keys import public_pem
from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.origin import check_repo_url, origin_urls
from edgerec.sync.protocol.trust import TrustInfo

from .client import enroll_request, http_client
from .state import NodeIdentity, NodeState


def enroll_node(
    state_dir: Path, server: str, token: str, name: str | None = None, ca_cert: str | None = None,
    client_cert: str | None = None, client_key: str | None = None, repo_url: str | None = None,
) -> NodeIdentity:
    """Enroll with the service at ``server``; the private keys never leave ``state_dir``.

    The TUF repository comes from ``repo_url`` when given, else from the static origin the service
    names in its answer, else from the service itself."""
    if repo_url:
        check_repo_url(repo_url, "--repo-url")
    state = NodeState(state_dir)
    if state.enrolled:
        raise ConfigError(f"{state_dir}: already enrolled as {state.identity().node_id}")
    signing_pem, recipient_pem = state.ensure_keys()
    server = server.rstrip("/")
    with http_client(server, ca_cert, client_cert=client_cert, client_key=client_key) as client:
        doc = enroll_request(client, token, signing_pem, recipient_pem, name)
    try:
        root = base64.b64decode(doc["root"], validate=True)
        md = Metadata[Root].from_bytes(root)
        # A root must be signed by a threshold of its own root keys to be pinned.
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
        origin = repo_url or doc.get("repo_url")
        if origin:
            metadata_url, targets_url = origin_urls(str(origin), server)
        else:
            metadata_url, targets_url = server + str(doc["metadata_path"]), server + str(doc["targets_path"])
        ident = NodeIdentity(
            node_id=str(doc["node_id"]), server=server, metadata_url=metadata_url, targets_url=targets_url,
            tags=list(doc.get("tags", [])), ca_cert=ca_cert, client_cert=client_cert, client_key=client_key,
        )
        trust = TrustInfo.from_root(md.signed)
    except Exception as exc:
        raise ConfigError(f"enrollment answer is not usable: {exc}") from exc
    state.save_identity(ident, root)
    # The edge server can start (offline, too) with the publisher keys of the pinned root.
    state.export_publisher_keys({kid: public_pem(k) for kid, k in trust.publisher_keys.items()})
    return ident
