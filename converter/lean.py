"""Lean ONNX graphs: fewer nodes before quantization and the ORT conversion.

An ORT-format file pays for every node and every intermediate tensor (name,
type, shape, edges): about 300-400 bytes each. On a recommender, whose
weights are a few hundred KB, that overhead is what made the ORT artifact
larger than the LiteRT one. Three steps, in order:

1. onnxruntime's offline optimisation at the basic level (constant folding,
   shape arithmetic over static shapes, redundant-node elimination, MatMul+Add
   into Gemm): portable ONNX, no execution-provider specific ops.
2. Index wraps: Keras's ``Embedding`` (``ops.take``) turns each id into
   ``where(id < 0, id + rows, id)`` before gathering; tf2onnx writes that as
   Cast/Less/Not/Mul/Add, eight nodes per table. ONNX ``Gather`` already wraps
   negative indices that way, so the computation is dropped, but only after
   running it in ONNX Runtime on every index in ``[-rows, rows)`` and finding
   exactly that function (no library recognises the pattern).
3. onnx-ir's passes: unused nodes and initializers, common subexpressions,
   duplicate initializers, unused opset imports, doc strings.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError

# Element-wise ops only: a wrap built from them is a function of each id alone,
# so checking every id in range proves it.
_ELEMENTWISE = frozenset({
    "Abs", "Add", "And", "Cast", "Clip", "Equal", "Greater", "GreaterOrEqual", "Identity", "Less",
    "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Sub", "Where",
})
_MAX_WRAP_NODES = 32
_MAX_CHECKED_ROWS = 1 << 22  # beyond 4M rows, the ends of the range and a sample in between


@dataclass(frozen=True)
class LeanReport:
    """Node and initializer counts before and after."""

    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    index_wraps: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lean(onnx_bytes: bytes) -> tuple[bytes, LeanReport]:
    """``onnx_bytes`` optimised offline, index wraps dropped, dead code removed."""
    import onnx

    before = onnx.load_from_string(onnx_bytes)
    optimised = ort_optimize(onnx_bytes)
    unwrapped, wraps = drop_index_wraps(optimised)
    cleaned = ir_cleanup(unwrapped)
    after = onnx.load_from_string(cleaned)
    report = LeanReport(
        len(before.graph.node), len(after.graph.node),
        len(before.graph.initializer), len(after.graph.initializer), wraps,
    )
    return cleaned, report


def ort_optimize(onnx_bytes: bytes) -> bytes:
    """onnxruntime's basic-level graph optimisation, saved as ONNX."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgerec-lean-") as tmp:
        out = Path(tmp, "optimised.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ConversionError(f"ONNX Runtime offline optimisation failed: {_line(exc)}") from exc
        return out.read_bytes()


def ir_cleanup(onnx_bytes: bytes) -> bytes:
    """Dead nodes and initializers, common subexpressions, duplicates, doc strings: onnx-ir's passes."""
    import onnx
    import onnx_ir as ir
    from onnx_ir.passes import common

    model = ir.serde.deserialize_model(onnx.load_from_string(onnx_bytes))
    passes = ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.CommonSubexpressionEliminationPass(),
        common.DeduplicateInitializersPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
        common.ClearMetadataAndDocStringPass(),
    )
    passes(model)
    return bytes(ir.serde.serialize_model(model).SerializeToString())


def tidy(onnx_bytes: bytes) -> bytes:
    """After quantization: without the metadata the quantizers add (``onnx.infer``,
    ``onnx.quant.pre_process``); the ORT file would carry it to every device."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    del model.metadata_props[:]
    model.doc_string = model.graph.doc_string = ""
    return bytes(model.SerializeToString())


def drop_index_wraps(onnx_bytes: bytes) -> tuple[bytes, int]:
    """Gathers from a table whose index is the graph input run through ``where(i < 0, i + rows, i)``
    take the input itself (the same function, which ONNX Gather applies anyway). Returns the model
    and how many gathers changed; the wrap nodes are left for dead-code removal."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in inits}
    producer = {out: node for node in graph.node for out in node.output}
    typed: dict[str, Any] | None = None
    changed = 0
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits or _axis(node) != 0:
            continue
        index = node.input[1]
        if index in inputs or index not in producer:
            continue
        found = _wrap_of(index, producer, inputs, inits)
        if found is None:
            continue
        source, nodes = found
        if typed is None:
            typed = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        rows = int(inits[node.input[0]].dims[0])
        if index in typed and _is_wrap(model, nodes, inputs[source], typed[index], inits, rows):
            node.input[1] = source
            changed += 1
    return (bytes(model.SerializeToString()), changed) if changed else (onnx_bytes, 0)


def _axis(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def _wrap_of(
    index: str, producer: dict[str, Any], inputs: dict[str, Any], inits: dict[str, Any]
) -> tuple[str, list[Any]] | None:
    """The one graph input and the element-wise nodes ``index`` is computed from, if it is so."""
    seen: set[str] = set()
    stack, sources = [index], set()
    nodes: list[Any] = []
    while stack:
        name = stack.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in inputs:
            sources.add(name)
            continue
        if name in inits:
            continue
        node = producer.get(name)
        if node is None or node.op_type not in _ELEMENTWISE or len(nodes) >= _MAX_WRAP_NODES:
            return None
        if node not in nodes:
            nodes.append(node)
        stack.extend(node.input)
    if len(sources) != 1:
        return None
    elem = inputs[next(iter(sources))].type.tensor_type.elem_type
    if elem not in (6, 7):  # int32, int64
        return None
    return next(iter(sources)), nodes


def _is_wrap(model: Any, nodes: list[Any], source: Any, output: Any, inits: dict[str, Any], rows: int) -> bool:
    """Run the nodes in ONNX Runtime over the ids ``[-rows, rows)``: do they compute the wrap exactly?"""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    order = [n for n in model.graph.node if n in nodes]  # the graph is topologically sorted
    used = {name: inits[name] for n in order for name in n.input if name in inits}
    sub = helper.make_model(
        helper.make_graph(order, "wrap", [source], [output], initializer=list(used.values())),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )
    dims = source.type.tensor_type.shape.dim
    if len(dims) not in (1, 2) or (len(dims) == 2 and dims[1].dim_value != 1):
        return False
    ids = _ids(rows, np.int32 if source.type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64)
    x = ids.reshape(-1, 1) if len(dims) == 2 else ids
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = np.asarray(session.run(None, {source.name: x})[0])
    except Exception:  # not runnable on its own: leave the graph as it is
        return False
    return bool(y.shape == x.shape and np.array_equal(y, np.where(x < 0, x + rows, x)))


def _ids(rows: int, dtype: Any) -> np.ndarray:
    if 2 * rows <= _MAX_CHECKED_ROWS:
        return np.arange(-rows, rows, dtype=dtype)
    k = _MAX_CHECKED_ROWS // 8
    ends = np.concatenate([np.arange(-rows, -rows + k), np.arange(-k, k), np.arange(rows - k, rows)])
    middle = np.random.default_rng(0).integers(-rows, rows, _MAX_CHECKED_ROWS - 4 * k)
    return np.concatenate([ends, middle]).astype(dtype)


def _line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
