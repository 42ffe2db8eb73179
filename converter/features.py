"""The feature spec: how each model input is filled from a request.

Roles come from ``--features FILE`` (JSON ``{input: {"role", "field",
"default"}}``, every key optional) and otherwise from the input's name:
``user*``/``u_*`` is a user feature; names with an item word (item, movie,
product, ad, video, song, track, doc) are item features; the rest is
context. The request field defaults to the input name. Id inputs without a
vocabulary get the valid range of the embedding table they index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgerec.sdk.choices import pick
from edgerec.sdk.manifest import ROLES, FeatureSpec, Role, TensorSpec
from edgerec.sdk.vocab import Vocabulary

from .errors import DataError

_USER = re.compile(r"(^|_)(user|usr|member|customer|viewer)|^u_")
_ITEM = re.compile(r"(^|_)(item|movie|product|ad|video|song|track|doc|article|sku)")


def guess_role(name: str) -> Role:
    low = name.lower()
    if _USER.search(low):
        return "user"
    if _ITEM.search(low):
        return "item"
    return "context"


def read_feature_file(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """``--features`` JSON, checked: roles must be user, item or context."""
    if path is None:
        return {}
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise DataError(f"{p}: expected {{input: {{role, field, default}}}}")
    for name, entry in doc.items():
        if "role" in entry and entry["role"] not in ROLES:
            raise DataError(f"{p}: {name}.role {entry['role']!r} is not one of {', '.join(ROLES)}")
    return doc


def feature_specs(
    inputs: Sequence[TensorSpec],
    vocabularies: Mapping[str, Vocabulary],
    id_ranges: Mapping[str, tuple[int, int]],
    overrides: Mapping[str, Mapping[str, Any]],
    hash_bins: Mapping[str, int] | None = None,
) -> list[tuple[FeatureSpec, Vocabulary | None]]:
    """One spec per model input, with the vocabulary to store beside it."""
    unknown = set(overrides) - {s.name for s in inputs}
    if unknown:
        raise DataError(f"--features: {', '.join(sorted(unknown))} is not a model input")
    out = []
    for spec in inputs:
        extra = overrides.get(spec.name, {})
        vocab = vocabularies.get(spec.name)
        bins = (hash_bins or {}).get(spec.name)
        role = pick(extra.get("role", guess_role(spec.name)), ROLES)
        if role is None:
            raise DataError(f"--features: {spec.name}.role {extra['role']!r} is not one of {', '.join(ROLES)}")
        feature = FeatureSpec(
            input=spec.name,
            role=role,
            field=str(extra.get("field", spec.name)),
            # The path PackageBuilder.add_feature stores the vocabulary under.
            vocabulary=f"vocab/{spec.name}.json" if vocab is not None else None,
            id_range=None if vocab is not None or bins is not None else id_ranges.get(spec.name),
            default=extra.get("default"),
            hash_bins=bins,
        )
        out.append((feature, vocab))
    return out


def keras_id_ranges(model: Any) -> dict[str, tuple[int, int]]:
    """``[0, rows-1]`` for integer inputs that feed only Embedding layers."""
    from .keras_graph import consumers

    ranges = {}
    for t in model.inputs:
        if "int" not in str(t.dtype):
            continue
        layers = consumers(model, t)
        if layers and all(type(layer).__name__ == "Embedding" for layer in layers):
            ranges[t.name] = (0, min(layer.input_dim for layer in layers) - 1)
    return ranges


def onnx_id_ranges(onnx_bytes: bytes) -> dict[str, tuple[int, int]]:
    """``[0, rows-1]`` for graph inputs that index an initializer through Gather (maybe via Cast)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - set(inits)
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inputs}
    ranges: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        src = alias.get(node.input[1], node.input[1])
        if src in inputs:
            rows = inits[node.input[0]][0]
            low, high = ranges.get(src, (0, rows - 1))
            ranges[src] = (low, min(high, rows - 1))
    return ranges


def id_fields(
    features: Sequence[FeatureSpec], item_field: str | None = None, user_field: str | None = None
) -> tuple[str, str | None]:
    """The request fields that name an item and a user: (item id field, user id field or None).

    By default the item (user) id is the item (user) feature that is an id: one
    with a vocabulary, hash bins or an id range, a name ending in ``id`` first;
    else the first feature of that role. ``--item-field`` / ``--user-field``
    name a feature of that role by input name or request field. A model with no
    item feature keeps ``item_id`` (the key object candidates are named by).
    """
    item = _id_field(features, "item", item_field, "--item-field")
    user = _id_field(features, "user", user_field, "--user-field")
    return item or "item_id", user


def _id_field(features: Sequence[FeatureSpec], role: Role, wanted: str | None, option: str) -> str | None:
    mine = [f for f in features if f.role == role]
    if wanted is not None:
        for f in mine:
            if wanted in (f.field, f.input):
                return f.field
        other = next((f for f in features if wanted in (f.field, f.input)), None)
        why = f"a {other.role} feature" if other is not None else "not a model input or request field"
        have = ", ".join(f.field for f in mine) or "none"
        raise DataError(f"{option} {wanted}: {why}; the {role} features are {have} (set roles with --features FILE)")
    ids = [f for f in mine if f.vocabulary is not None or f.hash_bins is not None or f.id_range is not None]
    named = [f for f in ids if f.field.lower().endswith("id")]
    best = (named or ids or mine)[:1]
    return best[0].field if best else None
