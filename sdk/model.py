"""``EdgeModel``: a verified package loaded on the best runtime and accelerator here."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .capabilities import DeviceCapabilities, device_capabilities
from .choices import parse_choice
from .encryption import Envelope, Recipient, decrypt_artifact
from .errors import (
    AcceleratorUnavailableError,
    DecryptionError,
    InvalidInputError,
    ModelClosedError,
    RuntimeBackendError,
)
from .inputs import Arrays, InputEncoder
from .keys import load_verify_key
from .manifest import Artifact, Device, Format, Manifest
from .package import Blob, Package, PackageLimits
from .ranking import ItemIndex, RankedItem, build_rank_batch
from .runtime import BackendChoice, BackendName, Session, SessionInfo, backend_for_format, parse_backend

log = logging.getLogger("edgerec.sdk")

Accelerator = Literal["auto", "cpu", "gpu", "npu"]
ACCELERATOR_CHOICES: tuple[Accelerator, ...] = ("auto", "cpu", "gpu", "npu")
_ACCELERATED: tuple[Device, ...] = ("gpu", "npu")


def parse_accelerator(value: str, field: str = "accelerator") -> Accelerator:
    """An accelerator from a CLI option, a config file or JSON; InvalidInputError naming ``field`` if unknown."""
    return parse_choice(value, ACCELERATOR_CHOICES, field)


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded and where it runs."""

    name: str
    version: int
    backend: BackendName
    format: Format
    precision: str
    requested_accelerator: Accelerator
    accelerator: Device
    fully_delegated: bool | None
    artifacts: tuple[str, ...]
    batch_buckets: tuple[int, ...]
    fallback_reason: str | None = None
    detail: str = ""
    npu_target: str | None = None  # "vendor:SOC" when an artifact compiled for this SoC's NPU runs


def _trusted(keys: Sequence[Ed25519PublicKey | str | os.PathLike[str]] | Ed25519PublicKey) -> list[Ed25519PublicKey]:
    items = [keys] if isinstance(keys, Ed25519PublicKey) else list(keys)
    return [k if isinstance(k, Ed25519PublicKey) else load_verify_key(k) for k in items]


