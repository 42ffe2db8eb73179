"""ONNX models to quantized ONNX and then to ORT format for mobile runtimes.

Precisions: ``fp32``; ``int8-dynamic`` (``quantize_dynamic``: int8 weights,
activations quantized at run time); ``int8`` (static QDQ from calibration
data after ``quant_pre_process``, MinMax / Entropy / Percentile, optionally
per channel). ``convert_onnx_models_to_ort`` writes the ``.ort`` file and the
``required_operators.config`` a minimal ONNX Runtime build is compiled from.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from .errors import ConversionError, UnsupportedOpError

PRECISIONS = ("fp32", "int8-dynamic", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Static QDQ only around ops that hold weights: in a recommender the tables and
# kernels are the size, and leaving the activations of element-wise ops (FM
# squares, sums) in float avoids most of the accuracy loss and most Q/DQ nodes.
STATIC_OPS = ("Gather", "MatMul", "Gemm")
Sample = dict[str, npt.NDArray[Any]]


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
) -> bytes:
    """``onnx_bytes`` at ``precision`` (the input itself for fp32)."""
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
            _quantize_in(src, pre, out, precision, samples, options)
        return out.read_bytes()


def _quantize_in(
    src: Path, pre: Path, out: Path, precision: str, samples: list[Sample] | None, options: StaticOptions | None
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _pre_process(src, pre)
    try:
        if precision == "int8-dynamic":
            quantize_dynamic(pre, out, weight_type=QuantType.QInt8)
        else:
            if not samples:
                raise ConversionError("ort int8: calibration data is needed for static quantization")
            _quantize_static(pre, out, samples, options or StaticOptions())
    except ConversionError:
        raise
    except Exception as exc:  # the quantizer raises bare Exceptions and asserts
        raise ConversionError(f"ONNX Runtime quantization ({precision}) failed: {_line(exc)}") from exc


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
    quantize_static(
        src, out, reader, quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
        op_types_to_quantize=list(STATIC_OPS),
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=method, extra_options=extra,
    )


def shorten_names(onnx_bytes: bytes) -> bytes:
    """Rename internal tensors and nodes to short ids.

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
    """ORT-format bytes and the operator config, via onnxruntime's converter tool."""
    with tempfile.TemporaryDirectory(prefix="edgerec-ort-") as tmp:
        src, out = Path(tmp, "src"), Path(tmp, "out")
        src.mkdir()
        (src / "m.onnx").write_bytes(onnx_bytes)
        cmd = [
            sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
            "--output_dir", str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        ort_file, config = out / "m.ort", out / "required_operators.config"
        if proc.returncode != 0 or not ort_file.exists():
            raise _ort_error(proc.stdout + proc.stderr)
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
