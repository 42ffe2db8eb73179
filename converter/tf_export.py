"""TensorFlow models to SavedModel folders (dynamic or fixed batch) and to ONNX.

Measured with TF 2.21 / Keras 3.15: ``TFLiteConverter.from_keras_model`` fails
on dict-input models and concrete functions of Keras 3 models convert to NaN
outputs; ``model.export`` then ``from_saved_model`` works and keeps input and
output names. A fixed batch is set through ``input_signature``. tf2onnx 1.17
works with TF 2.21 from a SavedModel folder (its ``from_keras`` does not
accept dict inputs), so ONNX also goes through the SavedModel.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgerec.sdk.manifest import TensorSpec

from .errors import ConversionError, UnsupportedOpError
from .sources import ONNX_OPSET


def _tf_specs(specs: Sequence[TensorSpec], batch: int | None) -> dict[str, Any]:
    import tensorflow as tf

    return {
        s.name: tf.TensorSpec((batch, *s.shape[1:]), tf.as_dtype(s.dtype), name=s.name) for s in specs
    }


def export_keras(model: Any, specs: Sequence[TensorSpec], out: Path, batch: int | None = None) -> Path:
    """``model`` (dict inputs) as a SavedModel whose batch dimension is ``batch`` (None: any)."""
    try:
        model.export(str(out), verbose=False, input_signature=[_tf_specs(specs, batch)])
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"Keras export to SavedModel failed: {_last_line(exc)}") from exc
    return out


def resave_saved_model(
    src: Path, specs: Sequence[TensorSpec], out: Path, batch: int | None = None,
    kernels: dict[str, Any] | None = None,
) -> Path:
    """A SavedModel re-saved with a fixed batch and/or replaced variable values."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(src))
    for var in loaded.variables:
        if kernels and var.name in kernels:
            var.assign(kernels[var.name])
    fn = loaded.signatures["serving_default"]
    fixed = _tf_specs(specs, batch)
    names = [s.name for s in specs]

    def serve(*xs: Any) -> Any:
        return fn(**dict(zip(names, xs, strict=True)))

    traced = tf.function(serve, input_signature=[fixed[n] for n in names])
    tf.saved_model.save(loaded, str(out), signatures={"serving_default": traced})
    return out


def saved_model_variables(path: Path) -> dict[str, Any]:
    """Variable values of a SavedModel by variable name."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return {v.name: v.numpy() for v in loaded.variables}


def saved_model_to_onnx(saved_model: Path, out: Path) -> bytes:
    """tf2onnx in a child process: it changes global TF graph state and is noisy."""
    cmd = [
        sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model),
        "--output", str(out), "--opset", str(ONNX_OPSET),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.exists():
        raise _tf2onnx_error(proc.stderr)
    return out.read_bytes()


def _tf2onnx_error(stderr: str) -> ConversionError:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    unsupported = [ln for ln in lines if "is not supported" in ln or "Unsupported ops" in ln]
    if unsupported:
        return UnsupportedOpError(f"tf2onnx (ONNX/ORT): {unsupported[-1].split(' - ')[-1].strip()}")
    return ConversionError(f"tf2onnx failed: {lines[-1].strip() if lines else 'no output'}")


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