class EdgeModel:
    """A model package ready to score: ``predict`` for tensors, ``rank`` for candidates.

    Safe to share between threads. ``close`` waits for running calls, then
    releases the runtime's memory.
    """

    def __init__(self, package: Package, sessions: list[Session], info: ModelInfo, encoder: InputEncoder) -> None:
        # Keep what scoring needs, not the package: its model bytes are as large
        # as the model and would outlive the runtime's own copy.
        self.manifest: Manifest = package.manifest
        self.signer = package.signer
        self.info = info
        self.encoder = encoder
        self._dynamic = next((s for s in sessions if s.batch is None), None)
        self._buckets = sorted((s for s in sessions if s.batch is not None), key=lambda s: s.batch or 0)
        self._sessions = sessions
        self._warmup = package.warmup()
        self._items: dict[str, npt.NDArray[Any]] | None = package.item_table()
        self._item_index: ItemIndex | None = None
        if self._items is not None:
            self._item_index = ItemIndex(self._items[self.manifest.item_id_field])
        self._lock = threading.Lock()
        self._idle = threading.Event()  # set once closed with no call running
        self._active = 0
        self._closed = False

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] | bytes | Package,
        trusted_keys: Sequence[Ed25519PublicKey | str | os.PathLike[str]] | Ed25519PublicKey = (),
        *,
        recipient_key: X25519PrivateKey | Recipient | None = None,
        recipient_id: str | None = None,
        envelopes: Iterable[Envelope] = (),
        accelerator: Accelerator = "auto",
        threads: int | None = None,
        backend: BackendChoice = "auto",
        precision: str | None = None,
        strict_vocab: bool = False,
        limits: PackageLimits | None = None,
        capabilities: DeviceCapabilities | None = None,
    ) -> EdgeModel:
        """Verify a package and load its model.

        The artifact is the best this device can run (:func:`load_plan`): one
        compiled ahead of time for this SoC's NPU, else the package's generic
        artifacts; ``capabilities`` describes the device (default: this one,
        :func:`~edgerec.sdk.capabilities.device_capabilities`).
        ``accelerator`` "gpu" or "npu" falls back to the CPU with one warning
        when it cannot run the model; ``info`` tells what is actually used.
        Raises PackageError subclasses for untrusted packages, DecryptionError
        for keys that do not open an encrypted one.
        """
        accelerator = parse_accelerator(accelerator)  # callers without a type checker may pass any str
        package = source if isinstance(source, Package) else Package.open(source, _trusted(trusted_keys), limits)
        recipient = _recipient(recipient_key, recipient_id)
        m = package.manifest
        caps = capabilities if capabilities is not None else device_capabilities()
        plan = load_plan(m, accelerator, backend, precision, caps)
        envs = list(envelopes)

        def model_bytes(art: Artifact) -> Blob:
            if art.path in package.encryption:
                if recipient is None:
                    raise DecryptionError(f"{art.path}: the package is encrypted; a recipient key is needed")
                return decrypt_artifact(package, art.path, recipient, envs)
            return package.stored_bytes(art.path)

        sessions, attempt, reason = _load_sessions(plan, accelerator, threads, model_bytes)
        first = sessions[0].info
        target = attempt.artifacts[0].npu_target
        info = ModelInfo(
            name=m.name,
            version=m.version,
            backend=first.backend,
            format=attempt.artifacts[0].format,
            precision=attempt.artifacts[0].precision,
            requested_accelerator=accelerator,
            accelerator=attempt.accelerator,
            fully_delegated=first.fully_delegated,
            artifacts=attempt.group,
            batch_buckets=tuple(sorted(s.batch for s in sessions if s.batch is not None)),
            fallback_reason=reason,
            detail=first.detail,
            npu_target=f"{target.vendor}:{target.soc}" if target is not None else None,
        )
        features = {f.input: f for f in m.features}
        vocabs = {f.input: package.vocabulary(f.vocabulary) for f in m.features if f.vocabulary}
        encoder = InputEncoder(m.signature, features, vocabs, strict_vocab)
        return cls(package, sessions, info, encoder)

    # -- scoring -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def predict(self, inputs: Mapping[str, Any]) -> Arrays:
        """Validate, encode and score a batch; outputs keyed by model output name."""
        return self.run(self.encoder.encode(inputs))

    def encode(self, inputs: Mapping[str, Any]) -> Arrays:
        """Validated, model-ready arrays (for callers that batch requests themselves)."""
        return self.encoder.encode(inputs)

    def run(self, encoded: Arrays) -> Arrays:
        """Score arrays already returned by :meth:`encode`."""
        self._enter()
        try:
            if self._dynamic is not None:
                return self._dynamic.run(encoded)
            return self._run_buckets(encoded, _batch_size(encoded))
        finally:
            self._leave()

    def _run_buckets(self, encoded: Arrays, n: int) -> Arrays:
        largest = self._buckets[-1]
        assert largest.batch is not None
        if n > largest.batch:
            parts = [
                self._run_buckets({k: v[i : i + largest.batch] for k, v in encoded.items()}, min(largest.batch, n - i))
                for i in range(0, n, largest.batch)
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        session = next(s for s in self._buckets if (s.batch or 0) >= n)
        size = session.batch or n
        padded = {k: _pad(v, size) for k, v in encoded.items()}
        return {k: v[:n] for k, v in session.run(padded).items()}

    def rank(
        self,
        user: Mapping[str, Any] | None,
        candidates: Sequence[Any] | Mapping[str, Sequence[Any]],
        context: Mapping[str, Any] | None = None,
        top_k: int | None = None,
    ) -> list[RankedItem]:
        """Score candidates for one user in one batch; best first."""
        if top_k is not None and top_k < 1:
            raise InvalidInputError("top_k", "must be >= 1")
        batch, ids = build_rank_batch(self.manifest, user, candidates, context, self.item_lookup)
        scores = self.scores(self.predict(batch))
        order = np.argsort(-scores, kind="stable")[:top_k]
        top_ids = [ids[i] for i in order.tolist()]
        return list(map(RankedItem, top_ids, scores[order].tolist(), range(1, len(top_ids) + 1)))

    def scores(self, outputs: Arrays) -> npt.NDArray[np.float64]:
        """One score per row from the score output."""
        out = outputs[self.manifest.output_name]
        return np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)[:, 0]

    def item_lookup(self) -> tuple[dict[str, npt.NDArray[Any]], dict[Any, int]] | None:
        """The package's item table (columns) and its id -> row index, if it has one."""
        if self._items is None or self._item_index is None:
            return None
        return self._items, self._item_index

    def warmup_samples(self) -> dict[str, npt.NDArray[Any]] | None:
        """The package's warm-up inputs (raw, as a request would send them)."""
        return self._warmup

    def warmup(self) -> int:
        """Run the package's warm-up samples; returns how many rows ran."""
        if not self._warmup:
            return 0
        return int(self.scores(self.predict(self._warmup)).shape[0])

    # -- lifetime ------------------------------------------------------------

    # A plain lock and a count: this runs twice per call on the hot path. The event is touched only
    # by the last call to leave a closed model (Event.set and clear take a condition's lock each).
    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise ModelClosedError(f"{self.name} v{self.version} is closed")
            self._active += 1

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._closed:
                self._idle.set()

    def close(self) -> None:
        """Wait for running calls, then release the runtime sessions."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._active == 0:
                self._idle.set()
        self._idle.wait()
        for s in self._sessions:
            s.close()
        self._sessions, self._dynamic, self._buckets = [], None, []

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EdgeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recipient(key: X25519PrivateKey | Recipient | None, rid: str | None) -> Recipient | None:
    if key is None or isinstance(key, Recipient):
        return key
    if not rid:
        raise DecryptionError("recipient_id: needed with recipient_key")
    return Recipient(rid, key)


@dataclass(frozen=True)
class LoadAttempt:
    """One way to load a package: ``artifacts`` on ``accelerator`` (``group``: the artifacts it was chosen from)."""

    accelerator: Device
    artifacts: tuple[Artifact, ...]
    group: tuple[str, ...]


def load_plan(
    m: Manifest, accelerator: Accelerator = "auto", backend: BackendChoice = "auto", precision: str | None = None,
    capabilities: DeviceCapabilities | None = None,
) -> list[LoadAttempt]:
    """The ways to load ``m`` on a device, best first; the last one runs on the CPU.

    1. With ``accelerator`` auto or npu: the artifacts compiled ahead of time for
       the device's SoC (``npu_target`` matches ``capabilities``), on the NPU.
    2. The first (format, precision) group of generic artifacts an installed
       backend runs, in manifest order: on the GPU and/or NPU (auto: those the
       group's hints name; gpu/npu: that one), fixed-batch artifacts first.
    3. That group on the CPU: its dynamic-batch artifact, else its fixed ones.
    """
    backend = parse_backend(backend)  # callers without a type checker may pass any str

    def usable(art: Artifact) -> bool:
        cls = backend_for_format(art.format)
        return backend in ("auto", cls.name) and cls.available() and precision in (None, art.precision)

    attempts = []
    if accelerator in ("auto", "npu") and capabilities is not None:
        compiled = [a for a in m.artifacts if a.npu_target is not None and usable(a)
                    and capabilities.can_run_target(a.npu_target.vendor, a.npu_target.soc)]
        if compiled:
            mine = tuple(a for a in compiled if a.precision == compiled[0].precision)
            attempts.append(LoadAttempt("npu", mine, tuple(a.path for a in mine)))
    group = [a for a in m.artifacts if a.npu_target is None and usable(a)]
    if not group:
        what = f"backend {backend}" + (f", precision {precision}" if precision else "")
        have = ", ".join(f"{a.path} ({a.format}, {a.precision})" for a in m.artifacts)
        raise RuntimeBackendError(f"{m.name}: no artifact for {what}; the package has {have}")
    group = [a for a in group if (a.format, a.precision) == (group[0].format, group[0].precision)]
    paths = tuple(a.path for a in group)
    fixed = tuple(a for a in group if isinstance(a.batch, int))
    dynamic = tuple(a for a in group if a.batch == "dynamic")[:1]
    tries: list[Device]
    if accelerator == "auto":
        tries = [acc for acc in _ACCELERATED if any(acc in a.accelerators for a in group)]
    else:
        tries = [] if accelerator == "cpu" else [accelerator]
    # Accelerators want fixed shapes (DESIGN.md): buckets first, else the dynamic artifact.
    attempts += [LoadAttempt(acc, fixed or dynamic, paths) for acc in tries]
    attempts.append(LoadAttempt("cpu", dynamic or fixed, paths))
    return attempts


def _load_sessions(
    plan: list[LoadAttempt], accelerator: Accelerator, threads: int | None, model_bytes: Callable[[Artifact], Blob]
) -> tuple[list[Session], LoadAttempt, str | None]:
    """Sessions of the first attempt that loads; the CPU attempt (the last) raises what it meets."""
    reasons = []
    for attempt in plan[:-1]:
        engine = backend_for_format(attempt.artifacts[0].format)()
        sessions: list[Session] = []
        try:
            for a in attempt.artifacts:
                sessions.append(engine.load(model_bytes(a), a, attempt.accelerator, threads))
            return sessions, attempt, None
        except AcceleratorUnavailableError as exc:
            for loaded in sessions:
                loaded.close()
            target = attempt.artifacts[0].npu_target
            where = f" ({target.vendor}:{target.soc} artifact)" if target is not None else ""
            reasons.append(f"{exc}{where}")
    reason = "; ".join(reasons) or None
    if accelerator in ("gpu", "npu"):
        log.warning("%s unavailable, running on the CPU: %s", accelerator, reason)
    cpu = plan[-1]
    engine = backend_for_format(cpu.artifacts[0].format)()
    return [engine.load(model_bytes(a), a, "cpu", threads) for a in cpu.artifacts], cpu, reason


def _batch_size(encoded: Arrays) -> int:
    first = next(iter(encoded.values()))
    return int(first.shape[0]) if first.ndim else 1


def _pad(arr: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    if arr.shape[0] == size:
        return arr
    # Repeat the last row: always a valid id, unlike zeros for a range that starts above 0.
    fill = np.repeat(arr[-1:], size - arr.shape[0], axis=0)
    return np.concatenate([arr, fill])



__all__ = [
    "ACCELERATOR_CHOICES", "Accelerator", "EdgeModel", "LoadAttempt", "ModelInfo", "SessionInfo", "load_plan",
    "parse_accelerator",
]
