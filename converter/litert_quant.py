"""4-bit LiteRT artifacts with ai-edge-quantizer, from the fp32 ``.tflite``.

TensorFlow's converter writes a Keras ``Embedding`` as ``GATHER``, which
ai-edge-quantizer quantizes only with int8 activations. LiteRT's
``EMBEDDING_LOOKUP`` takes the same table and 1-D int32 ids and has hybrid
kernels for 4-bit tables that dequantize only the rows looked up, so eligible
gathers (constant 2-D float table, axis 0, 1-D int32 ids) are rewritten to it
first, through LiteRT's own flatbuffer tools. Then one ai-edge-quantizer
recipe per weight:

- tables (``rows``): 4 bits, symmetric, one fp16 scale per block of 32..256
  values along the row (a row of 32 or 64 values is one block: a scale per
  row); rows whose width is not a multiple of 32 get a scale per row
  (channelwise); tables too narrow for 4 bits get int8 with one scale;
- dense kernels (``FULLY_CONNECTED``): int8 per output channel (dynamic range)
  under ``int4-rows``; 4 bits under ``int4``, in blocks of 32 along K where K
  allows (else a scale per output channel), activations quantized on the fly.
  ai-edge-quantizer 0.10 offers blocks only in that dynamic mode, not
  weight-only; on the MovieLens DeepFM blocks of 32 lost 0.0007 AUC where a
  scale per output channel, weight-only, lost 0.0028.

Weights under ``MIN_WEIGHT_ELEMENTS`` stay float, as in the converter's own
dynamic-range quantization.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConversionError

PRECISIONS = ("int4-rows", "int4", "mixed")
MIN_WEIGHT_ELEMENTS = 1024
MIN_ROW_DIM = 16
_BLOCKS = (256, 128, 64, 32)


@dataclass(frozen=True)
class Layer:
    """A weight that can be stored at 4 bits, named after its op's output tensor."""

    name: str
    kind: str  # "rows" | "dense"
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class _Op:
    scope: str  # ai-edge-quantizer's name for the op: its output tensor names
    kind: str  # "rows" | "narrow-rows" | "dense" | "narrow-dense"
    shape: tuple[int, ...]


def four_bit_layers(fp32: bytes) -> list[Layer]:
    """The weights a 4-bit precision stores at 4 bits, largest first."""
    _, ops = _rewrite(fp32)
    layers = [Layer(o.scope, o.kind, o.shape) for o in ops if o.kind in ("rows", "dense")]
    return sorted(layers, key=lambda lay: -lay.elements)


def quantize(fp32: bytes, precision: str, layers: Collection[str] | None = None) -> tuple[bytes, dict[str, int]]:
    """The 4-bit artifact of the fp32 ``.tflite`` bytes, and the bits each quantized weight got."""
    from ai_edge_quantizer import qtyping, quantizer

    model, ops = _rewrite(fp32)
    four = {o.scope for o in ops if _four_bit(o, precision, layers)}
    if precision == "mixed":
        unknown = sorted(set(layers or ()) - {o.scope for o in ops if o.kind in ("rows", "dense")})
        if layers is None or unknown:
            raise ConversionError(f"tflite mixed: {', '.join(unknown) or 'no layers named'} cannot be stored at 4 bits")
    q = quantizer.Quantizer(bytearray(model))
    grain, name = qtyping.QuantGranularity, qtyping.TFLOperationName
    bits: dict[str, int] = {}
    for o in ops:
        regex = "(^|;)" + re.escape(o.scope) + "(;|$)"
        if o.kind in ("dense", "narrow-dense"):
            n = 4 if o.scope in four else 8
            if n == 4:
                q.add_dynamic_config(regex, name.FULLY_CONNECTED, 4, _dense_grain(o.shape[0], grain))
            else:
                q.add_dynamic_config(regex, name.FULLY_CONNECTED, 8, grain.CHANNELWISE)
        elif o.kind == "rows" and o.scope in four:
            n = 4
            q.add_dynamic_config(regex, name.EMBEDDING_LOOKUP, 4, _row_grain(o.shape[1], grain))
        else:
            n = 8
            q.add_dynamic_config(regex, name.EMBEDDING_LOOKUP, 8, grain.TENSORWISE)
        bits[o.scope] = n
    try:
        out = q.quantize(enable_progress_report=False).quantized_model
    except Exception as exc:  # ai-edge-quantizer raises ValueError, RuntimeError, KeyError
        raise ConversionError(f"ai-edge-quantizer ({precision}) failed: {_line(exc)}") from exc
    assert out is not None
    return bytes(out), bits


