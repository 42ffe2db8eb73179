"""Loading a source model: Keras 3 ``.keras``, TensorFlow SavedModel, ONNX, PyTorch.

Each source knows its inputs and outputs as the user feeds it (raw strings
and ids included) and can score rows: that is the reference every produced
variant is compared with.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.manifest import TensorSpec

from .errors import UnsupportedModelError

Arrays = dict[str, npt.NDArray[Any]]
ONNX_OPSET = 17

_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64",
}


@dataclass
class Source:
    """A loaded source model. Exactly one of the model fields is set, by ``kind``."""

    kind: str  # "keras" | "savedmodel" | "onnx" | "torch"
    label: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    keras_model: Any = None
    saved_model_dir: Path | None = None
    onnx_bytes: bytes | None = None
    torch_module: Any = None  # what scores rows: an nn.Module, a ScriptModule or an exported program's module
    torch_examples: tuple[Any, ...] | None = None  # example tensors, in input order (LiteRT conversion)
    torch_program: Any = None  # the torch.export.ExportedProgram of a .pt2 source
    _runner: Any = field(default=None, repr=False)

    @property
    def is_tensorflow(self) -> bool:
        return self.kind in ("keras", "savedmodel")

    def predict(self, arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """Score raw rows with the source model itself (the accuracy reference)."""
        if self.kind == "keras":
            from .keras_graph import call_model

            return call_model(self.keras_model, arrays)
        if self.kind == "savedmodel":
            return _call_saved_model(self._loaded(), arrays)
        if self.kind == "torch":
            return _call_torch(self.torch_module, self.inputs, self.outputs, arrays)
        return _call_onnx(self._loaded(), arrays)

    def _loaded(self) -> Any:
        if self._runner is None:
            if self.kind == "savedmodel":
                import tensorflow as tf

                self._runner = tf.saved_model.load(str(self.saved_model_dir))
            else:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.log_severity_level = 3
                self._runner = ort.InferenceSession(self.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        return self._runner


def load_source(
    source: Any,
    example_inputs: Sequence[Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    example_file: Path | None = None,
) -> Source:
    """Load ``source``: a path, a ``keras.Model`` or a ``torch.nn.Module`` (with example inputs).

    ``example_file`` (``--example-inputs``) holds the example inputs of a PyTorch file.
    Raises UnsupportedModelError for anything else, or a corrupt file.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if example_file is not None and path.suffix not in TORCH_SUFFIXES:
            raise UnsupportedModelError(f"--example-inputs: only PyTorch files ({', '.join(TORCH_SUFFIXES)}) take them")
        return _load_path(path, example_file)
    kind = type(source).__module__.split(".")[0]
    if kind == "torch" or _is_torch_module(source):
        return _load_torch(source, example_inputs, input_names, output_names)
    if kind in ("keras", "tf_keras") or hasattr(source, "_inputs_struct"):
        return _keras_source(source, getattr(source, "name", "keras model"))
    raise UnsupportedModelError(f"{type(source).__name__}: not a Keras model, torch module or model path")


def _load_path(path: Path, example_file: Path | None = None) -> Source:
    if not path.exists():
        raise UnsupportedModelError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise UnsupportedModelError(f"{path}: a folder, but not a SavedModel (no saved_model.pb)")
        return _load_saved_model(path)
    if path.suffix == ".keras":
        return _load_keras(path)
    if path.suffix == ".onnx":
        return _load_onnx(path.read_bytes(), str(path))
    if path.suffix in TORCH_SUFFIXES:
        from .torch_source import load_torch_file

        return load_torch_file(path, example_file)
    hint = _OTHER_TYPES.get(path.suffix.lower(), "")
    raise UnsupportedModelError(
        f"{path}: unsupported model type {path.suffix or '(no suffix)'!r} "
        f"({hint + '; ' if hint else ''}use a .keras file, a SavedModel folder, an .onnx file, "
        "or a PyTorch TorchScript .pt / torch.export .pt2 file)"
    )


TORCH_SUFFIXES = (".pt", ".pth", ".pt2")
# What to do with files people try that edgerec does not read.
_OTHER_TYPES = {
    ".h5": "a Keras 2 HDF5 file: load it with keras.models.load_model and save it as .keras",
    ".hdf5": "a Keras 2 HDF5 file: load it with keras.models.load_model and save it as .keras",
    ".tflite": "already a LiteRT model: convert its source model, so edgerec can evaluate and quantize it",
    ".ort": "already an ORT-format model: convert its source .onnx file",
    ".pb": "a frozen TensorFlow graph: export a SavedModel folder (tf.saved_model.save) instead",
    ".ptl": "a PyTorch Lite (mobile) file: save the model with torch.jit.save or torch.export.save instead",
    ".pkl": "a pickle, which edgerec does not load: save the model as .keras, .onnx, TorchScript or .pt2",
    ".safetensors": "weights without a graph: save the model as TorchScript (.pt) or torch.export (.pt2)",
}


def _load_keras(path: Path) -> Source:
    import keras

    _quiet_tensorflow()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile errors, ...
        raise UnsupportedModelError(f"{path}: not a readable Keras model ({one_line(exc)})") from exc
    return _keras_source(model, str(path))


def _keras_source(model: Any, label: str) -> Source:
    from .keras_graph import check_functional, input_specs, output_specs

    check_functional(model)
    return Source("keras", label, input_specs(model), output_specs(model), keras_model=model)


