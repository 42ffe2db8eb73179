"""Producing artifacts: LiteRT from TensorFlow models, ORT format from ONNX.

Builders cache the intermediate forms (SavedModel per batch size, ONNX per
precision) so a bucketed or re-evaluated variant is not rebuilt from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy.typing as npt

from edgerec.sdk.manifest import Format, TensorSpec

from . import litert_quant, ort, tflite
from .calibration import Advance, tflite_dataset
from .errors import ConversionError
from .lean import lean, tidy
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
        self._fp32: dict[int | None, bytes] = {}

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
        advance: Advance | None = None, layers: frozenset[str] | None = None,
    ) -> Built:
        extra: dict[str, Any] = {}
        if precision in litert_quant.PRECISIONS:
            data, bits = litert_quant.quantize(self.fp32(batch), precision, layers)
            extra["weight_bits"] = weight_bits(bits.values())
            if precision == "mixed":
                extra["layers_4bit"] = sorted(layers or ())
        elif precision == "fp32":
            data = self.fp32(batch)
        else:
            rep = tflite_dataset(calibration, batch, advance) if calibration is not None else None
            data = tflite.convert(self.saved_model(batch), precision, rep if precision == "int8" else None)
        extra["gather_index_ranks"] = sorted(set(tflite.gather_index_ranks(data)))
        return Built("tflite", precision, data, batch, extra)

    def fp32(self, batch: int | None = None) -> bytes:
        """The fp32 ``.tflite`` (4-bit variants are quantized from it), converted once per batch size."""
        if batch not in self._fp32:
            self._fp32[batch] = tflite.convert(self.saved_model(batch), "fp32")
        return self._fp32[batch]

    def four_bit_layers(self) -> list[litert_quant.Layer]:
        return litert_quant.four_bit_layers(self.fp32())

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
    """ORT-format artifacts from an ONNX model, made lean first (:mod:`.lean`)."""

    def __init__(self, onnx_bytes: bytes, options: ort.StaticOptions) -> None:
        ort.check_runs(onnx_bytes, "source")
        onnx_bytes, self.lean = lean(onnx_bytes)
        renamed: dict[str, str] = {}
        onnx_bytes = ort.shorten_names(onnx_bytes, renamed)
        self._short = renamed  # weights are reported by their source names
        self._long = {v: k for k, v in renamed.items()}
        ort.check_runs(onnx_bytes, "fp32")
        self.onnx_bytes = onnx_bytes
        self.options = options
        self._quantized: dict[tuple[str, frozenset[str] | None], bytes] = {}

    def quantized(self, precision: str, samples: list[Arrays] | None, layers: frozenset[str] | None = None) -> bytes:
        key = (precision, layers)
        if key not in self._quantized:
            short = None if layers is None else {self._short.get(n, n) for n in layers}
            q = ort.quantize(self.onnx_bytes, precision, samples, self.options, short)
            ort.check_runs(q, precision)
            self._quantized[key] = q
        return self._quantized[key]

    def four_bit_layers(self) -> list[ort.Layer]:
        """The weights that can be stored at 4 bits, by their source names, largest first."""
        return [replace(lay, name=self._long.get(lay.name, lay.name)) for lay in ort.four_bit_layers(self.onnx_bytes)]

    def build(
        self, precision: str, samples: list[Arrays] | None, batch: int | None = None,
        layers: frozenset[str] | None = None,
    ) -> Built:
        model = self.quantized(precision, samples, layers)
        if batch is not None:
            model = ort.fix_batch(model, batch)
        # The quantizers name what they add after its source (t8__QuantizeLinear_Output) and add
        # metadata and opset imports: shorten and tidy again.
        art = ort.to_ort(ort.shorten_names(tidy(model)))
        extra: dict[str, Any] = {}
        if precision == "int8":
            extra = {"calibration": self.options.method, "per_channel": self.options.per_channel}
        if precision in ort.FOUR_BIT:
            extra["weight_bits"] = ort.weight_bits(model)
            if precision == "mixed":
                extra["layers_4bit"] = sorted(layers or ())
        extra["nodes"] = ort.ort_node_count(art.data)
        extra["graph"] = self.lean.to_dict()
        return Built("ort", precision, art.data, batch, extra, art.required_operators)


def weight_bits(bits: Any) -> dict[str, int]:
    """How many weights got each width: ``{"4": n, "8": m}``."""
    out: dict[str, int] = {}
    for b in bits:
        out[str(b)] = out.get(str(b), 0) + 1
    return dict(sorted(out.items()))


def _load(data: bytes) -> Any:
    import onnx

    return onnx.load_from_string(data)
