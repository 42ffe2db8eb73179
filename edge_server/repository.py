"""The model repository: verified packages loaded, leased to requests, hot-swapped.

A new version is verified, loaded and warmed up with the package's warm-up
samples *before* it is swapped in under one lock (MLServer's registry loads
the new model before unloading the old). Requests hold a lease on the version
they resolved, so those in flight finish on the old version; the old one is
released once its last lease ends, and its memory is handed back to the
operating system (Triton #2023, #4528). A version that fails at any step is
refused and the serving one is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.sdk.errors import EdgeRecError, PackageError
from edgerec.sdk.heap import collect_all, freezes
from edgerec.sdk.manifest import Manifest
from edgerec.sdk.model import Accelerator, EdgeModel
from edgerec.sdk.modeldir import ModelDir
from edgerec.sdk.package import MANIFEST, Package, PackageLimits, read_unverified_manifest
from edgerec.sdk.runtime import BackendChoice

from .batching import Arrays, Batcher
from .errors import (
    BadRequestError,
    ConflictError,
    LoadRefusedError,
    ModelLoadingError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from .metrics import Metrics

log = logging.getLogger("edgerec.edge_server.repository")
Pinned = Callable[[], set[tuple[str, int]]]


@dataclass(frozen=True)
class LoadSettings:
    """How every version is verified, loaded and batched on this server."""

    trusted_keys: tuple[Ed25519PublicKey, ...]
    recipient_key: X25519PrivateKey | None = None
    recipient_id: str | None = None
    accelerator: Accelerator = "auto"
    threads: int | None = None
    backend: BackendChoice = "auto"
    max_batch: int = 32
    max_delay_s: float = 0.002
    timeout_s: float = 30.0
    min_merge_call_s: float = 0.0  # models whose direct call is faster are not batched (Batcher)


class ModelVersion:
    """One loaded version: its model, its batcher and its leases."""

    def __init__(self, model: EdgeModel, source: str, digest: str, batcher: Batcher,
                 heap_freezes: int | None = None) -> None:
        self.model = model
        # Made after this many heap freezes: if the worker froze its heap since, the version's objects
        # are frozen and only a collection that unfreezes can free their cycles.
        self.heap_freezes = freezes() if heap_freezes is None else heap_freezes
        self.name = model.name
        self.version = model.version
        self.label = str(model.version)
        self.source = source
        self.digest = digest
        self.batcher = batcher
        self.loaded_at = time.time()
        self.serving = False
        self.leases = 0
        self.retiring = False
        self.item_lookup = model.item_lookup
        self.derived: dict[str, Any] = {}  # what the data plane works out once per version

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def state(self) -> str:
        return "retiring" if self.retiring else "serving" if self.serving else "loaded"

    def describe(self) -> dict[str, Any]:
        info = self.model.info
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "accelerator": info.accelerator,
            "fully_delegated": info.fully_delegated,
            "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat().replace("+00:00", "Z"),
            "backend": info.backend,
            "source": self.source,
        }


class Lease:
    """A request's hold on one version; the version is not released while it lasts."""

    __slots__ = ("_repo", "_submitted", "mv")

    def __init__(self, repo: Repository, mv: ModelVersion) -> None:
        self._repo, self.mv, self._submitted = repo, mv, False

    def run(self, arrays: Arrays, rows: int) -> Arrays:
        """Score encoded arrays through the version's batcher (once per lease)."""
        self._submitted = True
        return self.mv.batcher.submit(arrays, rows)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._submitted:
            self.mv.batcher.depart()
        self._repo._release(self.mv)


@dataclass
class Prepared:
    """A verified, loaded and warmed-up version, not yet serving."""

    model: EdgeModel
    source: str
    digest: str
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    heap_freezes: int = field(default_factory=freezes)  # made after this many freezes (edgerec.sdk.heap)


