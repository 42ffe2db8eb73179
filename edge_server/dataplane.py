"""The protocol-independent data plane: infer, rank and events.

Views (Open Inference Protocol, TF-Serving, rank) decode their wire format and
call in here, as MLServer's REST endpoints hand over to its ``DataPlane``.
Every scoring call leases a model version first (so a swap cannot pull it
away), reads the request body only then (so the batcher knows a request is on
its way while it is being parsed) and submits the raw arrays to the version's
batcher, which validates and encodes them with the SDK once per merged batch.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgerec.sdk.array_checks import all_finite
from edgerec.sdk.errors import InvalidInputError
from edgerec.sdk.event_spool import SpooledEvent
from edgerec.sdk.ranking import build_rank_batch

from .batching import Arrays
from .context import RequestState
from .errors import (
    BadRequestError,
    InferenceFailedError,
    ModelLoadingError,
    ModelNotFoundError,
    NotFoundError,
    UnavailableError,
    VersionNotFoundError,
)
from .event_dedup import EventDedup
from .event_spool import EventSpool
from .experiments import Experiment, ExperimentConfigError, parse_experiments
from .features import FeatureStore
from .metrics import EVENT_TYPES, Metrics
from .repository import Lease, ModelVersion, Repository
from .response_ids import ResponseIds, Served, item_bytes

Reader = Callable[[ModelVersion], Mapping[str, Any]]
Id = str | int
# Event types that are about one item; an impression may be of the whole answer.
ITEM_EVENTS = ("click", "conversion")


@dataclass(slots=True)
class RankRequest:
    """A validated ``/v1/rank`` body."""

    candidates: Sequence[Any]
    model: str | None = None
    version: int | None = None
    experiment: str | None = None
    user_id: Id | None = None
    user_features: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    top_k: int | None = None


@dataclass(frozen=True)
class Event:
    """A validated business event."""

    type: str
    response_id: str
    item: Id | None = None


class DataPlane:
    """Scoring and event recording, shared by every API."""

    def __init__(self, repo: Repository, experiments: dict[str, Experiment], features: FeatureStore | None,
                 metrics: Metrics, ids: ResponseIds, *, max_rows: int, user_id_field: str = "user_id",
                 dedup: EventDedup | None = None, spool: EventSpool | None = None) -> None:
        self.repo, self.experiments, self.features = repo, experiments, features
        self.spool = spool
        self.metrics, self.ids = metrics, ids
        self.max_rows = max_rows
        self.user_id_field = user_id_field
        self.dedup = dedup or EventDedup(4 * 1024 * 1024, 86400.0)

    # -- experiments (settings file, or the control API) ---------------------------

    def pinned(self) -> set[tuple[str, int]]:
        """The (model, version) pairs running experiments need loaded."""
        return {(e.model, v.version) for e in list(self.experiments.values()) for v in e.variants}

    def set_experiment(self, doc: Any, check_loaded: bool = True) -> Experiment:
        """Run (or replace) the experiment ``doc`` describes; every variant's version must be loaded."""
        try:
            exp = parse_experiments([doc])[0]
        except ExperimentConfigError as exc:
            raise BadRequestError(str(exc).removeprefix("experiments[0]").lstrip(".: ") or str(exc),
                                  field="experiment") from exc
        if check_loaded:
            for v in exp.variants:
                try:
                    self.repo.get(exp.model, v.version)
                except (ModelNotFoundError, VersionNotFoundError) as e:
                    raise VersionNotFoundError(f"variant {v.name} needs {exp.model} v{v.version}, which is not "
                                               "loaded", field="variants") from e
        self.experiments[exp.name] = exp
        return exp

    def clear_experiment(self, name: str) -> bool:
        """Stop an experiment; its variants' versions that nothing else needs and that do not serve are unloaded."""
        exp = self.experiments.pop(name, None)
        if exp is None:
            return False
        keep = self.pinned()
        for v in exp.variants:
            if (exp.model, v.version) in keep:
                continue
            try:
                mv = self.repo.get(exp.model, v.version)
            except (ModelNotFoundError, VersionNotFoundError):
                continue
            if not mv.serving:
                self.repo.unload(exp.model, v.version)
        return True

    def replace_experiments(self, docs: Sequence[Any]) -> None:
        """Run exactly ``docs`` (a worker that starts or fell behind takes the shared list)."""
        wanted = {e.name: e for e in parse_experiments(list(docs))}
        self.experiments.clear()
        self.experiments.update(wanted)

    def experiments_doc(self) -> list[dict[str, Any]]:
        return [e.to_dict() for _, e in sorted(self.experiments.items())]

    # -- tensors -------------------------------------------------------------------

    def infer(self, st: RequestState, name: str, version: str | None, read: Reader) -> tuple[ModelVersion, Arrays]:
        """Score what ``read`` decodes from the body for the leased version."""
        with self.repo.lease(name, version) as lease:
            mv = lease.mv
            st.serve(mv.name, mv.label)
            raw = read(mv)
            out = self._run(lease, raw)
        return mv, out

    def _run(self, lease: Lease, raw: Mapping[str, Any]) -> Arrays:
        """Check the batch size of raw inputs and score them (encoding happens per merged batch)."""
        arrays = as_arrays(raw)
        first, rows = "", -1
        for name, a in arrays.items():
            n = a.shape[0] if a.ndim else 1
            if rows < 0:
                first, rows = name, n
            elif n != rows:
                raise InvalidInputError(name, f"batch size {n} differs from {rows} ({first})")
        if rows == 0:
            raise InvalidInputError(next(iter(arrays)), "empty batch")
        if rows > self.max_rows:
            raise BadRequestError(f"{rows} rows is over the limit of {self.max_rows}", field="inputs")
        return lease.run(arrays, rows)

    # -- ranking ----------------------------------------------------------------

    def rank(self, st: RequestState, req: RankRequest) -> dict[str, Any]:
        """Score candidates for one user; best first, with a response id for events."""
        name, version, experiment, variant = self._route(req)
        try:
            lease = self.repo.lease(name, version)
        except VersionNotFoundError as exc:
            if experiment is None:
                raise
            raise UnavailableError(f"experiment {experiment.name}: variant {variant} needs {name} v{version}, "
                                   "which is not loaded") from exc
        with lease:
            mv = lease.mv
            st.serve(mv.name, mv.label, variant)
            user = self._user(mv, req)
            candidates = self._candidates(mv, req.candidates)
            batch, ids = build_rank_batch(mv.manifest, user, candidates, req.context, mv.item_lookup)
            out = self._run(lease, batch)
        scores = mv.model.scores(out)
        if not all_finite(scores):
            raise InferenceFailedError("the model produced NaN or Inf scores")
        order = (-scores).argsort(kind="stable")
        if req.top_k is not None:
            order = order[: req.top_k]
        exp_name = experiment.name if experiment else ""
        top_scores = scores[order].tolist()
        items = [{"item": _plain(ids[i]), "score": score, "rank": r}
                 for r, (i, score) in enumerate(zip(order.tolist(), top_scores, strict=True), 1)]
        user_key = ""
        if self.spool is not None:
            self.spool.scores(mv.name, mv.version, top_scores)
            if req.user_id is not None:
                user_key = self.spool.fingerprint(str(req.user_id))
        return {
            "response_id": self.ids.issue(mv.name, mv.version, exp_name, variant, [it["item"] for it in items],
                                          user_key),
            "model": mv.name,
            "version": mv.label,
            "variant": variant,
            "experiment": exp_name or None,
            "items": items,
        }

    def _route(self, req: RankRequest) -> tuple[str, int | None, Experiment | None, str]:
        if req.experiment is None:
            return req.model or self._only_model(), req.version, None, "default"
        exp = self.experiments.get(req.experiment)
        if exp is None:
            raise NotFoundError(f"no experiment {req.experiment!r} is configured", field="experiment")
        if req.model is not None and req.model != exp.model:
            raise BadRequestError(f"experiment {exp.name} runs model {exp.model}", field="model")
        if req.version is not None:
            raise BadRequestError("an experiment chooses the version; leave it out", field="version")
        chosen = exp.assign(None if req.user_id is None else str(req.user_id))
        return exp.model, chosen.version, exp, chosen.name

    def _only_model(self) -> str:
        names = self.repo.names()
        if len(names) == 1:
            return names[0]
        if not names:
            if self.repo.loading:
                raise ModelLoadingError("no model is loaded yet; this worker is still loading its models",
                                        field="model")
            raise ModelNotFoundError("no model is loaded", field="model")
        raise BadRequestError(f"required: this server serves {', '.join(names)}", field="model")

    def _user(self, mv: ModelVersion, req: RankRequest) -> dict[str, Any]:
        features: dict[str, Any] = {}
        if req.user_id is not None and self.features is not None:
            profile = self.features.lookup("user", [str(req.user_id)])[0]
            if profile:
                features.update(profile)
        features.update(req.user_features)
        if req.user_id is not None:
            fields = mv.derived.get("user_id_fields")
            if fields is None:
                fields = mv.derived["user_id_fields"] = self._id_fields(mv)
            for name in fields:
                features.setdefault(name, req.user_id)
        return features

    def _id_fields(self, mv: ModelVersion) -> list[str]:
        """User features that take the user id: the package's ``user_id_field``, the server's, else the first id."""
        users = [f for f in mv.manifest.features if f.role == "user"]
        for wanted in (mv.manifest.user_id_field, self.user_id_field):
            named = [f.field for f in users if f.field == wanted]
            if named:
                return named
        return [f.field for f in users if f.vocabulary or f.id_range or f.hash_bins][:1]

    def _candidates(self, mv: ModelVersion, candidates: Sequence[Any]) -> Sequence[Any]:
        """Candidate ids become feature rows from the store when the package has no item table."""
        if self.features is None or mv.manifest.item_table is not None:
            return candidates
        if any(isinstance(c, dict) for c in candidates):
            return candidates
        found = self.features.lookup("item", [str(c) for c in candidates])
        id_field = mv.manifest.item_id_field
        rows = []
        for i, (c, feats) in enumerate(zip(candidates, found, strict=True)):
            if feats is None:
                raise BadRequestError(f"unknown item id {c!r}", field=f"candidates[{i}]")
            rows.append({**feats, id_field: c})
        return rows

    # -- events -----------------------------------------------------------------

    def forget_user(self, user_id: str) -> dict[str, int]:
        """Erase what this process holds of a user: cached profile and experiment assignments.

        Event dedup keys are digests of (response id, type, item), which name
        nobody. The event spool holds the user's fingerprint: this process
        moves on to a new spool file, so every file written before is final
        and the node can rewrite it without the user (``node forget-user``)."""
        profile = self.features.forget(user_id) if self.features is not None else 0
        assignments = sum(e.forget(user_id) for e in self.experiments.values())
        if self.spool is not None:
            self.spool.rotate()
        return {"profiles": profile, "assignments": assignments}

    def record_events(self, events: Sequence[Event]) -> dict[str, int]:
        """Count events for the variant that served them, each at most once.

        All or nothing for bad input: every response id must be genuine and
        recent and every item one that response returned (click and conversion
        name one), or the whole batch is refused (400, the event named) and
        nothing is counted. Then each (response, type, item) counts once:
        repeats are answered as duplicates, and events the bounded
        de-duplication table can no longer vouch for as expired.
        """
        parsed: dict[str, Served] = {}
        served = []
        for i, e in enumerate(events):
            s = parsed.get(e.response_id)
            if s is None:
                s = parsed[e.response_id] = self.ids.parse(e.response_id, f"events[{i}].response_id")
            if e.item is None:
                if e.type in ITEM_EVENTS:
                    raise BadRequestError(f"a {e.type} names the item it was for", field=f"events[{i}].item")
            elif not self.ids.returned(s, e.item):
                raise BadRequestError("the referenced response did not return this item", field=f"events[{i}].item")
            served.append(s)
        keys = [(_event_key(s, e), s.issued) for e, s in zip(events, served, strict=True)]
        outcomes = self.dedup.admit(keys)
        counts = {"accepted": 0, "duplicates": 0, "expired": 0}
        spooled: list[SpooledEvent] = []
        now = time.time()
        for e, s, outcome in zip(events, served, outcomes, strict=True):
            if outcome == "new":
                self.metrics.event(s.model, str(s.version), s.experiment, s.variant, e.type)
                counts["accepted"] += 1
                if self.spool is not None:
                    spooled.append(_spooled(now, e, s))
            else:
                counts["duplicates" if outcome == "duplicate" else "expired"] += 1
        if spooled:
            assert self.spool is not None
            self.spool.events(spooled)
        return counts


