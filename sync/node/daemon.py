"""The node daemon's cycle: look at the edge server, report, check in, install, watch, commit.

Each cycle:

1. ask the edge server what it serves (its control API); if a model's
   ``current`` pointer names a version it does not serve (it restarted, or
   a version was rolled back), load that version into it again;
2. queue a status report when what the node serves changed (SQLite, with an
   id), send the queue oldest first (the service stores each id once), then
   check in: the newest status out, the signed assignments back;
3. refresh TUF metadata (``Updater(bootstrap=<pinned root>)``; the trusted
   root also carries the publisher and assignment keys) and check each
   assignment (signature, addressed here, expiry, serial, no downgrade
   unless a signed rollback); if the verified assignments name another
   repository origin, switch to it once it serves the repository
   (:mod:`.origin`) and refresh from there;
4. for a version not current and not marked bad here: download its target
   (resumable), add this node's key envelopes, verify the publisher
   signature, open and warm it up locally (the warm-up scores are kept),
   write it into the model directory (atomic, durable), have the edge
   server swap to it, and watch it for the health window (:mod:`.health`);
5. healthy: move ``current`` to it (atomic, durable) and prune; unhealthy:
   swap the edge server back to the current version, mark the version bad
   (never tried again on this node) and report why.

Fleet metrics (with ``DaemonConfig.metrics``): before checking in, each cycle
drains the edge server's event spool into windows, releases the closed ones
privately and queues them as metrics reports with the status reports
(:mod:`.metrics_feed`); ``node forget-user`` requests are carried out within a
second, between cycles too.

Nothing before step 5 touches ``current``, so a kill at any point leaves the
previous version serving after any restart. While the service cannot be
reached the node keeps serving, retries with exponential backoff and jitter,
and keeps its reports queued. While it refuses for overload (503 or 429) the
node waits at least its ``Retry-After`` (up to ``max_backoff_s``) plus up to
half as long again, so that nodes refused together do not come back together;
that is logged once per episode, not as an outage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from edgerec.sdk import __version__
from edgerec.sdk.capabilities import device_capabilities
from edgerec.sdk.encryption import Envelope, Recipient, add_envelopes
from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.keys import public_pem
from edgerec.sdk.log_context import LogScope, log_scope
from edgerec.sdk.manifest import canonical_json
from edgerec.sdk.model import Accelerator, EdgeModel
from edgerec.sdk.modeldir import ModelDir
from edgerec.sdk.package import Package
from edgerec.sdk.tracing import local_span
from edgerec.sync.protocol.assignments import Accepted, Assignment, verify_assignment
from edgerec.sync.protocol.errors import (
    ApiError,
    AssignmentError,
    ConfigError,
    InstallError,
    OverloadedError,
    ServerUnreachableError,
)
from edgerec.sync.protocol.releases import Key
from edgerec.sync.protocol.trust import TrustInfo

from .client import INSTRUMENTATION, NodeClient, http_client
from .edge_control import EdgeControl, EdgeRefusedError, EdgeUnreachableError
from .fetcher import HttpxFetcher, RefusedDownloadError
from .health import HealthPolicy, Probe, watch
from .metrics_feed import MetricsConfig, MetricsFeed
from .origin import follow_origin
from .retention import NodeRetention, prune_node
from .state import Failure, Installed, NodeState

log = logging.getLogger("edgerec.sync.node")
AGENT = f"edgerec-node/{__version__}"
# What a status says (not its id or time): a report is queued when this changes.
SAID = ("health", "accelerator", "agent", "models", "edge", "interval_s")


@dataclass(frozen=True)
class DaemonConfig:
    interval_s: float = 30.0
    accelerator: Accelerator = "auto"
    timeout_s: float = 60.0
    health: HealthPolicy = field(default_factory=HealthPolicy)
    # Backoff while the service is unreachable: base * 2^(n-1), capped, with jitter (half to all of it);
    # while it refuses for overload: its Retry-After, capped, plus up to half of that again (:func:`next_delay`).
    retry_base_s: float = 1.0
    max_backoff_s: float = 300.0
    download_rate: float | None = None
    # The edge server dying during this many activations of one version marks it bad (a crash loop).
    # A killed daemon does not count: it holds no model, and a kill -9 must not make a version bad.
    max_edge_deaths: int = 3
    retention: NodeRetention = field(default_factory=NodeRetention)  # sent reports, cached targets, ledger
    # Fleet metrics from the edge server's event spool (None: off).
    metrics: MetricsConfig | None = None


@dataclass
class CycleResult:
    """What one cycle did (for logs and tests)."""

    installed: list[tuple[str, int]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    rolled_back: list[tuple[str, int, str]] = field(default_factory=list)
    repaired: list[tuple[str, int]] = field(default_factory=list)
    reported: bool = False
    reachable: bool = True
    # The service refused for overload (503, 429): up, but the cycle stopped there; ``retry_after_s`` is its
    # Retry-After (None when absent or unreadable).
    overloaded: bool = False
    retry_after_s: float | None = None


class _BadVersionError(InstallError):
    """A failure that says the version itself is bad on this node (warm-up, health, edge refusal)."""


# What ends a cycle as an overload refusal (not an outage, not a failure of the model being installed).
_REFUSED = (OverloadedError, RefusedDownloadError)


def next_delay(config: DaemonConfig, misses: int, retry_after_s: float | None = None,
               rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to the next cycle: the poll interval (+-10 %), or the backoff after ``misses`` failed cycles.

    The jitter keeps a fleet that lost its service at the same moment from
    coming back at the same moment too. After an overload refusal with a
    ``Retry-After`` the wait is at least that (capped at ``max_backoff_s``, and
    not below the backoff's own lower bound, so that ``Retry-After: 0`` is no
    busy loop) plus up to half as much again: a fleet refused in the same
    second comes back spread over half the time it was asked to wait.
    """
    c = config
    if misses == 0:
        return rng(0.9 * c.interval_s, 1.1 * c.interval_s)
    ceiling = min(c.max_backoff_s, c.retry_base_s * 2 ** min(misses - 1, 30))
    if retry_after_s is None:
        return rng(ceiling / 2, ceiling)
    wait = min(c.max_backoff_s, max(retry_after_s, ceiling / 2))
    return rng(wait, 1.5 * wait)


