"""Building one scoring batch from a user, candidates and context."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError
from .manifest import FeatureSpec, Manifest

ItemLookup = Callable[[], tuple[dict[str, npt.NDArray[Any]], dict[Any, int]] | None]


class RankedItem(NamedTuple):
    """One ranked candidate: its id (or index), score and 1-based rank."""

    item: Any
    score: float
    rank: int


class ItemIndex(dict[Any, int]):
    """Item id -> row of a package's item table, built once when the model loads.

    Integer ids are also kept as sorted arrays, so a request's candidates find
    their rows in one vectorized search (``rows``) rather than a dict lookup
    per candidate; other ids (strings, or candidates of another integer type)
    take the dict.
    """

    def __init__(self, ids: npt.NDArray[Any]) -> None:
        super().__init__((v, i) for i, v in enumerate(ids.tolist()))  # a repeated id: its last row
        self._sorted: tuple[npt.NDArray[Any], npt.NDArray[np.int64]] | None = None
        if ids.ndim == 1 and ids.dtype.kind in "iu" and len(self):
            keys = np.fromiter(self.keys(), dtype=ids.dtype, count=len(self))
            rows = np.fromiter(self.values(), dtype=np.int64, count=len(self))
            order = np.argsort(keys, kind="stable")
            self._sorted = keys[order], rows[order]

    def rows(self, ids: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """The row of each id in ``ids`` (1-D); KeyError names the first unknown one."""
        if self._sorted is None or ids.dtype != self._sorted[0].dtype:
            return np.fromiter(map(self.__getitem__, ids.tolist()), dtype=np.int64, count=ids.size)
        keys, rows = self._sorted
        pos = np.searchsorted(keys, ids)
        np.minimum(pos, len(keys) - 1, out=pos)  # past the largest id: compared (and refused) below
        hit = keys[pos] == ids
        if not hit.all():
            raise KeyError(ids[~hit][0].item())
        return rows[pos]


def build_rank_batch(
    manifest: Manifest,
    user: Mapping[str, Any] | None,
    candidates: Sequence[Any] | Mapping[str, Sequence[Any]],
    context: Mapping[str, Any] | None,
    item_lookup: ItemLookup,
) -> tuple[dict[str, Any], list[Any]]:
    """Model inputs keyed by input name (raw ids, before vocabularies) and the candidate ids.

    User and context features repeat for every candidate. Candidates are item
    ids (features come from the package's item table), feature rows, or
    columns keyed by request field.
    """
    if not manifest.features:
        raise InvalidInputError("model", "the package declares no feature spec, so it cannot rank")
    columns, ids = _candidate_columns(manifest, candidates, item_lookup)
    n = len(ids)
    sources = {"user": user or {}, "context": context or {}}
    batch: dict[str, Any] = {}
    for feat, tail in _plan(manifest):
        if feat.role == "item":
            value = columns.get(feat.field)
            if value is None:
                value = _default(feat, "candidates")
                batch[feat.input] = _repeat(np.asarray(value), (n, *tail))
            else:
                arr = np.asarray(value)
                batch[feat.input] = arr.reshape((n, *tail)) if arr.size == n * math.prod(tail) else arr
        else:
            src = sources[feat.role]
            if not isinstance(src, Mapping):
                raise InvalidInputError(feat.role, "expected an object of features")
            value = src[feat.field] if feat.field in src else _default(feat, f"{feat.role}.")
            arr = np.asarray(value)
            try:
                batch[feat.input] = _repeat(arr, (n, *tail)) if arr.ndim <= len(tail) else arr
            except ValueError as exc:
                raise InvalidInputError(f"{feat.role}.{feat.field}", f"expected shape {list(tail)}") from exc
    return batch, ids


# Per manifest: each feature with the trailing shape of its input (computed once, not per call).
_PLANS: dict[int, tuple[weakref.ref[Manifest], list[tuple[FeatureSpec, tuple[int, ...]]]]] = {}


def _plan(manifest: Manifest) -> list[tuple[FeatureSpec, tuple[int, ...]]]:
    cached = _PLANS.get(id(manifest))
    if cached is not None and cached[0]() is manifest:
        return cached[1]
    plan = [(f, tuple(d or 1 for d in manifest.signature.input(f.input).shape[1:])) for f in manifest.features]
    if len(_PLANS) > 256:  # manifests of unloaded models
        for key in [k for k, (ref, _) in _PLANS.items() if ref() is None]:
            del _PLANS[key]
    _PLANS[id(manifest)] = (weakref.ref(manifest), plan)
    return plan


def _repeat(arr: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """``arr`` repeated to ``shape`` (broadcasting rules; ValueError if it does not fit).

    A filled array, not ``np.broadcast_to``'s view: that is several times slower
    to make for request-sized arrays, and the runtime needs contiguous data anyway.
    """
    out = np.empty(shape, dtype=arr.dtype)
    out[...] = arr
    return out


def _default(feat: FeatureSpec, where: str) -> Any:
    if feat.default is None:
        name = f"{where}{feat.field}" if where.endswith(".") else f"{where}.{feat.field}"
        raise InvalidInputError(name, "missing, and the feature has no default")
    return feat.default


def _candidate_columns(
    manifest: Manifest, candidates: Any, item_lookup: ItemLookup
) -> tuple[dict[str, Any], list[Any]]:
    id_field = manifest.item_id_field
    if type(candidates) is not list:  # a list (the common case) needs none of these slow abstract type checks
        if isinstance(candidates, Mapping):
            cols = {str(k): list(v) if not isinstance(v, np.ndarray) else v for k, v in candidates.items()}
            lengths = {len(v) for v in cols.values()}
            if len(lengths) != 1:
                raise InvalidInputError("candidates", "columns differ in length")
            n = lengths.pop()
            return cols, _plain_list(cols.get(id_field, range(n)))
        if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence | np.ndarray):
            raise InvalidInputError("candidates", "expected a list of item ids or feature rows")
    if len(candidates) == 0:
        raise InvalidInputError("candidates", "empty")
    ids_fast = _plain_ids(candidates)
    if ids_fast is not None:
        return _id_columns(*ids_fast, id_field, item_lookup)
    if all(isinstance(c, Mapping) for c in candidates):
        return _row_columns(manifest, candidates, id_field)
    raise InvalidInputError("candidates", "expected item ids (all numbers or all strings) or feature rows, not a mix")


def _row_columns(manifest: Manifest, candidates: Sequence[Mapping[str, Any]],
                 id_field: str) -> tuple[dict[str, Any], list[Any]]:
    """Columns of candidate objects; each is named by its id field, or all by position when none has one."""
    fields = {f.field for f in manifest.features if f.role == "item"} | {id_field}
    cols = {f: [c.get(f) for c in candidates] for f in fields}
    for f, vals in list(cols.items()):
        missing = [i for i, v in enumerate(vals) if v is None]
        if len(missing) == len(vals):
            del cols[f]
        elif missing:
            # An answer that named some candidates by id and others by position would be ambiguous.
            why = f"missing, and other candidates have it{' (their id)' if f == id_field else ''}"
            raise InvalidInputError(f"candidates[{missing[0]}].{f}", why)
    return cols, _plain_list(cols.get(id_field, range(len(candidates))))


def _plain_list(values: Any) -> list[Any]:
    """Plain Python values (ids go into JSON responses)."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _plain_ids(candidates: Sequence[Any] | npt.NDArray[Any]) -> tuple[npt.NDArray[Any], list[Any]] | None:
    """Candidates as an array and as plain Python ids when they are all ints or all strings, else None.

    The common case (a list of ids) is checked with one NumPy conversion rather
    than an isinstance call per candidate.
    """
    try:
        arr = np.asarray(candidates)
    except (ValueError, TypeError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuU":
        return None
    ids: list[Any] = arr.tolist()
    return arr, ids


def _id_columns(arr: npt.NDArray[Any], ids: list[Any], id_field: str,
                item_lookup: ItemLookup) -> tuple[dict[str, Any], list[Any]]:
    by_id: dict[str, Any] = {id_field: arr}
    looked = item_lookup()
    if looked is not None:
        table, index = looked
        try:
            rows = (index.rows(arr) if isinstance(index, ItemIndex)
                    else np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids)))
        except KeyError as exc:
            raise InvalidInputError("candidates", f"unknown item id {exc.args[0]!r}") from exc
        for col, values in table.items():
            if col != id_field:
                by_id[col] = values[rows]
    return by_id, ids
