"""Turning request data into model inputs: validation, vocabularies, casts.

Everything here raises :class:`InvalidInputError` naming the field, because this is
where untrusted request data meets the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .array_checks import all_finite, bounds, finite_bounds
from .errors import InvalidInputError, RuntimeBackendError
from .manifest import FeatureSpec, ModelSignature, TensorSpec
from .vocab import Vocabulary

Arrays = dict[str, npt.NDArray[Any]]
_FLOAT_EXACT_INT = {"float16": 2**11, "float32": 2**24, "float64": 2**53}
_ALL = np.logical_and.reduce  # the ufunc's own reduction: no Python wrapper per call
# Manifest dtype names -> dtypes: np.dtype(str) parses the name on every call (several times per request).
_DTYPES = {name: np.dtype(name) for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                              "uint64", "float16", "float32", "float64")}


@dataclass(frozen=True)
class InputEncoder:
    """Validates and encodes raw inputs against a signature and feature spec."""

    signature: ModelSignature
    features: Mapping[str, FeatureSpec]
    vocabularies: Mapping[str, Vocabulary]
    strict_vocab: bool = False
    _expected: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    # Inputs shaped [None, d1, d2, ...] with fixed trailing dimensions: name -> (d1, d2, ...).
    _tails: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_expected", frozenset(t.name for t in self.signature.inputs))
        for t in self.signature.inputs:
            if t.shape and t.shape[0] is None and all(d is not None for d in t.shape[1:]):
                self._tails[t.name] = tuple(d for d in t.shape[1:] if d is not None)

    def encode(self, inputs: Mapping[str, Any]) -> Arrays:
        """Model-ready arrays for ``inputs`` keyed by model input name."""
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs", "expected a mapping of input name to values")
        expected = self._expected
        for name in inputs:
            if name not in expected:
                raise InvalidInputError(str(name), f"unknown input; expected {', '.join(sorted(expected))}")
        out: Arrays = {}
        batch: int | None = None
        for spec in self.signature.inputs:
            if spec.name not in inputs:
                raise InvalidInputError(spec.name, "missing")
            arr = self._encode_one(spec, inputs[spec.name])
            if spec.shape and spec.shape[0] is None:
                if batch is None:
                    batch = arr.shape[0]
                elif arr.shape[0] != batch:
                    raise InvalidInputError(spec.name, f"batch size {arr.shape[0]} differs from {batch}")
            out[spec.name] = arr
        if batch == 0:
            raise InvalidInputError(self.signature.inputs[0].name, "empty batch")
        return out

    def _encode_one(self, spec: TensorSpec, value: Any) -> npt.NDArray[Any]:
        name = spec.name
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(name, f"not a rectangular array ({exc})") from exc
        if arr.dtype.kind == "O":
            raise InvalidInputError(name, "not a rectangular array of one type")
        feature = self.features.get(name)
        if feature is not None and feature.vocabulary is not None:
            arr = self._apply_vocab(name, arr, self.vocabularies[name])
        elif feature is not None and feature.hash_bins is not None:
            arr = hash_ids(name, arr, feature.hash_bins)
        tail = self._tails.get(name)
        if tail is None or arr.ndim != len(tail) + 1 or arr.shape[1:] != tail:  # else the shape is right
            check_shape(spec, arr)
        arr = cast_exact(name, arr, spec.dtype)
        if feature is not None and feature.id_range is not None and arr.size:
            low, high = feature.id_range
            lo, hi = bounds(arr)
            if lo < low or hi > high:
                bad = (arr < low) | (arr > high)
                raise InvalidInputError(name, f"id {arr[bad].flat[0]} is outside the valid range [{low}, {high}]")
        return arr

    def _apply_vocab(self, name: str, arr: npt.NDArray[Any], vocab: Vocabulary) -> npt.NDArray[Any]:
        if vocab.is_int and arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise InvalidInputError(name, "expected integer ids for this vocabulary")
        if not vocab.is_int and arr.dtype.kind not in "USiu":
            raise InvalidInputError(name, "expected string ids for this vocabulary")
        rows, miss = vocab.lookup(arr)
        if self.strict_vocab and miss.any():
            raise InvalidInputError(name, f"id {arr[miss].flat[0].item()!r} is not in the vocabulary")
        return rows


def hash_ids(name: str, arr: npt.NDArray[Any], bins: int) -> npt.NDArray[np.int64]:
    """Rows for raw ids by FarmHash Fingerprint64 of their text, modulo ``bins``.

    The same as Keras ``Hashing(num_bins)`` without salt (integers hash as their
    decimal text, as Keras does), so a lifted Hashing layer scores identically.
    """
    if arr.dtype.kind not in "USiu":
        raise InvalidInputError(name, "expected string or integer ids to hash")
    try:
        from farmhash import Fingerprint64
    except ImportError as exc:  # cityhash is a base dependency; a broken install says so here
        raise RuntimeBackendError(f"{name}: hashed ids need the cityhash package (pip install cityhash)") from exc
    flat = arr.ravel().tolist()
    hashed = np.fromiter((Fingerprint64(v if isinstance(v, str) else str(v)) for v in flat),
                         dtype=np.uint64, count=len(flat))
    return (hashed % np.uint64(bins)).astype(np.int64).reshape(arr.shape)


def check_shape(spec: TensorSpec, arr: npt.NDArray[Any]) -> None:
    """Rank and fixed dimensions must match; ``None`` dimensions are free."""
    if arr.ndim != len(spec.shape):
        raise InvalidInputError(
            spec.name, f"expected rank {len(spec.shape)} shape {_fmt(spec.shape)}, got shape {list(arr.shape)}"
        )
    for i, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
        if want is not None and want != got and not (i == 0 and want >= got):
            raise InvalidInputError(spec.name, f"expected shape {_fmt(spec.shape)}, got {list(arr.shape)}")


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def cast_exact(name: str, arr: npt.NDArray[Any], dtype: str) -> npt.NDArray[Any]:
    """Cast to ``dtype`` only where no value changes; NaN and Inf are refused."""
    target = _DTYPES.get(dtype)
    if target is None:
        target = np.dtype(dtype)
    src = arr.dtype
    if src == target:
        if src.kind == "f" and arr.size and not all_finite(arr):
            raise InvalidInputError(name, "contains NaN or Inf")
        return arr
    if src.kind in "USO" or target.kind in "USO":
        raise InvalidInputError(name, f"expected {dtype} values, got {_kind(src)}")
    if src.kind == "f":
        found = finite_bounds(arr) if arr.size else (0.0, 0.0)
        if found is None:
            raise InvalidInputError(name, "contains NaN or Inf")
        lo, hi = found
        if target.kind in "iu":
            if not _ALL(arr == np.round(arr), axis=None):
                raise InvalidInputError(name, f"expected {dtype}; non-integer values would be truncated")
            _check_int_range(name, arr, target)
        elif target.kind == "f" and arr.size and max(-lo, hi) > np.finfo(target).max:
            raise InvalidInputError(name, f"values overflow {dtype}")
        elif target.kind == "b":
            raise InvalidInputError(name, f"expected {dtype} values, got numbers")
    elif src.kind in "iu":
        if target.kind in "iu":
            _check_int_range(name, arr, target)
        elif target.kind == "f":
            limit = _FLOAT_EXACT_INT[target.name]
            lo, hi = bounds(arr) if arr.size else (0, 0)
            # float() rounds as the old float64 cast of each value did (rounding keeps the order).
            if float(max(-int(lo), int(hi))) > limit:
                raise InvalidInputError(name, f"integers above {limit} lose precision as {dtype}")
        elif target.kind == "b" and not np.isin(arr, (0, 1)).all():
            raise InvalidInputError(name, f"expected {dtype} values (0 or 1)")
    return arr.astype(target)


def _check_int_range(name: str, arr: npt.NDArray[Any], target: np.dtype[Any]) -> None:
    if not arr.size:
        return
    info = np.iinfo(target)
    lo, hi = bounds(arr)
    if lo < info.min or hi > info.max:
        raise InvalidInputError(name, f"values outside the {target.name} range [{info.min}, {info.max}]")


def _kind(dtype: np.dtype[Any]) -> str:
    return {"U": "strings", "S": "bytes", "O": "objects", "b": "booleans"}.get(dtype.kind, dtype.name)
