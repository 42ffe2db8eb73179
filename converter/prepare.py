"""From a loaded source to the model that gets converted.

Keras: lookups lifted into vocabularies, rare ids pruned, dense kernels
pruned. SavedModel: dense kernels pruned (variables re-saved). ONNX and
PyTorch (exported to ONNX): dense weight matrices pruned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerec.sdk.manifest import TensorSpec
from edgerec.sdk.vocab import Vocabulary

from .errors import ConversionError
from .features import keras_id_ranges, onnx_id_ranges
from .lookups import LiftedLookup, lift_lookups
from .prune import (
    IdPruneReport,
    SparsityReport,
    prune_ids,
    prune_keras,
    prune_onnx,
    prune_variables,
    read_id_counts,
)
from .sources import Source
from .tf_export import saved_model_variables


@dataclass
class Prepared:
    """The model to convert, its inputs as the package declares them, and its vocabularies."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    hash_bins: dict[str, int] = field(default_factory=dict)
    id_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    keras_model: Any = None
    saved_model: Path | None = None
    kernels: dict[str, Any] | None = None
    onnx_bytes: bytes | None = None
    lifted: list[LiftedLookup] = field(default_factory=list)
    sparsity: SparsityReport | None = None
    id_pruning: list[IdPruneReport] = field(default_factory=list)


def prepare(src: Source, prune: float, min_id_count: int, id_counts: Path | None) -> Prepared:
    """Lift, id-prune and magnitude-prune ``src`` as asked."""
    if min_id_count and id_counts is None:
        raise ConversionError("--min-id-count needs --id-counts FILE (how often each id was seen)")
    counts = read_id_counts(id_counts) if id_counts is not None and min_id_count else None
    if src.kind == "keras":
        return _prepare_keras(src, prune, min_id_count, counts)
    if counts is not None:
        raise ConversionError(f"id pruning needs a Keras source; {src.label} is {src.kind}")
    if src.kind == "savedmodel":
        prepared = Prepared(src.inputs, src.outputs, saved_model=src.saved_model_dir)
        if prune:
            assert src.saved_model_dir is not None
            prepared.kernels, prepared.sparsity = prune_variables(saved_model_variables(src.saved_model_dir), prune)
        return prepared
    assert src.onnx_bytes is not None
    data, sparsity = (src.onnx_bytes, None)
    if prune:
        data, sparsity = prune_onnx(src.onnx_bytes, prune)
    return Prepared(
        src.inputs, src.outputs, onnx_bytes=data, sparsity=sparsity, id_ranges=onnx_id_ranges(data)
    )


def _prepare_keras(
    src: Source, prune: float, min_id_count: int, counts: dict[str, Counter[Any]] | None
) -> Prepared:
    from .keras_graph import Rewrite, as_dict_model, input_specs, output_specs, rebuild

    model, lifted = lift_lookups(src.keras_model)
    if not lifted:
        model = rebuild(model, Rewrite())  # a private copy, whatever happens next
    model = as_dict_model(model)
    vocabs = {lk.input: lk.vocabulary for lk in lifted if lk.vocabulary is not None}
    id_pruning: list[IdPruneReport] = []
    if counts is not None:
        model, new_vocabs, id_pruning = prune_ids(model, vocabs, counts, min_id_count)
        vocabs.update(new_vocabs)
    sparsity = None
    if prune:
        model, sparsity = prune_keras(model, prune)
    model = _narrow_ids(model)
    # Keep the source's input order (clone/dict wrapping may sort them).
    order = {s.name: i for i, s in enumerate(src.inputs)}
    inputs = tuple(sorted(input_specs(model), key=lambda s: order.get(s.name, len(order))))
    return Prepared(
        inputs=inputs,
        outputs=output_specs(model),
        vocabularies=vocabs,
        id_ranges=keras_id_ranges(model),
        hash_bins={lk.input: lk.hash_bins for lk in lifted if lk.hash_bins is not None},
        keras_model=model,
        lifted=lifted,
        sparsity=sparsity,
        id_pruning=id_pruning,
    )


def _narrow_ids(model: Any) -> Any:
    """int64 id inputs become int32: LiteRT's CompiledModel (fixed-batch, GPU/NPU) rejects
    int64 buffers, and an embedding table never has 2**31 rows."""
    from .keras_graph import Rewrite, rebuild

    ids = keras_id_ranges(model)
    narrow = {t.name: "int32" for t in model.inputs if t.name in ids and str(t.dtype) == "int64"}
    return rebuild(model, Rewrite(input_dtypes=narrow)) if narrow else model
