"""Errors the converter raises on purpose, each on its branch of the SDK's error tree.

The root CLI prints any of them as one line and exits 1, so each message names
what was wrong (the file, the input, the layer or the operator).
"""

from __future__ import annotations

from edgerec.sdk.errors import ConfigurationError, EdgeRecError, RuntimeBackendError, UntrustedDataError


class ConversionError(EdgeRecError):
    """Root of the converter's errors (a mixin beside their branch in the SDK tree)."""


class UnsupportedModelError(ConversionError, ConfigurationError):
    """The source is not a readable Keras, SavedModel, ONNX or PyTorch model."""


class DataError(ConversionError, UntrustedDataError):
    """A calibration, evaluation or id-count file is missing, unreadable or mismatched."""


class UnsupportedOpError(ConversionError, RuntimeBackendError):
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