def _four_bit(op: _Op, precision: str, layers: Collection[str] | None) -> bool:
    if op.kind not in ("rows", "dense"):
        return False
    if precision == "int4":
        return True
    if precision == "int4-rows":
        return op.kind == "rows"
    return layers is not None and op.scope in layers


def _dense_grain(k: int, grain: Any) -> Any:
    """Blocks of 32 along K where K allows (as MatMulNBits), else a scale per output channel."""
    return grain.BLOCKWISE_32 if k % 32 == 0 else grain.CHANNELWISE


def _row_grain(dim: int, grain: Any) -> Any:
    for block in _BLOCKS:
        if dim % block == 0:
            return getattr(grain, f"BLOCKWISE_{block}")
    return grain.CHANNELWISE


def _rewrite(fp32: bytes) -> tuple[bytes, list[_Op]]:
    """Eligible GATHERs as EMBEDDING_LOOKUP, and every weight op worth quantizing."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32))
    if len(model.subgraphs) != 1:
        raise ConversionError("tflite 4-bit: models with several subgraphs are not supported")
    builtin = schema.BuiltinOperator
    codes = model.operatorCodes
    lookup = schema.OperatorCodeT()
    lookup.builtinCode = lookup.deprecatedBuiltinCode = builtin.EMBEDDING_LOOKUP
    lookup.version = 1
    graph = model.subgraphs[0]
    consumers: dict[int, int] = {}
    for op in graph.operators:
        for i in op.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    lookup_index: int | None = None
    ops: list[_Op] = []
    for op in graph.operators:
        code = max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)
        scope = ";".join(graph.tensors[i].name.decode() for i in op.outputs if i >= 0)
        if code == builtin.GATHER:
            table, ids = op.inputs[0], op.inputs[1]
            shape = _const_shape(model, graph, table)
            opts = op.builtinOptions
            if (shape is None or len(shape) != 2 or consumers.get(table) != 1 or opts.axis != 0
                    or opts.batchDims != 0 or len(graph.tensors[ids].shape) != 1
                    or graph.tensors[ids].type != schema.TensorType.INT32
                    or int(np.prod(shape)) < MIN_WEIGHT_ELEMENTS):
                continue
            if lookup_index is None:
                codes.append(lookup)
                lookup_index = len(codes) - 1
            op.opcodeIndex = lookup_index
            op.inputs = [ids, table]
            op.builtinOptionsType = schema.BuiltinOptions.NONE
            op.builtinOptions = None
            ops.append(_Op(scope, "rows" if shape[1] >= MIN_ROW_DIM else "narrow-rows", shape))
        elif code == builtin.FULLY_CONNECTED:
            shape = _const_shape(model, graph, op.inputs[1])
            if (shape is not None and len(shape) == 2 and consumers.get(op.inputs[1]) == 1
                    and int(np.prod(shape)) >= MIN_WEIGHT_ELEMENTS):
                # 4 bits per output channel wants at least 32 inputs per channel, as MatMulNBits does.
                kind = "dense" if shape[1] >= 32 else "narrow-dense"
                ops.append(_Op(scope, kind, (shape[1], shape[0])))  # [K, N] as in ONNX
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), ops


def _const_shape(model: Any, graph: Any, index: int) -> tuple[int, ...] | None:
    """The shape of a constant float32 tensor, or None."""
    if index < 0:
        return None
    tensor = graph.tensors[index]
    data = model.buffers[tensor.buffer].data
    if tensor.type != 0 or data is None or not len(data):  # 0: FLOAT32
        return None
    return tuple(int(d) for d in tensor.shape)


def _line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
