"""SavedModel folders to LiteRT flatbuffers at a chosen precision.

Precisions: ``fp32``; ``fp16`` (float16 weights); ``int8-dynamic``
(dynamic-range: int8 weights, float activations; embedding tables are stored
int8 and gathered from directly); ``int8`` (full integer from representative
data; inputs and outputs stay float/int ids so the SDK feeds it unchanged).
Only builtin ops are allowed: a model needing TF Select (Flex) ops is refused
with the op names, since the edge runtime does not ship them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy.typing as npt

from .errors import ConversionError, UnsupportedOpError

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")  # from TensorFlow's converter; 4-bit: litert_quant
Sample = dict[str, npt.NDArray[Any]]


def convert(
    saved_model: Path,
    precision: str,
    representative: Callable[[], Iterator[Sample]] | None = None,
) -> bytes:
    """The ``.tflite`` bytes of ``saved_model`` at ``precision``."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ConversionError(f"tflite: unknown precision {precision!r}")
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        if representative is None:
            raise ConversionError("tflite int8: representative (calibration) data is needed")
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return bytes(conv.convert())
    except Exception as exc:  # ConverterError and friends carry the op list in the text
        raise _converter_error(str(exc), precision) from exc


def _converter_error(text: str, precision: str) -> ConversionError:
    ops = sorted(set(re.findall(r"\b(tf\.[A-Za-z0-9_]+)", text)))
    if ops or "not supported" in text:
        what = ", ".join(ops) if ops else _last_line(text)
        return UnsupportedOpError(f"LiteRT ({precision}) cannot run op(s) {what} with builtin kernels")
    return ConversionError(f"LiteRT conversion ({precision}) failed: {_last_line(text)}")


def gather_index_ranks(model: bytes) -> list[int]:
    """Ranks of the index tensors of every GATHER and EMBEDDING_LOOKUP op (1 is what GPU delegates take)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    tensors = interp.get_tensor_details()
    by_index = {t["index"]: t for t in tensors}
    ranks = []
    for op in interp._get_ops_details():  # the only way LiteRT exposes the op graph
        if op["op_name"] == "GATHER" and len(op["inputs"]) > 1:
            ranks.append(len(by_index[op["inputs"][1]]["shape_signature"]))
        elif op["op_name"] == "EMBEDDING_LOOKUP" and len(op["inputs"]):
            ranks.append(len(by_index[op["inputs"][0]]["shape_signature"]))
    return ranks


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "no message")[:300]
