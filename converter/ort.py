"""ONNX models to quantized ONNX and then to ORT format for mobile runtimes.

Precisions: ``fp32``; ``int8-dynamic`` (``quantize_dynamic``: int8 weights,
activations quantized at run time); ``int8`` (static QDQ from calibration
data after ``quant_pre_process``, MinMax / Entropy / Percentile, optionally
per channel; uint8 activations, int8 weights); ``int4-rows`` (embedding
tables at 4 bits with a scale and zero point per row, ``GatherBlockQuantized``;
dense weights int8 as in ``int8-dynamic``); ``int4`` (tables and dense weights
at 4 bits, ``MatMulNBits``, blocks of 32 along K); ``mixed`` (4 bits for the
named weights only, int8 for the rest). The 4-bit ops are onnxruntime contrib
ops (``com.microsoft``), in every onnxruntime build. Weights under
``MIN_WEIGHT_ELEMENTS`` stay float: quantizing them saves less than the
quantize/dequantize nodes cost in the file (LiteRT's converter skips them too).
``convert_onnx_models_to_ort`` writes the ``.ort`` file and the
``required_operators.config`` a minimal ONNX Runtime build is compiled from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConversionError, UnsupportedOpError

PRECISIONS = ("fp32", "int8-dynamic", "int8", "int4-rows", "int4", "mixed")
FOUR_BIT = ("int4-rows", "int4", "mixed")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Static QDQ only around ops that hold weights: in a recommender the tables and
# kernels are the size, and leaving the activations of element-wise ops (FM
# squares, sums) in float avoids most of the accuracy loss and most Q/DQ nodes.
# Relu is included so ONNX Runtime folds it into the requantization of its Gemm.
STATIC_OPS = ("Gather", "MatMul", "Gemm", "Relu")
WEIGHT_OPS = ("Gather", "MatMul", "Gemm")
MIN_WEIGHT_ELEMENTS = 1024
MIN_ROW_DIM = 16  # narrower rows gain nothing from 4 bits once each has its own scale
MATMUL_BLOCK = 32
Sample = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Layer:
    """A weight that can be stored at 4 bits: an embedding table (``rows``) or a dense kernel."""

    name: str  # the initializer
    kind: str  # "rows" | "dense"
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class StaticOptions:
    """Static QDQ quantization settings."""

    method: str = "minmax"
    per_channel: bool = False
    percentile: float = 99.999


def quantize(
    onnx_bytes: bytes,
    precision: str,
    samples: list[Sample] | None = None,
    options: StaticOptions | None = None,
    layers: Collection[str] | None = None,
) -> bytes:
    """``onnx_bytes`` at ``precision`` (the input itself for fp32).

    ``layers``: for ``mixed``, the weights (initializer names, see :func:`four_bit_layers`) stored at 4 bits.
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"ort: {precision!r} is not supported (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return onnx_bytes
    with tempfile.TemporaryDirectory(prefix="edgerec-ort-") as tmp:
        src, pre, out = Path(tmp, "in.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "out.onnx")
        src.write_bytes(onnx_bytes)
        # ONNX Runtime's shape inference and calibrator leave temporary files in
        # the working directory; keep them in ours.
        with contextlib.chdir(tmp):
            _quantize_in(src, pre, out, precision, samples, options, layers)
        return out.read_bytes()


def _quantize_in(
    src: Path, pre: Path, out: Path, precision: str, samples: list[Sample] | None, options: StaticOptions | None,
    layers: Collection[str] | None,
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _pre_process(src, pre)
    try:
        if precision == "int8-dynamic":
            quantize_dynamic(pre, out, weight_type=QuantType.QInt8, nodes_to_exclude=_small_weight_nodes(pre))
        elif precision in FOUR_BIT:
            _quantize_4bit(pre, out, precision, layers)
        else:
            if not samples:
                raise ConversionError("ort int8: calibration data is needed for static quantization")
            _quantize_static(pre, out, samples, options or StaticOptions())
    except ConversionError:
        raise
    except Exception as exc:  # the quantizer raises bare Exceptions and asserts
        raise ConversionError(f"ONNX Runtime quantization ({precision}) failed: {_line(exc)}") from exc


def four_bit_layers(onnx_bytes: bytes) -> list[Layer]:
    """The weights a 4-bit precision stores at 4 bits, largest first.

    Tables: 2-D float initializers gathered on axis 0, rows of at least
    ``MIN_ROW_DIM``. Dense: 2-D float MatMul/Gemm weights with K >= 32. Both
    with at least ``MIN_WEIGHT_ELEMENTS`` values.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return sorted(_layers(model).values(), key=lambda lay: -lay.elements)


def _layers(model: Any) -> dict[str, Layer]:
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    found: dict[str, Layer] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            t = inits[node.input[0]]
            shape = tuple(int(d) for d in t.dims)
            axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0)
            if len(shape) == 2 and axis == 0 and shape[1] >= MIN_ROW_DIM and t.data_type == 1:
                found[t.name] = Layer(t.name, "rows", shape)
        elif node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            t = inits[node.input[1]]
            shape = tuple(int(d) for d in t.dims)
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                shape = shape[::-1]
            if len(shape) == 2 and shape[0] >= MATMUL_BLOCK and t.data_type == 1:
                found[t.name] = Layer(t.name, "dense", shape)
    # A weight shared by several nodes would be quantized once per node: left as it is.
    return {k: v for k, v in found.items() if v.elements >= MIN_WEIGHT_ELEMENTS and uses.get(k) == 1}


def _small_weight_nodes(path: Path, keep: Collection[str] = ()) -> list[str]:
    """Weight-holding nodes whose weights are too small to quantize (or named in ``keep``)."""
    import onnx

    model = onnx.load(path)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        weights = [x for x in node.input[:2] if x in sizes]
        if not weights or max(sizes[w] for w in weights) < MIN_WEIGHT_ELEMENTS or set(weights) & set(keep):
            out.append(node.name)
    return out


def _quantize_4bit(pre: Path, out: Path, precision: str, layers: Collection[str] | None) -> None:
    """4-bit weights with onnxruntime's ``MatMulNBitsQuantizer``, then int8 for what stays (``quantize_dynamic``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(pre)
    eligible = _layers(model)
    if precision == "int4-rows":
        chosen = {n for n, lay in eligible.items() if lay.kind == "rows"}
    elif precision == "int4":
        chosen = set(eligible)
    else:
        if layers is None:
            raise ConversionError("ort mixed: the 4-bit layers must be named")
        unknown = sorted(set(layers) - set(eligible))
        if unknown:
            raise ConversionError(f"ort mixed: {', '.join(unknown)} cannot be stored at 4 bits")
        chosen = set(layers)
    if any(eligible[n].kind == "dense" for n in chosen):
        # MatMulNBits replaces MatMul only: Gemm (MatMul + bias) goes back to MatMul + Add.
        renamed = ONNXModel(model).replace_gemm_with_matmul()
        chosen |= {new for new, old in renamed.items() if old in chosen}
    model = _nbits(model, chosen)
    mid = pre.with_name("nbits.onnx")
    onnx.save(model, mid)
    # What is left in float (small weights, dense layers under int4-rows) gets int8 as in int8-dynamic.
    quantize_dynamic(
        mid, out, weight_type=QuantType.QInt8, nodes_to_exclude=_small_weight_nodes(mid),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _nbits(model: Any, chosen: set[str]) -> Any:
    """``model`` with the chosen Gather tables as ``GatherBlockQuantized`` (a block per row up to 128
    values) and the chosen MatMul weights as ``MatMulNBits`` (blocks of 32 along K); asymmetric, 4 bits."""
    quantizer_cls = _nbits_quantizer()
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[int, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in chosen:
            dim = int(inits[node.input[0]].dims[1])
            groups.setdefault(min(128, max(16, 1 << (dim - 1).bit_length())), []).append(node.name)
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in chosen:
            groups.setdefault(MATMUL_BLOCK, []).append(node.name)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"edgerec_{i}"
    for block, names in groups.items():
        keep = set(names)
        others = [n.name for n in model.graph.node if n.op_type in ("Gather", "MatMul") and n.name not in keep]
        q = quantizer_cls(
            model, bits=4, block_size=block, is_symmetric=False, nodes_to_exclude=others,
            op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        q.process()
        model = q.model.model
    return _packed_uint8(model)


def _packed_uint8(model: Any) -> Any:
    """GatherBlockQuantized tables as uint8 with ``bits=4`` (two values a byte, low nibble first, along the
    last axis) instead of uint4: the ORT format has no 4-bit tensor type. Same kernel, same values.
    Their scales become float16 (a Cast brings the rows back to float32): half of a 32-value row's
    overhead, as LiteRT stores them."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        if node.op_type != "GatherBlockQuantized":
            continue
        scales = inits.get(node.input[2])
        if scales is not None and scales.data_type == onnx.TensorProto.FLOAT:
            scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales).astype(np.float16), scales.name))
            out = node.output[0]
            node.output[0] = f"{out}_f16"
            nodes.append(helper.make_node("Cast", [node.output[0]], [out], to=onnx.TensorProto.FLOAT,
                                          name=f"{node.name}_cast"))
        for pos in (0, 3):
            if pos >= len(node.input) or node.input[pos] not in inits:
                continue
            t = inits[node.input[pos]]
            if t.data_type != onnx.TensorProto.UINT4:
                continue
            values = numpy_helper.to_array(t).astype(np.uint8)  # one 4-bit value per element
            if values.shape[-1] % 2:
                values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
            packed = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
            t.CopyFrom(numpy_helper.from_array(packed, t.name))
        node.attribute.append(helper.make_attribute("bits", 4))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _nbits_quantizer() -> Any:
    with _root_logging_kept():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    # It warns that it moves the model to opset 21 (int4 types); the converter checks the result runs.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    return MatMulNBitsQuantizer


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    """Some onnxruntime tool modules call ``logging.basicConfig`` when imported: undo that."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def _pre_process(src: Path, out: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, out)
    except Exception:
        # ONNX's own shape inference and the optimizer still run without it.
        quant_pre_process(src, out, skip_symbolic_shape=True)


def _quantize_static(src: Path, out: Path, samples: list[Sample], opts: StaticOptions) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if opts.method not in CALIBRATION_METHODS:
        raise ConversionError(
            f"--calibration-method {opts.method!r}: use one of {', '.join(CALIBRATION_METHODS)}"
        )
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[opts.method]

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types: its base is Any
        def __init__(self) -> None:
            self._it: Iterator[Sample] = iter(samples)

        def get_next(self) -> Sample | None:
            return next(self._it, None)

    reader = Reader()
    extra = {"CalibPercentile": opts.percentile} if opts.method == "percentile" else {}
    # uint8 activations: ONNX Runtime converts int8 activation Q/DQ pairs to uint8 on x86 but not the
    # weights' DQ, which then no longer match and stop Gather from reading the int8 table directly.
    # Histogram calibration prints its progress to stdout, where `edgerec convert --json` writes.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            src, out, reader, quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
            op_types_to_quantize=list(STATIC_OPS), nodes_to_exclude=_small_weight_nodes(src),
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, extra_options=extra,
        )


def weight_bits(onnx_bytes: bytes) -> dict[str, int]:
    """How many weights a quantized model stores at 4 and at 8 bits: ``{"4": n, "8": m}``."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    four = [n for n in model.graph.node if n.op_type in ("GatherBlockQuantized", "MatMulNBits")]
    packed = {name for n in four for name in n.input}
    eight = [
        i for i in model.graph.initializer
        if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and i.name not in packed
        and int(np.prod(i.dims)) >= MIN_WEIGHT_ELEMENTS
    ]
    return {"4": len(four), "8": len(eight)}


def ort_node_count(ort_bytes: bytes) -> int:
    """Nodes in an ORT-format model (after ONNX Runtime's own optimisation at conversion)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    session = InferenceSession.InferenceSession.GetRootAs(ort_bytes, 0)
    return int(session.Model().Graph().NodesLength())


def shorten_names(onnx_bytes: bytes, renamed: dict[str, str] | None = None) -> bytes:
    """Rename internal tensors and nodes to short ids (``renamed``, when given, gets original -> short).

    tf2onnx names every tensor after its TensorFlow scope (80+ characters);
    in a small quantized model those names are a tenth of the file, and an
    edge device gains nothing from them. Graph inputs and outputs keep their
    names: they are the model's signature.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}_")  # "_": quantizer suffixes cannot collide

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}_"
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    for value in graph.value_info:
        value.name = short(value.name)
    if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
        return onnx_bytes  # subgraphs refer to outer names; leave such models as they are
    if renamed is not None:
        renamed.update(names)
    return bytes(model.SerializeToString())


def fix_batch(onnx_bytes: bytes, batch: int) -> bytes:
    """The same model with its batch dimension fixed to ``batch`` (for NNAPI/CoreML/QNN)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name for i in model.graph.initializer}
    for value in [*[v for v in model.graph.input if v.name not in inits], *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch
    # Stale intermediate shapes would contradict the fixed batch; ORT infers them again.
    del model.graph.value_info[:]
    return bytes(model.SerializeToString())


@dataclass(frozen=True)
class OrtArtifact:
    data: bytes
    required_operators: bytes


def to_ort(onnx_bytes: bytes) -> OrtArtifact:
    """ORT-format bytes and the operator config, with onnxruntime's converter tool (its Python
    function, in this process: the tool's import alone takes seconds, its conversion milliseconds)."""
    with _root_logging_kept():
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="edgerec-ort-") as tmp:
        src, out = Path(tmp, "src"), Path(tmp, "out")
        src.mkdir()
        (src / "m.onnx").write_bytes(onnx_bytes)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                convert_onnx_models_to_ort(src, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise _ort_error(printed.getvalue() + str(exc)) from exc
        ort_file, config = out / "m.ort", out / "required_operators.config"
        if not ort_file.exists():
            raise _ort_error(printed.getvalue())
        return OrtArtifact(ort_file.read_bytes(), config.read_bytes())


def check_runs(onnx_bytes: bytes, label: str) -> None:
    """Load the model in ONNX Runtime: an op it has no kernel for fails here, named."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise _ort_error(str(exc), label) from exc


def _ort_error(text: str, label: str = "ORT format") -> ConversionError:
    for line in text.splitlines():
        if "Could not find an implementation" in line or "is not a registered function/op" in line:
            return UnsupportedOpError(f"ONNX Runtime ({label}) cannot run the model: {line.strip()[:300]}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return ConversionError(f"ONNX Runtime ({label}) failed: {(lines[-1] if lines else 'no output')[:300]}")


def _line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
