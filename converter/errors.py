"""Errors the converter raises on purpose; all derive from ``EdgeRecError``.

The root CLI prints any of them as one line and exits 1, so each message names
what was wrong (the file, the input, the layer or the operator).
"""

from __future__ import annotations

from edgerec.sdk.errors import EdgeRecError


class ConversionError(EdgeRecError):
    """Root of the converter's errors."""


class UnsupportedModelError(ConversionError):
    """The source is not a readable Keras, SavedModel, ONNX or PyTorch model."""


class DataError(ConversionError):
    """A calibration, evaluation or id-count file is missing, unreadable or mismatched."""


class UnsupportedOpError(ConversionError):
    """The model uses an operator (or layer) the target runtime cannot run."""


class AccuracyBudgetError(ConversionError):
    """Every candidate variant for a format lost more accuracy than the budget allows."""


__all__ = [
    "AccuracyBudgetError",
    "ConversionError",
    "DataError",
    "UnsupportedModelError",
    "UnsupportedOpError",
]