class Repository:
    """Loaded versions by name, the serving version of each, and the swap."""

    def __init__(self, settings: LoadSettings, metrics: Metrics, pinned: Pinned | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._pinned: Pinned = pinned or set
        # The lease path takes the lock itself (a Condition's ``with`` adds two Python-level calls).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._versions: dict[str, dict[int, ModelVersion]] = {}
        self._serving: dict[str, int] = {}
        self._retiring: list[threading.Thread] = []
        self.generation = 0  # bumps on every change; caches of the model list key on it
        # True while the worker's first load runs: a model not found yet may be one still loading
        self.loading = False

    # -- request path -----------------------------------------------------------

    def lease(self, name: str, version: int | str | None = None) -> Lease:
        """Hold ``name`` at ``version`` (None: the serving version) for one request."""
        with self._lock:
            try:
                mv = self._find(name, version)
            except (ModelNotFoundError, VersionNotFoundError) as exc:
                if self.loading:
                    raise ModelLoadingError(f"{exc.detail}; this worker is still loading its models",
                                            field=exc.field) from exc
                raise
            mv.leases += 1
        mv.batcher.arrive()
        return Lease(self, mv)

    def _release(self, mv: ModelVersion) -> None:
        with self._lock:
            mv.leases -= 1
            if mv.leases == 0 and mv.retiring:
                self._cond.notify_all()

    def get(self, name: str, version: int | str | None = None) -> ModelVersion:
        """The version for metadata (no lease: do not score with it)."""
        with self._cond:
            return self._find(name, version)

    def _find(self, name: str, version: int | str | None) -> ModelVersion:
        versions = self._versions.get(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} is not loaded", field="model")
        if version is None:
            return versions[self._serving[name]]
        if isinstance(version, str):
            if not version.isdigit() or len(version) > 18:
                raise VersionNotFoundError(f"{version!r} is not a version number", field="version")
            version = int(version)
        mv = versions.get(version)
        if mv is None:
            have = ", ".join(str(v) for v in sorted(versions))
            raise VersionNotFoundError(f"model {name!r} has no version {version} loaded (loaded: {have})",
                                       field="version")
        return mv

    def versions(self) -> list[ModelVersion]:
        with self._cond:
            return [mv for name in sorted(self._versions) for _, mv in sorted(self._versions[name].items())]

    def names(self) -> list[str]:
        with self._cond:
            return sorted(self._versions)

    def serving_version(self, name: str) -> int | None:
        with self._cond:
            return self._serving.get(name)

    # -- loading ----------------------------------------------------------------

    def prepare(self, path: str | Path) -> Prepared | ModelVersion:
        """Verify, load and warm up a package; an identical loaded version is returned as is.

        Raises BadRequestError (path), ConflictError (same version, other
        content) or LoadRefusedError (verify, load or warm-up failed).
        """
        p = Path(path)
        if not p.is_absolute() or p.suffix != ".edgepkg":
            raise BadRequestError("expected an absolute path to a .edgepkg file", field="path")
        if not p.is_file():
            raise BadRequestError(f"{p} is not a file", field="path")
        s = self.settings
        try:
            package = Package.open(p, list(s.trusted_keys))
        except (EdgeRecError, OSError) as exc:
            self.metrics.load("", False, "verify")
            raise LoadRefusedError(f"verification failed: {exc}", field="path") from exc
        m = package.manifest
        digest = hashlib.sha256(package.stored_bytes(MANIFEST)).hexdigest()
        with self._cond:
            existing = self._versions.get(m.name, {}).get(m.version)
        if existing is not None:
            if existing.digest == digest:
                return existing
            raise ConflictError(f"{m.name} v{m.version} is loaded with different content; "
                                "a new build needs a new version", field="path")
        try:
            model = EdgeModel.load(package, recipient_key=s.recipient_key, recipient_id=s.recipient_id,
                                   accelerator=s.accelerator, threads=s.threads, backend=s.backend)
        except EdgeRecError as exc:
            self.metrics.load(m.name, False, "load")
            raise LoadRefusedError(f"{m.name} v{m.version} failed to load: {exc}", field="path") from exc
        try:
            rows = model.warmup()
        except Exception as exc:  # any failure here refuses the version
            model.close()
            self.metrics.load(m.name, False, "warmup")
            raise LoadRefusedError(f"{m.name} v{m.version} failed its warm-up: {exc}", field="path") from exc
        log.info("prepared %s v%s from %s on %s (%d warm-up rows)", m.name, m.version, p,
                 model.info.accelerator, rows)
        return Prepared(model, str(p), digest)

    def commit(self, prepared: Prepared | ModelVersion, serve: bool = True) -> ModelVersion:
        """Swap a prepared version in atomically; the one it replaces retires."""
        if isinstance(prepared, ModelVersion):
            return self._serve_existing(prepared) if serve else prepared
        mv = self._version(prepared)
        retired: list[ModelVersion] = []
        with self._cond:
            versions = self._versions.setdefault(mv.name, {})
            previous = self._serving.get(mv.name)
            versions[mv.version] = mv
            if serve or previous is None:
                retired = self._set_serving(mv.name, mv.version)
            self.generation += 1
        self.metrics.load(mv.name, True)
        self._mark(mv)
        for old in retired:
            self._retire(old)
        return mv

    def _serve_existing(self, mv: ModelVersion) -> ModelVersion:
        with self._cond:
            retired = self._set_serving(mv.name, mv.version)
            self.generation += 1
        self._mark(mv)
        for old in retired:
            self._retire(old)
        return mv

    def _set_serving(self, name: str, version: int) -> list[ModelVersion]:
        """Point ``name`` at ``version``; returns the versions to retire (lock held)."""
        versions = self._versions[name]
        previous = self._serving.get(name)
        self._serving[name] = version
        versions[version].serving = True
        if previous is None or previous == version:
            return []
        self.metrics.swap(name)
        old = versions[previous]
        old.serving = False
        if (name, previous) in self._pinned():
            self._mark(old)
            return []
        del versions[previous]
        return [old]

    def _version(self, prepared: Prepared) -> ModelVersion:
        model, s = prepared.model, self.settings
        buckets = model.info.batch_buckets
        # A batch never needs more rows than the largest fixed-shape bucket.
        max_batch = min(s.max_batch, buckets[-1]) if buckets else s.max_batch
        if any(not t.shape or t.shape[0] is not None for t in model.manifest.signature.inputs):
            max_batch = 1  # an input without a batch dimension: requests cannot be stacked
        name, label = model.name, str(model.version)
        observe = self.metrics.batch_observer(name, label)

        def run(raw: Arrays) -> Arrays:
            # Validation and vocabulary lookups run once per merged batch, vectorized.
            return model.run(model.encode(raw))

        batcher = Batcher(run, max_batch=max_batch, max_delay_s=s.max_delay_s, timeout_s=s.timeout_s,
                          min_merge_call_s=s.min_merge_call_s,
                          observe=observe, name=f"{name}-v{label}")
        samples = model.warmup_samples()
        if max_batch > 1 and s.min_merge_call_s > 0 and samples:
            try:  # one request's cost, timed before any load can inflate it
                took = batcher.calibrate({k: v[:1] for k, v in samples.items()})
            except Exception as exc:  # the warm-up passed whole; a one-row slice failing is worth a line
                log.warning("%s v%s: timing one warm-up row failed (%s); the batcher measures it under load",
                            name, label, type(exc).__name__)
            else:
                log.info("%s v%s: one request costs %.0f us of CPU; %s", name, label, took * 1e6,
                         "merged under load" if took >= s.min_merge_call_s else "never merged")
        return ModelVersion(model, prepared.source, prepared.digest, batcher, prepared.heap_freezes)

    def discard(self, prepared: Prepared | ModelVersion) -> None:
        """Drop a prepared version that will not be committed."""
        if isinstance(prepared, Prepared):
            prepared.model.close()
            release_memory()

    def load(self, path: str | Path, serve: bool = True) -> ModelVersion:
        """prepare + commit: the control API's load."""
        return self.commit(self.prepare(path), serve=serve)

    def unload(self, name: str, version: int | str) -> ModelVersion:
        """Release one version; if it was serving, the highest remaining one serves."""
        with self._cond:
            mv = self._find(name, version)
            if (mv.name, mv.version) in self._pinned():
                raise ConflictError(f"{name} v{mv.version} is a variant of a configured experiment",
                                    field="version")
            versions = self._versions[name]
            del versions[mv.version]
            if not versions:
                del self._versions[name]
                del self._serving[name]
            elif mv.serving:
                self._serving[name] = max(versions)
                versions[max(versions)].serving = True
                self.metrics.swap(name)
            self.generation += 1
            follower = versions.get(self._serving.get(name, -1))
        if follower is not None:
            self._mark(follower)
        self._retire(mv)
        return mv

    def load_directory(self, model_dir: Path, wanted: set[tuple[str, int]] | None = None) -> list[str]:
        """Serve what ``model_dir`` says; returns one line per failure.

        A model with a ``NAME/current`` pointer (the node layout,
        :mod:`edgerec.sdk.modeldir`) serves exactly the version it names,
        whatever else is there: the pointer is the node's one truth, so a
        rollback survives a restart. If that version fails, the model is not
        served (the failure is logged and counted); no other version stands in.
        Packages at the top level (a plain folder of ``*.edgepkg``) serve the
        highest verified version of each name that has no pointer. Versions in
        ``wanted`` (experiment variants) are loaded too, without serving.
        """
        failures: list[str] = []
        layout = ModelDir(model_dir)
        pointed = layout.pointers()
        for name, version in pointed.items():
            path = layout.path_for(name, version).resolve()
            try:
                mv = self.load(path)
                if (mv.name, mv.version) != (name, version):
                    self.unload(mv.name, mv.version)
                    failures.append(f"{path}: holds {mv.name} v{mv.version}, not {name} v{version}")
            except EdgeRecError as exc:
                failures.append(f"{path}: {exc}")
        found: dict[str, list[tuple[int, Path]]] = {}
        for p in sorted(model_dir.glob("*.edgepkg")):
            try:
                m = peek_manifest(p)
            except PackageError as exc:
                failures.append(f"{p}: {exc}")
                continue
            if m.name in pointed:
                failures.append(f"{p}: ignored, {m.name} is served from its pointer {m.name}/current")
                continue
            found.setdefault(m.name, []).append((m.version, p.resolve()))
        wanted = wanted or set()
        for name, candidates in found.items():
            candidates.sort(reverse=True)
            serving = None
            for _, path in candidates:
                try:
                    serving = self.load(path)
                    break
                except EdgeRecError as exc:
                    failures.append(f"{path}: {exc}")
            for version, path in candidates:
                if (name, version) in wanted and (serving is None or serving.version != version):
                    try:
                        self.load(path, serve=False)
                    except EdgeRecError as exc:
                        failures.append(f"{path}: {exc}")
        for name, version in sorted(wanted):
            if name in pointed and version != pointed[name] and layout.path_for(name, version).is_file():
                try:
                    self.load(layout.path_for(name, version).resolve(), serve=False)
                except EdgeRecError as exc:
                    failures.append(f"{layout.path_for(name, version)}: {exc}")
        for line in failures:
            log.warning("model not loaded: %s", line)
        return failures

    # -- retiring -----------------------------------------------------------------

    def _mark(self, mv: ModelVersion) -> None:
        info = mv.model.info
        self.metrics.model_up(mv.name, mv.label, info.backend, info.accelerator, info.fully_delegated,
                              mv.serving)

    def _retire(self, mv: ModelVersion) -> None:
        with self._cond:
            mv.retiring, mv.serving = True, False
        self.metrics.model_down(mv.name, mv.label)
        # The thread gets the version in a box it empties, so its args keep no reference.
        t = threading.Thread(target=self._finish, args=([mv],), name=f"retire-{mv.name}-v{mv.label}",
                             daemon=True)
        with self._cond:
            self._retiring = [r for r in self._retiring if r.is_alive()]
            self._retiring.append(t)
        t.start()

    def _finish(self, box: list[ModelVersion]) -> None:
        mv = box.pop()
        frozen = mv.heap_freezes < freezes()
        self._close(mv)
        del mv
        release_memory(frozen)  # after _close returned, nothing here refers to the version

    def _close(self, mv: ModelVersion) -> None:
        with self._cond:
            self._cond.wait_for(lambda: mv.leases == 0)
        mv.batcher.close()
        mv.model.close()
        self.metrics.unload(mv.name)
        log.info("released %s v%s", mv.name, mv.version)

    def wait_released(self, timeout: float = 30.0) -> bool:
        """Wait until every retired version has been closed (for tests and shutdown)."""
        end = time.monotonic() + timeout
        with self._cond:
            threads = list(self._retiring)
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def close(self) -> None:
        with self._cond:
            all_versions = [mv for vs in self._versions.values() for mv in vs.values()]
            self._versions.clear()
            self._serving.clear()
            self.generation += 1
        for mv in all_versions:
            self._retire(mv)
        self.wait_released()


def peek_manifest(path: Path, limit: int = 4 * 1024 * 1024) -> Manifest:
    """The (unverified) manifest of a package file, to choose which versions to verify and load.

    Read as :meth:`Package.open` reads before the signature: bounded end record,
    directory and manifest, so a junk file in the model folder costs a few small reads.
    """
    return read_unverified_manifest(path, PackageLimits(max_manifest_size=limit))


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


_LIBC = _libc()
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
_M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(size: int = 1 << 20) -> None:
    """Serve buffers over ``size`` with mmap, always.

    glibc raises its mmap threshold (up to 32 MB) after large frees, after
    which model-sized buffers land in the heap and a released version leaves
    fragments behind; a fixed threshold returns them to the OS on free.
    """
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, size)


def release_memory(frozen: bool = True) -> None:
    """Collect garbage and return freed heap pages to the OS (glibc's malloc_trim).

    ``frozen``: what was dropped may be among the objects the worker froze (:mod:`edgerec.sdk.heap`), so
    the collection unfreezes and scans the whole heap (25-60 ms with the GIL held in a serving worker);
    otherwise only what was made since the freeze is scanned.
    """
    if frozen:
        collect_all()
    else:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


__all__ = ["Lease", "LoadSettings", "ModelVersion", "Prepared", "Repository", "peek_manifest",
           "pin_mmap_threshold", "release_memory"]
