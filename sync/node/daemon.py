"""The node daemon's cycle: poll, refresh TUF, verify, fetch, check, install, report.

Each cycle:

1. check in: send the current status report and get the node's signed
   assignments back (one RFC 9421 signed request);
2. refresh TUF metadata with ``tuf.ngclient.Updater(bootstrap=<pinned root>)``;
   the trusted root also carries the publisher and assignment keys;
3. check each assignment (signature, addressed here, expiry, serial never
   going back, no downgrade unless a signed rollback: :mod:`..assignments`);
4. for a version not installed: find its target through TUF (arbitrary,
   rollback, freeze and mix-and-match protection), download it (resumable),
   fetch this node's key envelopes, add them to the package, verify the
   publisher signature, check the model opens with the node's X25519 key,
   write it into the model directory, have the edge server load it (when
   one is configured) and only then point ``current`` at it;
5. report installed versions and failures with their reasons at once when
   anything changed (otherwise the next check-in carries the status).

A failure leaves the previous version in place and is reported.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from edgerec.sdk import __version__
from edgerec.sdk.capabilities import device_capabilities
from edgerec.sdk.encryption import Envelope, Recipient, add_envelopes
from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.keys import public_pem
from edgerec.sdk.model import Accelerator, EdgeModel
from edgerec.sdk.package import Package
from edgerec.sync.protocol.assignments import Accepted, Assignment, verify_assignment
from edgerec.sync.protocol.errors import ApiError, AssignmentError, InstallError, ServerUnreachableError
from edgerec.sync.protocol.trust import TrustInfo

from .client import NodeClient, http_client
from .edge_control import EdgeControl
from .fetcher import HttpxFetcher
from .installer import Installer
from .state import Failure, Installed, NodeState, NodeStatus

log = logging.getLogger("edgerec.sync.node")
AGENT = f"edgerec-node/{__version__}"


@dataclass(frozen=True)
class DaemonConfig:
    interval_s: float = 30.0
    accelerator: Accelerator = "auto"
    keep_versions: int = 2
    timeout_s: float = 60.0


@dataclass
class CycleResult:
    """What one cycle did (for logs and tests)."""

    installed: list[tuple[str, int]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    reported: bool = False
    reachable: bool = True


class NodeDaemon:
    def __init__(
        self, state: NodeState, model_dir: Path, edge: EdgeControl | None = None,
        config: DaemonConfig | None = None, client: NodeClient | None = None,
    ) -> None:
        self.state = state
        self.config = config or DaemonConfig()
        self.ident = state.identity()
        self.http = http_client(self.ident.server, self.ident.ca_cert, self.config.timeout_s)
        self.client = client or NodeClient(self.http, self.ident.node_id, state.signing_key())
        self.recipient = Recipient(self.ident.node_id, state.recipient_key())
        self.installer = Installer(model_dir, self.config.keep_versions)
        self.fetcher = HttpxFetcher(self.http, state.partial_dir)
        self.edge = edge

    def close(self) -> None:
        self.http.close()
        if self.edge is not None:
            self.edge.close()

    # -- the cycle -----------------------------------------------------------------------

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.run_once()
            except EdgeRecError as exc:  # configuration or local disk trouble: log, retry
                log.error("cycle failed: %s", exc)
            stop.wait(self.config.interval_s)

    def run_once(self) -> CycleResult:
        status = self.state.load_status()
        result = CycleResult()
        before = self.status_report(status)
        try:
            # The check-in carries the status as it is and brings the assignments back.
            docs = self.client.checkin(before)
        except (ServerUnreachableError, ApiError) as exc:
            log.warning("cannot check in: %s", exc)
            result.reachable = False
            return result
        updater, trust, refresh_error = self._refresh()
        for doc in docs:
            self._handle(doc, updater, trust, refresh_error, status, result)
        self.state.save_status(status)
        after = self.status_report(status)
        if after["models"] != before["models"] or status.pending_reports:
            # Something changed this cycle: tell the service now, not at the next check-in.
            result.reported = self._report(status, after)
        else:
            result.reported = True
        self.state.save_status(status)
        return result

    def _refresh(self) -> tuple[Updater, TrustInfo, str | None]:
        self.state.tuf_dir.mkdir(parents=True, exist_ok=True)
        updater = Updater(
            str(self.state.tuf_dir), self.ident.metadata_url, str(self.state.targets_dir),
            self.ident.targets_url, fetcher=self.fetcher, bootstrap=self.state.pinned_root(),
        )
        error = None
        try:
            updater.refresh()
        except (RepositoryError, DownloadError, OSError) as exc:
            error = f"TUF metadata refresh failed: {type(exc).__name__}: {exc}"
            log.warning("%s", error)
        # The newest root the Updater verified (or the pinned one) holds the trusted keys.
        root_file = self.state.tuf_dir / "root.json"
        data = root_file.read_bytes() if root_file.exists() else self.state.pinned_root()
        trust = TrustInfo.from_root(Metadata[Root].from_bytes(data).signed)
        self.state.export_publisher_keys({kid: public_pem(k) for kid, k in trust.publisher_keys.items()})
        return updater, trust, error

    def _handle(
        self, doc: bytes, updater: Updater, trust: TrustInfo, refresh_error: str | None,
        status: NodeStatus, result: CycleResult,
    ) -> None:
        model = _claimed_model(doc)
        installed = status.installed.get(model)
        try:
            a = verify_assignment(doc, trust.assignment_keys, self.ident.node_id, status.accepted.get(model),
                                  installed.version if installed else None, time.time())
        except AssignmentError as exc:
            self._fail(status, result, model, None, f"assignment refused: {type(exc).__name__}: {exc}")
            return
        status.accepted[a.model] = Accepted(a.serial, a.version)
        if installed is not None and installed.version == a.version:
            return
        if refresh_error is not None:
            self._fail(status, result, a.model, a.version, refresh_error)
            return
        try:
            path, accel = self._install(a, updater, trust)
        except (EdgeRecError, RepositoryError, DownloadError, OSError) as exc:
            if isinstance(exc, RepositoryError | DownloadError):
                self.fetcher.discard_partials()
            self._fail(status, result, a.model, a.version, f"{type(exc).__name__}: {exc}")
            return
        status.installed[a.model] = Installed(a.version, str(path), time.time(), accel)
        result.installed.append((a.model, a.version))
        log.info("installed %s version %d (%s)", a.model, a.version, accel)

    def _fail(
        self, status: NodeStatus, result: CycleResult, model: str, version: int | None, reason: str
    ) -> None:
        log.warning("%s: %s", model, reason)
        status.failures[model] = Failure(version, reason[:2000], time.time())
        result.failures[model] = reason

    def _install(self, a: Assignment, updater: Updater, trust: TrustInfo) -> tuple[Path, str]:
        info = updater.get_targetinfo(a.target)
        if info is None:
            raise InstallError(f"target {a.target} is not in the signed TUF metadata")
        path = updater.find_cached_target(info) or updater.download_target(info)
        envelopes = [Envelope.from_bytes(e) for e in self.client.envelopes(a.model, a.version)]
        mine = [e for e in envelopes if e.recipient == self.ident.node_id]
        if not mine:
            raise InstallError(f"no key envelope for node {self.ident.node_id}")
        data = add_envelopes(Path(path).read_bytes(), mine)
        pkg = Package.open(data, list(trust.publisher_keys.values()))
        if (pkg.manifest.name, pkg.manifest.version) != (a.model, a.version):
            raise InstallError(
                f"target holds {pkg.manifest.name} v{pkg.manifest.version}, not {a.model} v{a.version}"
            )
        # The check that matters: this node's key opens the model and the plaintext
        # matches the publisher's signed hashes.
        with EdgeModel.load(pkg, recipient_key=self.recipient, accelerator=self.config.accelerator) as model:
            model.warmup()
            accel: str = model.info.accelerator  # reported as text, the edge server's word below
        dest = self.installer.write(a.model, a.version, data)
        if self.edge is not None:
            loaded = self.edge.load(dest)
            accel = str(loaded.get("accelerator") or accel)
        previous = self.installer.current(a.model)
        self.installer.activate(a.model, a.version)
        self.installer.prune(a.model, {a.version} | ({previous} if previous is not None else set()))
        return dest, accel

    # -- reports --------------------------------------------------------------------------

    def status_report(self, status: NodeStatus) -> dict[str, Any]:
        models = sorted(set(status.accepted) | set(status.installed) | set(status.failures))
        rows = []
        for m in models:
            inst, acc, fail = status.installed.get(m), status.accepted.get(m), status.failures.get(m)
            state = "serving" if inst and (acc is None or acc.version == inst.version) else (
                "failed" if fail and acc and fail.version == acc.version else "pending")
            rows.append({
                "name": m, "installed_version": inst.version if inst else None,
                "desired_version": acc.version if acc else None, "state": state,
                "accelerator": inst.accelerator if inst else None,
                "failure": None if fail is None else {"version": fail.version, "reason": fail.reason, "at": fail.at},
            })
        accels = {str(r["accelerator"]) for r in rows if r["accelerator"]}
        healthy = all(r["state"] != "failed" for r in rows)
        return {
            "report_id": uuid.uuid4().hex, "kind": "status", "time": time.time(), "agent": AGENT,
            "health": "ok" if healthy else "degraded",
            "accelerator": ",".join(sorted(accels)) if accels else None, "models": rows,
            # What this node can run (SoC, accelerators, runtime versions), from the SDK (issue 13).
            "capabilities": device_capabilities().to_dict(),
        }

    def _report(self, status: NodeStatus, report: dict[str, Any]) -> bool:
        status.pending_reports.append(report)
        while status.pending_reports:
            try:
                self.client.report(status.pending_reports[0])
            except (ServerUnreachableError, ApiError) as exc:
                # Kept with the same report id: the service accepts a retry once.
                log.warning("report not sent: %s", exc)
                return False
            status.pending_reports.pop(0)
        return True


def _claimed_model(doc: bytes) -> str:
    """The model an assignment says it is for, before it is verified (for failure records)."""
    try:
        model = json.loads(doc)["signed"]["model"]
        return model if isinstance(model, str) and model else "unknown"
    except (ValueError, KeyError, TypeError):
        return "unknown"
