"""Pruning: magnitude pruning of dense weights and rare-id pruning of embeddings.

Magnitude pruning zeroes the smallest ``sparsity`` fraction of each dense
kernel (per tensor). The artifact keeps its dense layout, so the gain shows
in the compressed (download) size; the accuracy guard decides whether the
loss is acceptable, since no fine-tuning follows.

Id pruning maps ids seen fewer than ``min_count`` times to the OOV row and
drops their embedding rows; the vocabulary is rewritten to match, so the
package's tables and the model agree row for row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.vocab import Vocabulary

from .data import read_table
from .errors import ConversionError, DataError
from .keras_graph import Rewrite, consumers, model_input, rebuild


@dataclass(frozen=True)
class SparsityReport:
    """What magnitude pruning did."""

    target: float
    achieved: float
    tensors: tuple[str, ...]
    weights: int

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "achieved": round(self.achieved, 4),
                "tensors": list(self.tensors), "weights": self.weights}


@dataclass(frozen=True)
class IdPruneReport:
    """What id pruning did to one input."""

    input: str
    ids_before: int
    ids_kept: int
    rows_before: int
    rows_after: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def magnitude_prune(weights: npt.NDArray[Any], sparsity: float) -> npt.NDArray[Any]:
    """``weights`` with the ``sparsity`` fraction of smallest magnitudes set to zero."""
    if not 0.0 <= sparsity < 1.0:
        raise ConversionError(f"--prune {sparsity}: sparsity must be in [0, 1)")
    flat = weights.ravel().copy()
    k = round(sparsity * flat.size)
    if k:
        flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
    return flat.reshape(weights.shape)


def _report(sparsity: float, pruned: Mapping[str, npt.NDArray[Any]]) -> SparsityReport:
    total = sum(w.size for w in pruned.values())
    zeros = sum(int(np.count_nonzero(w == 0)) for w in pruned.values())
    return SparsityReport(sparsity, zeros / total if total else 0.0, tuple(pruned), total)


def prune_keras(model: Any, sparsity: float) -> tuple[Any, SparsityReport]:
    """A copy of a Keras model with every 2-D dense kernel magnitude-pruned."""
    rewrite = Rewrite()
    pruned: dict[str, npt.NDArray[Any]] = {}
    for layer in model.layers:
        names = [w.name for w in layer.weights]
        if type(layer).__name__ != "Dense" or "kernel" not in names:
            continue
        values = layer.get_weights()
        i = names.index("kernel")
        values[i] = magnitude_prune(values[i], sparsity)
        pruned[f"{layer.name}/kernel"] = values[i]
        rewrite.weights[layer.name] = values
    return rebuild(model, rewrite), _report(sparsity, pruned)


def prune_variables(values: Mapping[str, npt.NDArray[Any]], sparsity: float) -> tuple[dict[str, Any], SparsityReport]:
    """New values for a SavedModel's dense kernels (rank-2, not embedding tables)."""
    pruned = {
        name: magnitude_prune(v, sparsity)
        for name, v in values.items()
        if v.ndim == 2 and "embedding" not in name and v.dtype.kind == "f"
    }
    return pruned, _report(sparsity, pruned)


def prune_onnx(onnx_bytes: bytes, sparsity: float) -> tuple[bytes, SparsityReport]:
    """ONNX bytes with the weight matrices of MatMul/Gemm nodes magnitude-pruned."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    weight_names = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    pruned: dict[str, npt.NDArray[Any]] = {}
    for init in model.graph.initializer:
        if init.name not in weight_names:
            continue
        arr = numpy_helper.to_array(init)
        if arr.ndim != 2 or arr.dtype.kind != "f":
            continue
        pruned[init.name] = magnitude_prune(arr, sparsity)
        init.CopyFrom(numpy_helper.from_array(pruned[init.name], init.name))
    return bytes(model.SerializeToString()), _report(sparsity, pruned)


# -- id pruning ------------------------------------------------------------------


def read_id_counts(path: str | Path) -> dict[str, Counter[Any]]:
    """Id counts per input: JSON ``{input: {id: count}}`` or a data file of raw ids, counted."""
    p = Path(path)
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text())
            return {str(k): Counter({_key(i): int(c) for i, c in v.items()}) for k, v in doc.items()}
        except OSError as exc:
            raise DataError(f"{p}: cannot read ({exc.strerror})") from exc
        except (ValueError, AttributeError, TypeError) as exc:
            raise DataError(f"{p}: expected {{input: {{id: count}}}} ({exc})") from exc
    table = read_table(p)
    return {name: Counter(col.ravel().tolist()) for name, col in table.items()}


def _key(raw: str) -> Any:
    try:
        return int(raw)
    except ValueError:
        return raw


def prune_ids(
    model: Any,
    vocabularies: Mapping[str, Vocabulary],
    counts: Mapping[str, Counter[Any]],
    min_count: int,
) -> tuple[Any, dict[str, Vocabulary], list[IdPruneReport]]:
    """Drop embedding rows of rare ids; rare and unknown ids share row 0 (OOV) afterwards."""
    rewrite = Rewrite()
    new_vocabs: dict[str, Vocabulary] = {}
    reports = []
    input_names = {t.name for t in model.inputs}
    for name, counter in counts.items():
        if name not in input_names:
            continue  # other columns of a training-data file
        tensor = model_input(model, name)
        layers = consumers(model, tensor)
        if not layers or any(type(layer).__name__ != "Embedding" for layer in layers):
            raise ConversionError(
                f"--id-counts: input {name!r} does not feed Embedding layers only, so ids cannot be pruned"
            )
        vocab = vocabularies.get(name)
        rows = layers[0].input_dim
        keys, old_rows, oov_row = _kept(vocab, counter, min_count, rows)
        for layer in layers:
            table = layer.get_weights()[0]
            dropped = np.setdiff1d(np.arange(table.shape[0]), old_rows)
            # Without a vocabulary there is no trained OOV row: rare ids get their mean.
            oov = table[oov_row] if oov_row is not None else (
                table[dropped].mean(axis=0) if dropped.size else np.zeros(table.shape[1], table.dtype)
            )
            rewrite.config[layer.name] = {"input_dim": len(keys) + 1}
            rewrite.weights[layer.name] = [np.vstack([oov[None, :], table[old_rows]]).astype(table.dtype)]
        new_vocabs[name] = Vocabulary(tuple(keys), oov_row=0, first_row=1)
        reports.append(IdPruneReport(name, len(vocab.keys) if vocab else rows, len(keys), rows, len(keys) + 1))
    if not reports:
        raise DataError(f"--id-counts: no column names a model input ({', '.join(sorted(input_names))})")
    return rebuild(model, rewrite), new_vocabs, reports


def _kept(
    vocab: Vocabulary | None, counter: Counter[Any], min_count: int, rows: int
) -> tuple[list[Any], npt.NDArray[np.int64], int | None]:
    if vocab is not None:
        kind = int if vocab.is_int else str
        keys = [k for k in vocab.keys if counter.get(kind(k), 0) >= min_count]
        old_rows = vocab.lookup(np.asarray(keys))[0] if keys else np.zeros(0, np.int64)
        return keys, old_rows, vocab.oov_row
    keys = sorted(int(k) for k, c in counter.items() if c >= min_count and 0 <= int(k) < rows)
    return keys, np.asarray(keys, dtype=np.int64), None
