"""Vocabulary tables: raw ids (strings or sparse integers) to embedding rows.

Recommender preprocessing (StringLookup, IntegerLookup) does not survive
conversion to mobile formats well, so edgerec keeps vocabularies out of the
graph, in the package, and applies them here before the model runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import PackageError

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Vocabulary:
    """Maps each key to row ``first_row + position``; unknown keys to ``oov_row``.

    ``keys`` are all strings or all integers. ``num_rows`` is the size of the
    embedding table the rows index, so the model input range is
    ``[0, num_rows)``.
    """

    keys: tuple[str, ...] | tuple[int, ...]
    oov_row: int = 0
    first_row: int = 1
    _index: dict[Any, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _sorted: tuple[IntArray, IntArray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = {type(k) for k in self.keys}
        if len(kinds) > 1 or (kinds and kinds.pop() not in (str, int)):
            raise PackageError("vocabulary: keys must be all strings or all integers")
        if len(set(self.keys)) != len(self.keys):
            raise PackageError("vocabulary: duplicate keys")
        if self.oov_row < 0 or self.first_row < 0:
            raise PackageError("vocabulary: rows must be >= 0")
        if self.is_int:
            keys = np.asarray(self.keys, dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            rows = (order + self.first_row).astype(np.int64)
            object.__setattr__(self, "_sorted", (keys[order], rows))
        else:
            object.__setattr__(
                self, "_index", {k: i + self.first_row for i, k in enumerate(self.keys)}
            )

    @property
    def is_int(self) -> bool:
        return bool(self.keys) and isinstance(self.keys[0], int)

    @property
    def num_rows(self) -> int:
        return max(self.oov_row + 1, self.first_row + len(self.keys))

    def lookup(self, values: Sequence[Any] | npt.NDArray[Any]) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Rows for ``values`` (any shape) and a mask of which were out of vocabulary."""
        arr = np.asarray(values)
        if self._sorted is not None:
            if arr.dtype.kind not in "iu":
                raise TypeError("integer vocabulary needs integer ids")
            keys, rows = self._sorted
            flat = arr.astype(np.int64).ravel()
            pos = np.searchsorted(keys, flat)
            pos_c = np.minimum(pos, len(keys) - 1) if len(keys) else pos
            hit = (pos < len(keys)) & (keys[pos_c] == flat) if len(keys) else np.zeros_like(flat, bool)
            out = np.where(hit, rows[pos_c] if len(keys) else 0, self.oov_row).astype(np.int64)
            return out.reshape(arr.shape), ~hit.reshape(arr.shape)
        index = self._index
        flat_list = arr.ravel().tolist()
        found = [index.get(v if isinstance(v, str) else str(v), -1) for v in flat_list]
        out = np.asarray(found, dtype=np.int64).reshape(arr.shape)
        miss = out < 0
        out[miss] = self.oov_row
        return out, miss

    def to_bytes(self) -> bytes:
        doc = {"keys": list(self.keys), "oov_row": self.oov_row, "first_row": self.first_row}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "vocabulary") -> Vocabulary:
        try:
            doc = json.loads(data)
            keys = doc["keys"]
            oov, first = doc.get("oov_row", 0), doc.get("first_row", 1)
            if not isinstance(keys, list) or not isinstance(oov, int) or not isinstance(first, int):
                raise TypeError("bad field types")
        except (ValueError, KeyError, TypeError) as exc:
            raise PackageError(f"{where}: not a vocabulary file ({exc})") from exc
        return cls(tuple(keys), oov_row=oov, first_row=first)
