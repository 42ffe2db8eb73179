"""Reading and rebuilding Keras 3 functional graphs.

The converter changes a Keras model in three ways: lookup layers are cut out
(their inputs become row ids), embedding tables shrink (id pruning) and dense
kernels are zeroed (magnitude pruning). All three rebuild the graph with
``keras.models.clone_model``, so the user's model object is never modified
and the source stays available as the accuracy reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.manifest import TensorSpec

from .errors import UnsupportedModelError


@dataclass
class Rewrite:
    """Changes to apply while rebuilding a model.

    ``input_dtypes``: inputs whose dtype changes (lifted lookups take row ids).
    ``skip``: single-input layers replaced by their input (the lifted lookups).
    ``config``: layer config overrides (an Embedding's ``input_dim``).
    ``weights``: new weights for a layer, in ``get_weights`` order.
    """

    input_dtypes: dict[str, str] = field(default_factory=dict)
    skip: set[str] = field(default_factory=set)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, list[npt.NDArray[Any]]] = field(default_factory=dict)


def check_functional(model: Any) -> None:
    import keras

    if not isinstance(model, keras.Model) or not hasattr(model, "_inputs_struct"):
        raise UnsupportedModelError(
            f"{getattr(model, 'name', model)!r}: only Keras functional models can be converted "
            "(build it with keras.Input and keras.Model(inputs, outputs))"
        )


def input_specs(model: Any) -> tuple[TensorSpec, ...]:
    """The model inputs in declaration order."""
    return tuple(
        TensorSpec(t.name, _dtype(t.dtype), tuple(t.shape)) for t in _flat(model._inputs_struct)
    )


def output_names(model: Any) -> list[str]:
    """Output names as ``model.export`` writes them: dict keys, else ``output_<i>``."""
    struct = model._outputs_struct
    if isinstance(struct, Mapping):
        return list(struct)
    return [f"output_{i}" for i in range(len(_flat(struct)))]


def output_specs(model: Any) -> tuple[TensorSpec, ...]:
    flat = _flat(model._outputs_struct)
    return tuple(
        TensorSpec(n, _dtype(t.dtype), tuple(t.shape))
        for n, t in zip(output_names(model), flat, strict=True)
    )


def consumers(model: Any, tensor: Any) -> list[Any]:
    """Layers (operations) of ``model`` that take ``tensor`` as an input."""
    found = []
    for op in model.operations:
        for node in op._inbound_nodes:
            if any(t is tensor for t in node.input_tensors):
                found.append(op)
                break
    return found


def model_input(model: Any, name: str) -> Any:
    for t in _flat(model._inputs_struct):
        if t.name == name:
            return t
    raise KeyError(name)


def producer_input(model: Any, layer: Any) -> Any | None:
    """The model input a layer is called on, or None when it is fed by another layer."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    tensor = nodes[0].input_tensors[0]
    return tensor if any(tensor is t for t in _flat(model._inputs_struct)) else None


def rebuild(model: Any, rewrite: Rewrite) -> Any:
    """A copy of ``model`` with ``rewrite`` applied and all other weights copied."""
    import keras

    def new_input(t: Any) -> Any:
        dtype = rewrite.input_dtypes.get(t.name, t.dtype)
        return keras.Input(tuple(t.shape[1:]), dtype=dtype, name=t.name)

    struct = model._inputs_struct
    if isinstance(struct, Mapping):
        inputs: Any = {k: new_input(v) for k, v in struct.items()}
    elif isinstance(struct, list | tuple):
        inputs = [new_input(t) for t in struct]
    else:
        inputs = new_input(struct)

    def clone(layer: Any) -> Any:
        config = {**layer.get_config(), **rewrite.config.get(layer.name, {})}
        return layer.__class__.from_config(config)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in rewrite.skip:
            return args[0]
        return layer(*args, **kwargs)

    try:
        new = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, call_function=call)
    except (ValueError, TypeError) as exc:
        raise UnsupportedModelError(f"{model.name}: cannot rebuild the Keras graph ({exc})") from exc
    for layer in new.layers:
        if not layer.weights:
            continue
        weights = rewrite.weights.get(layer.name) or model.get_layer(layer.name).get_weights()
        layer.set_weights(weights)
    return as_dict_model(new)


def as_dict_model(model: Any) -> Any:
    """The same model with dict inputs and dict outputs, so exported names are stable."""
    import keras

    if isinstance(model._inputs_struct, Mapping) and isinstance(model._outputs_struct, Mapping):
        return model
    flat_in = _flat(model._inputs_struct)
    inputs = {t.name: keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=t.name) for t in flat_in}
    args: Any = [inputs[t.name] for t in flat_in]
    if not isinstance(model._inputs_struct, list | tuple | Mapping):
        args = args[0]
    elif isinstance(model._inputs_struct, Mapping):
        args = {k: inputs[v.name] for k, v in model._inputs_struct.items()}
    out = model(args)
    names = output_names(model)
    outputs = dict(zip(names, _flat(out), strict=True))
    return keras.Model(inputs, outputs, name=model.name)


def call_model(model: Any, arrays: Mapping[str, npt.NDArray[Any]], batch: int = 4096) -> dict[str, Any]:
    """Run a Keras model on named numpy inputs, in batches; outputs by exported name."""
    import tensorflow as tf

    names = output_names(model)
    n = next(iter(arrays.values())).shape[0]
    parts: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in names}
    struct = model._inputs_struct
    for start in range(0, n, batch):
        chunk = {k: tf.constant(v[start : start + batch]) for k, v in arrays.items()}
        if isinstance(struct, Mapping):
            args: Any = {k: chunk[v.name] for k, v in struct.items()}
        elif isinstance(struct, list | tuple):
            args = [chunk[t.name] for t in struct]
        else:
            args = chunk[struct.name]
        out = model(args, training=False)
        for name, value in zip(names, _flat(out), strict=True):
            parts[name].append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _flat(struct: Any) -> list[Any]:
    if isinstance(struct, Mapping):
        return list(struct.values())
    if isinstance(struct, list | tuple):
        return list(struct)
    return [struct]


def _dtype(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    return "string" if name in ("string", "str", "object") else name