def _load_saved_model(path: Path) -> Source:
    import tensorflow as tf

    _quiet_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise UnsupportedModelError(f"{path}: the SavedModel has no 'serving_default' signature") from exc
    except Exception as exc:  # TF raises many kinds for a damaged SavedModel
        raise UnsupportedModelError(f"{path}: not a readable SavedModel ({one_line(exc)})") from exc
    specs = fn.structured_input_signature[1]
    inputs = tuple(_tf_spec(name, s) for name, s in sorted(specs.items()))
    outs = fn.structured_outputs
    outputs = tuple(_tf_spec(name, s) for name, s in outs.items())
    src = Source("savedmodel", str(path), inputs, outputs, saved_model_dir=path)
    src._runner = loaded
    return src


def _tf_spec(name: str, spec: Any) -> TensorSpec:
    dtype = "string" if spec.dtype.name == "string" else spec.dtype.name
    return TensorSpec(name, dtype, tuple(spec.shape.as_list()))


def _load_onnx(data: bytes, label: str) -> Source:
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError
        raise UnsupportedModelError(f"{label}: not a valid ONNX model ({one_line(exc)})") from exc
    inputs, outputs = onnx_signature(model)
    return Source("onnx", label, inputs, outputs, onnx_bytes=data)


def onnx_signature(model: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs (initializers excluded) and outputs of an ONNX model; symbolic dims are None."""
    inits = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        if t.elem_type not in _ONNX_DTYPES:
            raise UnsupportedModelError(f"ONNX value {v.name!r}: unsupported element type {t.elem_type}")
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSpec(v.name, _ONNX_DTYPES[t.elem_type], dims)

    return (
        tuple(spec(v) for v in model.graph.input if v.name not in inits),
        tuple(spec(v) for v in model.graph.output),
    )


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _load_torch(
    module: Any,
    example_inputs: Sequence[Any] | None,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
) -> Source:
    import torch

    if not example_inputs:
        raise UnsupportedModelError(
            "torch module: example_inputs are needed to export it: convert(module, ..., example_inputs=(tensor, ...))"
        )
    examples = tuple(torch.as_tensor(x) for x in example_inputs)
    names = list(input_names or [f"input_{i}" for i in range(len(examples))])
    module.eval()
    return make_torch_source(module, module, examples, names, output_names, type(module).__name__)


def make_torch_source(
    module: Any, traceable: Any, examples: tuple[Any, ...], names: Sequence[str],
    output_names: Sequence[str] | None, label: str, program: Any = None,
) -> Source:
    """A torch Source: ``module`` scores rows, ``traceable`` is exported to ONNX with a dynamic batch."""
    import torch

    rows = int(examples[0].shape[0]) if examples and examples[0].ndim else 1
    other = tuple(x[torch.arange(rows + 1) % rows] for x in examples) if examples and examples[0].ndim else None
    with torch.no_grad():
        try:
            probe = module(*examples)
        except Exception as exc:  # whatever the model raises on inputs it does not take
            raise UnsupportedModelError(f"{label}: the model fails on the example inputs ({one_line(exc)})") from exc
        try:
            if other is not None:
                module(*other)
        except Exception as exc:  # e.g. a traced reshape to the example batch size
            raise UnsupportedModelError(
                f"{label}: the model runs at batch {rows} but fails at batch {rows + 1} ({one_line(exc)}): "
                "it has a batch size built in; script or export it with a dynamic batch"
            ) from exc
    n_out = len(probe) if isinstance(probe, tuple | list) else 1
    outs = list(output_names or (["score"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]))
    if len(names) != len(examples) or len(outs) != n_out:
        raise UnsupportedModelError(f"{label}: input_names/output_names do not match the model")
    axes = {n: {0: "batch"} for n in [*names, *outs]}
    # torch.onnx.export documents (and types) its output as a path, not a file object.
    with tempfile.TemporaryDirectory(prefix="edgerec-torch-") as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            # The TorchScript exporter needs no onnxscript and keeps the names and dynamic batch given.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notes about this very exporter
                torch.onnx.export(
                    traceable, examples, out, input_names=list(names), output_names=outs,
                    dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
                )
        except Exception as exc:  # torch raises many kinds while tracing
            raise UnsupportedModelError(
                f"{label}: ONNX export failed ({one_line(exc)}); export the model to ONNX yourself "
                "and convert the .onnx file"
            ) from exc
        onnx_bytes = out.read_bytes()
    src = _load_onnx(onnx_bytes, label)
    return Source("torch", label, src.inputs, src.outputs, onnx_bytes=src.onnx_bytes, torch_module=module,
                  torch_examples=examples, torch_program=program)


def _call_saved_model(loaded: Any, arrays: Mapping[str, npt.NDArray[Any]], batch: int = 4096) -> Arrays:
    import tensorflow as tf

    fn = loaded.signatures["serving_default"]
    n = next(iter(arrays.values())).shape[0]
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    for start in range(0, n, batch):
        out = fn(**{k: tf.constant(v[start : start + batch]) for k, v in arrays.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _call_onnx(session: Any, arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(arrays)), strict=True))


def _call_torch(
    module: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
    arrays: Mapping[str, npt.NDArray[Any]],
) -> Arrays:
    import torch

    with torch.no_grad():
        out = module(*[torch.as_tensor(arrays[s.name]) for s in inputs])
    values = out if isinstance(out, tuple | list) else (out,)
    return {s.name: v.numpy() for s, v in zip(outputs, values, strict=True)}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
