"""Producing artifacts: LiteRT from TensorFlow models, ORT format from ONNX.

Builders cache the intermediate forms (SavedModel per batch size, ONNX per
precision) so a bucketed or re-evaluated variant is not rebuilt from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from edgerec.sdk.manifest import Format, TensorSpec

from . import ort, tflite
from .calibration import Advance, tflite_dataset
from .errors import ConversionError
from .sources import onnx_signature
from .tf_export import export_keras, resave_saved_model, saved_model_to_onnx

Arrays = dict[str, npt.NDArray[Any]]


@dataclass
class Built:
    """One artifact's bytes and what the manifest says of it."""

    format: Format
    precision: str
    data: bytes
    batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    operators_config: bytes | None = None

    @property
    def key(self) -> str:
        return f"{self.format}:{self.precision}"


class TfBuilder:
    """LiteRT artifacts (and ONNX for ORT) from a Keras model or a SavedModel folder."""

    def __init__(
        self, workdir: Path, specs: tuple[TensorSpec, ...], keras_model: Any = None,
        saved_model: Path | None = None, kernels: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.specs = specs
        self.keras_model = keras_model
        self.saved_model_src = saved_model
        self.kernels = kernels
        self._dirs: dict[int | None, Path] = {}
        self._onnx: bytes | None = None

    def saved_model(self, batch: int | None = None) -> Path:
        if batch not in self._dirs:
            out = self.workdir / f"savedmodel-{batch or 'dynamic'}"
            if self.keras_model is not None:
                export_keras(self.keras_model, self.specs, out, batch)
            elif batch is None and not self.kernels:
                assert self.saved_model_src is not None
                out = self.saved_model_src  # unchanged: convert the user's folder as it is
            else:
                assert self.saved_model_src is not None
                resave_saved_model(self.saved_model_src, self.specs, out, batch, self.kernels)
            self._dirs[batch] = out
        return self._dirs[batch]

    def tflite(
        self, precision: str, calibration: Arrays | None, batch: int | None = None,
        advance: Advance | None = None,
    ) -> Built:
        rep = tflite_dataset(calibration, batch, advance) if calibration is not None else None
        data = tflite.convert(self.saved_model(batch), precision, rep if precision == "int8" else None)
        ranks = tflite.gather_index_ranks(data)
        return Built("tflite", precision, data, batch, {"gather_index_ranks": sorted(set(ranks))})

    def onnx(self) -> bytes:
        if self._onnx is None:
            data = saved_model_to_onnx(self.saved_model(None), self.workdir / "model.onnx")
            names = {s.name for s in onnx_signature(_load(data))[0]}
            want = {s.name for s in self.specs}
            if names != want:
                raise ConversionError(
                    f"tf2onnx renamed the inputs ({', '.join(sorted(names))} instead of {', '.join(sorted(want))})"
                )
            self._onnx = data
        return self._onnx


class OrtBuilder:
    """ORT-format artifacts from an ONNX model."""

    def __init__(self, onnx_bytes: bytes, options: ort.StaticOptions) -> None:
        onnx_bytes = ort.shorten_names(onnx_bytes)
        ort.check_runs(onnx_bytes, "fp32")
        self.onnx_bytes = onnx_bytes
        self.options = options
        self._quantized: dict[str, bytes] = {}

    def quantized(self, precision: str, samples: list[Arrays] | None) -> bytes:
        if precision not in self._quantized:
            q = ort.quantize(self.onnx_bytes, precision, samples, self.options)
            ort.check_runs(q, precision)
            self._quantized[precision] = q
        return self._quantized[precision]

    def build(self, precision: str, samples: list[Arrays] | None, batch: int | None = None) -> Built:
        model = self.quantized(precision, samples)
        if batch is not None:
            model = ort.fix_batch(model, batch)
        art = ort.to_ort(model)
        extra: dict[str, Any] = {}
        if precision == "int8":
            extra = {"calibration": self.options.method, "per_channel": self.options.per_channel}
        return Built("ort", precision, art.data, batch, extra, art.required_operators)


def _load(data: bytes) -> Any:
    import onnx

    return onnx.load_from_string(data)
