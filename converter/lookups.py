"""Lifting Keras lookup layers out of the graph into package vocabularies.

``StringLookup`` and ``IntegerLookup`` compile to hash-table ops that LiteRT
and tf2onnx cannot run (tensorflow #35454, #37844, #42673). A lookup that
sits directly on a model input is removed: the input then takes embedding
rows (int32: LiteRT's CompiledModel has no int64 tensor buffers) and the
lookup's vocabulary goes into the package, where the SDK applies it before
the model runs.

``Hashing`` (without salt or mask) is lifted the same way: the package's
feature spec records ``hash_bins`` and the SDK applies the same hash (FarmHash
Fingerprint64 of the id's text modulo ``num_bins``) before the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgerec.sdk.vocab import Vocabulary

from .errors import UnsupportedOpError
from .keras_graph import Rewrite, consumers, producer_input, rebuild

LOOKUPS = ("StringLookup", "IntegerLookup")
HASHING = "Hashing"


@dataclass(frozen=True)
class LiftedLookup:
    """One lookup removed from the graph."""

    input: str
    layer: str
    kind: str
    vocabulary: Vocabulary | None = None
    hash_bins: int | None = None

    @property
    def size(self) -> int:
        """Rows the lifted layer maps ids to."""
        if self.vocabulary is not None:
            return len(self.vocabulary.keys)
        return self.hash_bins or 0


def find_lookups(model: Any) -> list[tuple[Any, Any]]:
    """``(layer, model input)`` for every lookup or hashing layer in ``model``."""
    found = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in (*LOOKUPS, HASHING):
            continue
        source = producer_input(model, layer)
        if source is None:
            raise UnsupportedOpError(
                f"layer {layer.name!r} ({kind}): only lookups applied directly to a model input "
                "can be lifted into the package"
            )
        others = [c.name for c in consumers(model, source) if c is not layer]
        if others:
            raise UnsupportedOpError(
                f"layer {layer.name!r} ({kind}): input {source.name!r} also feeds "
                f"{', '.join(others)}, so the lookup cannot be lifted"
            )
        found.append((layer, source))
    return found


def hash_bins_of(layer: Any) -> int:
    """``num_bins`` of a Hashing layer the SDK can reproduce exactly."""
    if getattr(layer, "salt", None) is not None:
        # A salt switches Keras to SipHash (to_hash_bucket_strong), which the SDK does not apply.
        raise UnsupportedOpError(f"layer {layer.name!r} (Hashing): salted hashing cannot be lifted")
    if getattr(layer, "mask_value", None) is not None or getattr(layer, "output_mode", "int") != "int":
        raise UnsupportedOpError(
            f"layer {layer.name!r} (Hashing): only output_mode='int' without mask_value can be lifted"
        )
    return int(layer.num_bins)


def vocabulary_of(layer: Any) -> Vocabulary:
    """The SDK vocabulary that reproduces ``layer``'s mapping to rows."""
    kind = type(layer).__name__
    if layer.invert or layer.output_mode != "int":
        raise UnsupportedOpError(
            f"layer {layer.name!r} ({kind}): only output_mode='int' without invert can be lifted"
        )
    if layer.num_oov_indices != 1:
        # The SDK maps every unknown id to one row; several OOV buckets hash ids.
        raise UnsupportedOpError(
            f"layer {layer.name!r} ({kind}): num_oov_indices={layer.num_oov_indices}; "
            "only 1 can be lifted (the SDK has one OOV row)"
        )
    vocab = layer.get_vocabulary()
    # Layout: [mask token], OOV token, then the vocabulary (Keras's row order).
    oov_row = 0 if layer.mask_token is None else 1
    first_row = oov_row + 1
    raw = vocab[first_row:]
    keys: tuple[Any, ...] = (
        tuple(int(k) for k in raw) if kind == "IntegerLookup" else tuple(str(k) for k in raw)
    )
    return Vocabulary(keys, oov_row=oov_row, first_row=first_row)


def lift_lookups(model: Any) -> tuple[Any, list[LiftedLookup]]:
    """A copy of ``model`` without its lookups, and what was lifted (empty: the same model)."""
    found = find_lookups(model)
    if not found:
        return model, []
    lifted = [
        LiftedLookup(source.name, layer.name, HASHING, hash_bins=hash_bins_of(layer))
        if type(layer).__name__ == HASHING
        else LiftedLookup(source.name, layer.name, type(layer).__name__, vocabulary_of(layer))
        for layer, source in found
    ]
    rewrite = Rewrite(
        input_dtypes={lk.input: "int32" for lk in lifted},
        skip={lk.layer for lk in lifted},
    )
    return rebuild(model, rewrite), lifted