def _spooled(now: float, e: Event, s: Served) -> SpooledEvent:
    """The spool's record of an accepted event. An anonymous ranking's events count as one user of their own
    (its response): nothing ties anonymous responses together, so no bound can span them."""
    user = s.user or base64.urlsafe_b64encode(s.tag[:12]).decode()
    # Outside an experiment the release's key has no variant (the server's label "default" is not one).
    return SpooledEvent(now, e.type, s.model, s.version, s.experiment, s.variant if s.experiment else "", user)


def _event_key(served: Served, e: Event) -> bytes:
    """A fixed-size key for (response, type, item): the table never holds the client's text."""
    h = hashlib.blake2b(served.tag, digest_size=16)
    h.update(b"\0" + e.type.encode() + b"\0")
    if e.item is not None:
        h.update(b"\1" + item_bytes(e.item))
    return h.digest()


def as_arrays(raw: Mapping[str, Any]) -> Arrays:
    """Raw request values as arrays; a ragged list is refused by name."""
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidInputError("inputs", "expected a non-empty mapping of input name to values")
    out: Arrays = {}
    for name, value in raw.items():
        try:
            out[str(name)] = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError(str(name), "not a rectangular array") from exc
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


__all__ = ["EVENT_TYPES", "DataPlane", "Event", "RankRequest"]
