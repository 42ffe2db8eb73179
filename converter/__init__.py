"""edgerec converter: trained models in, signed, quantized, evaluated packages out.

``convert`` takes a Keras 3 ``.keras`` file, a SavedModel folder, an ONNX file,
a TorchScript ``.pt`` or ``torch.export`` ``.pt2`` file, a ``keras.Model`` or a
``torch.nn.Module`` (with example inputs) and writes a
``.edgepkg`` with LiteRT and/or ORT-format artifacts, the feature spec and
vocabularies, warm-up samples, the reference score distribution and an
evaluation report. TensorFlow, tf2onnx and torch are imported only when used.
"""

from .errors import (
    AccuracyBudgetError,
    ConversionError,
    DataError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from .pipeline import ConvertOptions, ConvertResult, convert

__all__ = [
    "AccuracyBudgetError",
    "ConversionError",
    "ConvertOptions",
    "ConvertResult",
    "DataError",
    "UnsupportedModelError",
    "UnsupportedOpError",
    "convert",
]