@dataclass(frozen=True)
class _Verified:
    data: bytes
    accelerator: str
    probe: Probe | None


class NodeDaemon:
    def __init__(
        self, state: NodeState, model_dir: Path, edge: EdgeControl | None = None,
        config: DaemonConfig | None = None, client: NodeClient | None = None,
        on_trust_change: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.db = state.db
        self.config = config or DaemonConfig()
        self.ident = state.identity()
        self.http = http_client(self.ident.server, self.ident.ca_cert, self.config.timeout_s,
                                self.ident.client_cert, self.ident.client_key)
        self.client = client or NodeClient(self.http, self.ident.node_id, state.signing_key())
        self.recipient = Recipient(self.ident.node_id, state.recipient_key())
        self.models = ModelDir(model_dir)
        self.models.root.mkdir(parents=True, exist_ok=True)
        self.models.clean()  # temporary files of a killed write, old pointer files
        self.db.set_setting("model_dir", str(self.models.root.resolve()))
        self.fetcher = HttpxFetcher(self.http, state.partial_dir, self.config.download_rate)
        self.edge = edge
        self.on_trust_change = on_trust_change
        self._sync_installed()
        self._lock_fd: int | None = None
        self.feed: MetricsFeed | None = None
        if self.config.metrics is not None:
            # Held while the daemon reads the spool: `node forget-user` then asks it (through node.db)
            # rather than rewriting files under its read offsets.
            self._lock_fd = os.open(state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(self._lock_fd)
                raise ConfigError(f"{state.dir}: another node daemon runs on this state directory") from exc
            self.feed = MetricsFeed(state, self.config.metrics)

    def close(self) -> None:
        self.http.close()
        if self.edge is not None:
            self.edge.close()
        if self.feed is not None:
            self.feed.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _sync_installed(self) -> None:
        """The pointers are the truth; the ``installed`` table follows them (after a kill between the two)."""
        have = self.db.installed()
        for name, version in self.models.pointers().items():
            if have.get(name) is None or have[name].version != version:
                self.db.set_installed(name, Installed(version, str(self.models.path_for(name, version)),
                                                      time.time(), None))

    # -- the loop ------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        misses = refusals = 0
        log.info("node %s started: a cycle every %.1f s", self.ident.node_id, self.config.interval_s)
        while not stop.is_set():
            result = CycleResult(reachable=False)
            try:
                result = self.run_once()
            except EdgeRecError as exc:  # local trouble (disk, configuration): log, retry
                log.error("cycle failed: %s", exc)
            ok = result.reachable and not result.overloaded
            misses = 0 if ok else misses + 1
            delay = next_delay(self.config, misses, result.retry_after_s if result.overloaded else None)
            if result.overloaded:
                # Once per episode: a fleet turned away for minutes must not write a warning per node per try.
                refusals += 1
                if refusals == 1:
                    log.info("sync service overloaded (Retry-After %s); next try in %.2f s, later refusals not "
                             "logged until it answers", "none" if result.retry_after_s is None
                             else f"{result.retry_after_s:g} s", delay)
            elif misses:
                log.warning("sync service unreachable (%d tries); next try in %.2f s", misses, delay)
            if ok and refusals:
                log.info("sync service answers again after %d overload refusal(s)", refusals)
                refusals = 0
            deadline = time.monotonic() + delay
            while not stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                self.erasures()  # a forget-user waits for this, not for the next cycle
                if time.monotonic() >= deadline:
                    break

    def run_once(self) -> CycleResult:
        """One cycle, in a span of its own (its log lines and its calls to the service carry one trace id);
        an overload refusal ends it early with ``overloaded`` set (reports stay queued)."""
        result = CycleResult()
        with local_span("node cycle", INSTRUMENTATION) as trace, log_scope(LogScope("", trace)):
            try:
                self._cycle(result)
            except _REFUSED as exc:
                result.overloaded, result.retry_after_s = True, exc.retry_after_s
                log.debug("sync service refused for overload: %s", exc)
        return result

    def _cycle(self, result: CycleResult) -> None:
        prune_node(self.state, self.models, self.config.retention)  # at most once per its interval; never raises
        view = self._edge_view()
        if view is not None:
            self._repair(view, result)
            view = self._edge_view()
        self._metrics(view)
        self._apply_experiments(view)
        self._queue_status(view)
        if not self._flush():
            result.reachable = False
            return
        last = self.db.last_report()
        try:
            docs = self.client.checkin(last.body if last else self._status(view))
        except OverloadedError:
            raise
        except (ServerUnreachableError, ApiError) as exc:
            log.warning("cannot check in: %s", exc)
            result.reachable = False
            return
        updater, trust, refresh_error = self._refresh()
        if self._follow_origin(docs, trust):
            updater, trust, refresh_error = self._refresh()  # this cycle installs from the new origin
        for doc in docs:
            self._handle(doc, updater, trust, refresh_error, result)
        self._drop_unassigned_experiments(docs)
        view = self._edge_view()
        self._apply_experiments(view)
        self._queue_status(view)
        result.reported = self._flush()

    # -- fleet metrics ------------------------------------------------------------------------

    def _metrics(self, view: dict[str, dict[str, Any]] | None) -> None:
        """Drain the spool, release closed windows and queue them (they go out with the status reports)."""
        if self.feed is None:
            return
        self.erasures()
        if view is not None:
            self.feed.declare([*(Key(m, int(doc["version"]), "", "") for m, doc in view.items()),
                               *self._experiment_keys()])
        try:
            done = self.feed.run()
        except (OSError, ValueError) as exc:  # a full disk, an unreadable file: the spool keeps the events
            log.error("fleet metrics: %s", exc)
            return
        if done.releases or done.ops:
            log.info("fleet metrics: %d release(s) and %d operational window(s) queued",
                     len(done.releases), len(done.ops))

    def erasures(self) -> int:
        """Carry out the forget-user requests queued in node.db; returns how many."""
        if self.feed is None:
            return 0
        requests = self.db.forget_requests()
        for seq, fingerprint, files in requests:
            n = self.feed.erase(fingerprint, files)
            self.db.forget_done(seq)
            log.info("erased a user from the open windows and the spool (%d event(s))", n)
        return len(requests)

    # -- experiments (signed, inside the assignments) ---------------------------------------

    def _want_experiments(self, a: Assignment) -> None:
        """Remember the experiments ``a`` (verified) carries for its model: they run until an assignment drops them."""
        self.db.set_setting(f"{_EXPERIMENTS}{a.model}", json.dumps(list(a.experiments), sort_keys=True))

    def _drop_unassigned_experiments(self, docs: list[bytes]) -> None:
        """A model no longer assigned here runs no experiment."""
        assigned = {_claimed_model(d) for d in docs}
        for model in self._wanted_experiments():
            if model not in assigned:
                self.db.set_setting(f"{_EXPERIMENTS}{model}", "[]")

    def _wanted_experiments(self) -> dict[str, list[dict[str, Any]]]:
        """Per model, the experiments its last verified assignment carried."""
        models = set(self.db.accepted()) | set(self.models.pointers())
        out = {}
        for model in models:
            raw = self.db.setting(f"{_EXPERIMENTS}{model}")
            if raw:
                out[model] = json.loads(raw)
        return out

    def _install_extras(self, a: Assignment, updater: Updater, trust: TrustInfo, result: CycleResult) -> None:
        """Fetch, verify and keep (not serve) the other versions the model's experiments need."""
        for x in a.extras:
            if x.version == a.version or self.models.path_for(a.model, x.version).exists():
                continue
            try:
                verified = self._fetch_and_verify(dataclasses.replace(a, version=x.version, target=x.target,
                                                                      experiments=(), extras=()), updater, trust)
                self.models.write(a.model, x.version, verified.data)
                log.info("%s: v%d installed for an experiment (not serving)", a.model, x.version)
            except _REFUSED:
                raise
            except (EdgeRecError, RepositoryError, DownloadError, OSError) as exc:
                self._fail(result, a.model, x.version, f"experiment version v{x.version}: {type(exc).__name__}: {exc}")

    def _experiment_keys(self) -> list[Key]:
        return [Key(model, int(v["version"]), e["name"], v["name"])
                for model, exps in self._wanted_experiments().items() for e in exps for v in e["variants"]]

    def _apply_experiments(self, view: dict[str, dict[str, Any]] | None) -> None:
        """Make the edge server run exactly the signed experiments (those the daemon set; local ones stay)."""
        if self.edge is None or view is None:
            return
        wanted = {e["name"]: {"name": e["name"], "model": model, "salt": e["salt"], "variants": e["variants"]}
                  for model, exps in self._wanted_experiments().items() for e in exps}
        managed = set(json.loads(self.db.setting(_EDGE_EXPERIMENTS) or "[]"))
        try:
            running = {e.get("name"): e for e in self.edge.experiments()}
            for name, doc in sorted(wanted.items()):
                if _same_experiment(running.get(name), doc):
                    continue
                loaded = {(m.get("name"), m.get("version")) for m in self.edge.models()}
                for v in doc["variants"]:
                    path = self.models.path_for(doc["model"], int(v["version"]))
                    if (doc["model"], v["version"]) not in loaded and path.exists():
                        self.edge.load(path, serve=False)
                self.edge.set_experiment(doc)
                log.info("experiment %s runs on the edge server", name)
            for name in sorted(managed - set(wanted)):
                if name in running:
                    self.edge.clear_experiment(name)
                    log.info("experiment %s stopped on the edge server", name)
        except EdgeRecError as exc:
            log.warning("experiments: %s", exc)
            return
        if managed != set(wanted):
            self.db.set_setting(_EDGE_EXPERIMENTS, json.dumps(sorted(wanted)))

    # -- the edge server --------------------------------------------------------------------

    def _edge_view(self) -> dict[str, dict[str, Any]] | None:
        """What the edge server serves, by model; None without one, or while it is down or still loading."""
        if self.edge is None or not self.edge.ready():
            return None
        try:
            return self.edge.serving()
        except EdgeRecError as exc:
            log.warning("edge server: %s", exc)
            return None

    def _repair(self, view: dict[str, dict[str, Any]], result: CycleResult) -> None:
        """Load what ``current`` names into an edge server that does not serve it."""
        assert self.edge is not None
        for name, version in self.models.pointers().items():
            if view.get(name, {}).get("version") == version:
                continue
            path = self.models.path_for(name, version)
            try:
                self.edge.load(path)
            except EdgeRecError as exc:
                log.error("%s: the edge server does not load current v%d: %s", name, version, exc)
                self.db.set_failure(name, Failure(version, f"the edge server does not load current v{version}: "
                                                  f"{exc}", time.time()))
                continue
            log.info("%s: the edge server serves current v%d again", name, version)
            self._clear_failure(name, version)
            result.repaired.append((name, version))

    # -- TUF and assignments ------------------------------------------------------------------

    def _refresh(self) -> tuple[Updater, TrustInfo, str | None]:
        self.state.tuf_dir.mkdir(parents=True, exist_ok=True)
        updater = Updater(
            str(self.state.tuf_dir), self.ident.metadata_url, str(self.state.targets_dir),
            self.ident.targets_url, fetcher=self.fetcher, bootstrap=self.state.pinned_root(),
        )
        error = None
        try:
            updater.refresh()
        except RefusedDownloadError:
            raise
        except (RepositoryError, DownloadError, OSError) as exc:
            error = f"TUF metadata refresh failed: {type(exc).__name__}: {exc}"
            log.warning("%s", error)
        # The newest root the Updater verified (or the pinned one) holds the trusted keys.
        root_file = self.state.tuf_dir / "root.json"
        data = root_file.read_bytes() if root_file.exists() else self.state.pinned_root()
        trust = TrustInfo.from_root(Metadata[Root].from_bytes(data).signed)
        changed = self.state.export_publisher_keys({kid: public_pem(k) for kid, k in trust.publisher_keys.items()})
        if changed and self.on_trust_change is not None:
            self.on_trust_change()  # a supervised edge server restarts with the new keys
        return updater, trust, error

    def _verify(self, doc: bytes, trust: TrustInfo) -> Assignment:
        """``doc`` checked (signature first, then addressee, expiry, serial, downgrade), or an AssignmentError."""
        model = _claimed_model(doc)
        current = self.models.current(model) if model != "unknown" else None
        return verify_assignment(doc, trust.assignment_keys, self.ident.node_id, self.db.accepted().get(model),
                                 current, time.time())

    def _follow_origin(self, docs: list[bytes], trust: TrustInfo) -> bool:
        """Move to the repository origin the verified assignments name, once it serves the repository
        (:mod:`.origin`); True if the node switched. Refused documents name nothing (``_handle`` reports them)."""
        verified = []
        for doc in docs:
            with contextlib.suppress(AssignmentError):
                verified.append(self._verify(doc, trust))
        new = follow_origin(self.state, self.ident, verified, self.fetcher)
        if new is None:
            return False
        self.ident = new
        return True

    def _handle(
        self, doc: bytes, updater: Updater, trust: TrustInfo, refresh_error: str | None, result: CycleResult,
    ) -> None:
        model = _claimed_model(doc)
        current = self.models.current(model) if model != "unknown" else None
        try:
            a = self._verify(doc, trust)
        except AssignmentError as exc:
            self._fail(result, model, None, f"assignment refused: {type(exc).__name__}: {exc}")
            return
        self.db.set_accepted(a.model, Accepted(a.serial, a.version))
        self._want_experiments(a)
        if refresh_error is None and a.extras:
            self._install_extras(a, updater, trust, result)
        if current == a.version:
            self._clear_failure(a.model, a.version)
            return
        bad = self.db.bad(a.model, a.version)
        if bad is not None:
            # Marked bad here: not tried again (no reinstall loop). The failure is reported as it was
            # (same time), so the service's history holds it once however often it is assigned again.
            if self.db.failures().get(a.model) != bad:
                self.db.set_failure(a.model, bad)
            return
        if refresh_error is not None:
            self._fail(result, a.model, a.version, refresh_error)
            return
        if self.edge is not None and self._edge_view() is None:
            # Not a failure of the version: the status already says the edge server is not serving.
            log.info("%s: v%d waits until the edge server is up", a.model, a.version)
            return
        try:
            self._install(a, updater, trust, result)
        except _BadVersionError as exc:
            self.db.mark_bad(a.model, a.version, str(exc))
            result.failures[a.model] = str(exc)
            log.error("%s v%d marked bad on this node: %s", a.model, a.version, exc)
        except _REFUSED:
            raise  # the version is not at fault: the cycle ends, the next one tries again
        except (EdgeRecError, RepositoryError, DownloadError, OSError) as exc:
            if isinstance(exc, RepositoryError | DownloadError):
                self.fetcher.discard_partials()
            self._fail(result, a.model, a.version, f"{type(exc).__name__}: {exc}")

    def _clear_failure(self, model: str, version: int) -> None:
        """Forget a model's failure now that ``version`` is current (a bad mark of another version stays)."""
        f = self.db.failures().get(model)
        if f is not None and not (f.bad and f.version != version):
            self.db.clear_failure(model)

    def _fail(self, result: CycleResult, model: str, version: int | None, reason: str) -> None:
        log.warning("%s: %s", model, reason)
        self.db.set_failure(model, Failure(version, reason[:2000], time.time()))
        result.failures[model] = reason

    # -- install, watch, commit ---------------------------------------------------------------

    def _install(self, a: Assignment, updater: Updater, trust: TrustInfo, result: CycleResult) -> None:
        verified = self._fetch_and_verify(a, updater, trust)
        previous = self.models.current(a.model)
        dest = self.models.write(a.model, a.version, verified.data)
        accel = verified.accelerator
        if self.edge is not None:
            accel = self._activate(a, dest, previous, verified, result) or accel
        self.models.set_current(a.model, a.version)
        self.db.end_activation(a.model)
        self.db.set_installed(a.model, Installed(a.version, str(dest), time.time(), accel))
        self.db.clear_failure(a.model)
        keep = {a.version} | {x.version for x in a.extras} | ({previous} if previous is not None else set())
        self.models.prune(a.model, keep)
        result.installed.append((a.model, a.version))
        log.info("installed %s version %d (%s)", a.model, a.version, accel)

    def _fetch_and_verify(self, a: Assignment, updater: Updater, trust: TrustInfo) -> _Verified:
        info = updater.get_targetinfo(a.target)
        if info is None:
            raise InstallError(f"target {a.target} is not in the signed TUF metadata")
        before = self.fetcher.fetched_bytes
        path = updater.find_cached_target(info)
        if path is None:
            resumed = self.fetcher.resumed_bytes
            path = updater.download_target(info)
            log.info("downloaded %s: %d bytes fetched, %d resumed from a partial download", a.target,
                     self.fetcher.fetched_bytes - before, self.fetcher.resumed_bytes - resumed)
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
        # This node's key opens the model and the plaintext matches the publisher's signed hashes.
        with EdgeModel.load(pkg, recipient_key=self.recipient, accelerator=self.config.accelerator) as model:
            samples = model.warmup_samples()
            try:
                expected = model.scores(model.predict(samples)) if samples else None
            except EdgeRecError as exc:
                raise _BadVersionError(f"v{a.version} failed its warm-up: {exc}") from exc
            accel = model.info.accelerator
            probe = None if expected is None or samples is None else Probe(
                samples, np.asarray(expected, dtype=np.float64), model.manifest.output_name)
        return _Verified(data, accel, probe)

    def _activate(self, a: Assignment, dest: Path, previous: int | None, verified: _Verified,
                  result: CycleResult) -> str | None:
        """Swap the edge server to ``dest`` and watch it; raises _Bad (after swapping back) if it fails."""
        assert self.edge is not None
        self.db.begin_activation(a.model, a.version)
        try:
            loaded = self.edge.load(dest)
            log.info("the edge server serves %s v%d; watching it for %.1f s", a.model, a.version,
                     self.config.health.window_s)
            reason = watch(self.edge, a.model, a.version, self.config.health, verified.probe)
        except EdgeRefusedError as exc:
            self.db.end_activation(a.model)
            self.models.remove(a.model, a.version)
            if exc.kind == "load_refused" and "verification failed" not in str(exc):
                raise _BadVersionError(f"v{a.version} refused by the edge server: {exc}") from exc
            raise
        except EdgeUnreachableError as exc:
            # A supervised edge server comes back with what ``current`` names. It may have died of this
            # version or of something else: tried again, until it happened max_edge_deaths times.
            deaths = self.db.edge_died(a.model, a.version)
            what = f"the edge server stopped answering while v{a.version} was swapped in ({deaths} time(s))"
            if deaths >= self.config.max_edge_deaths:
                raise _BadVersionError(f"v{a.version}: {what}") from exc
            raise InstallError(f"{what}; tried again: {exc}") from exc
        if reason is None:
            return str(loaded.get("accelerator") or "") or None
        self._swap_back(a.model, a.version, previous)
        self.models.remove(a.model, a.version)
        result.rolled_back.append((a.model, a.version, reason))
        raise _BadVersionError(f"v{a.version} rolled back: {reason}")

    def _swap_back(self, name: str, version: int, previous: int | None) -> None:
        assert self.edge is not None
        try:
            if previous is not None:
                self.edge.load(self.models.path_for(name, previous))
                log.warning("%s: swapped back to v%d", name, previous)
            else:
                self.edge.unload(name, version)
                log.warning("%s: unloaded v%d (no earlier version)", name, version)
        except EdgeUnreachableError as exc:
            # A supervised edge server comes back with what ``current`` names; the next cycle repairs others.
            log.warning("%s: cannot swap back now: %s", name, exc)
        except EdgeRecError as exc:
            log.error("%s: swapping back failed: %s", name, exc)

    # -- reports ------------------------------------------------------------------------------

    def _status(self, view: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
        """A status report: per model desired, current, and what the edge server actually serves."""
        accepted, installed, failures = self.db.accepted(), self.db.installed(), self.db.failures()
        pointers = self.models.pointers()
        rows = []
        for m in sorted(set(accepted) | set(pointers) | set(failures)):
            acc, cur, fail = accepted.get(m), pointers.get(m), failures.get(m)
            desired = acc.version if acc else None
            if fail is not None and fail.version is not None and fail.version != desired:
                self.db.clear_failure(m)  # about a version no longer wanted: history at the service
                fail = None
            served = (view or {}).get(m, {})
            serving = served.get("version") if view is not None else None
            if fail is not None and (fail.bad or cur != desired):
                state = "failed"
            elif self.edge is None:
                state = "installed" if cur is not None and cur == desired else "pending"
            elif serving is None:
                state = "not_serving"
            else:
                state = "serving" if desired is None or serving == desired else "pending"
            inst = installed.get(m)
            accel = served.get("accelerator") or (inst.accelerator if inst and inst.version == cur else None)
            rows.append({
                "name": m, "desired_version": desired, "installed_version": cur, "serving_version": serving,
                "state": state,
                "accelerator": accel,
                "failure": None if fail is None else {"version": fail.version, "reason": fail.reason, "at": fail.at,
                                                      "bad": fail.bad},
            })
        accels = {str(r["accelerator"]) for r in rows if r["accelerator"]}
        edge = "none" if self.edge is None else "down" if view is None else "up"
        health = "ok"
        if any(r["state"] == "failed" for r in rows):
            health = "degraded"
        if edge == "down" or any(r["state"] == "not_serving" for r in rows):
            health = "not_serving"
        return {
            "report_id": uuid.uuid4().hex, "kind": "status", "time": time.time(), "agent": AGENT,
            "health": health, "edge": edge, "interval_s": self.config.interval_s,
            "accelerator": ",".join(sorted(accels)) if accels else None, "models": rows,
            # What this node can run (SoC, accelerators, runtime versions), from the SDK (issue 13).
            "capabilities": device_capabilities().to_dict(),
        }

    def _queue_status(self, view: dict[str, dict[str, Any]] | None) -> None:
        """Queue a status report if it says something the last one did not."""
        doc = self._status(view)
        last = self.db.last_report()
        if last is None or _said(last.body) != _said(doc):
            self.db.enqueue(doc)

    def _flush(self) -> bool:
        """Send queued reports, oldest first; False if the service cannot be reached (they stay queued)."""
        for q in self.db.pending():
            try:
                self.client.report(q.body)
            except ServerUnreachableError as exc:
                log.warning("reports stay queued (%d): %s", len(self.db.pending()), exc)
                return False
            except OverloadedError:
                raise  # they stay queued; the cycle ends as refused (run_once)
            except ApiError as exc:
                if exc.status in (400, 413, 422):
                    # The service will never take this one: drop it rather than block the queue.
                    log.error("report %s refused, dropped: %s", q.report_id, exc)
                else:
                    log.warning("reports stay queued: %s", exc)
                    return False
            self.db.mark_sent(q.report_id)
        return True


_EXPERIMENTS = "experiments."  # node.db setting per model: the experiments its assignment carries
_EDGE_EXPERIMENTS = "edge.experiments"  # the experiments this daemon set on the edge server


def _same_experiment(running: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    if running is None:
        return False
    variants = [(v["name"], int(v["version"]), float(v["weight"])) for v in wanted["variants"]]
    return (running.get("model"), running.get("salt"), [(v.get("name"), v.get("version"), v.get("weight"))
                                                        for v in running.get("variants", [])]) == (
        wanted["model"], wanted["salt"], variants)


def _said(doc: dict[str, Any]) -> bytes:
    return canonical_json({k: doc.get(k) for k in SAID})


def _claimed_model(doc: bytes) -> str:
    """The model an assignment says it is for, before it is verified (for failure records)."""
    try:
        model = json.loads(doc)["signed"]["model"]
        return model if isinstance(model, str) and model else "unknown"
    except (ValueError, KeyError, TypeError):
        return "unknown"
