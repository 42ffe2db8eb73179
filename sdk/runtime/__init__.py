"""Runtime backends: LiteRT and ONNX Runtime behind one interface."""

from typing import Literal

from ..choices import parse_choice
from ..manifest import Format
from .base import Backend, BackendName, Session, SessionInfo
from .litert import LiteRTBackend
from .ort import OnnxRuntimeBackend

BACKENDS: dict[BackendName, type[Backend]] = {
    LiteRTBackend.name: LiteRTBackend,
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}
# What a caller may ask for: a backend by name, or the first that can run the package.
BackendChoice = Literal["auto", "litert", "onnxruntime"]
BACKEND_CHOICES: tuple[BackendChoice, ...] = ("auto", "litert", "onnxruntime")


def parse_backend(value: str, field: str = "backend") -> BackendChoice:
    """A backend choice from a CLI option, a config file or JSON; InvalidInputError naming ``field`` if unknown."""
    return parse_choice(value, BACKEND_CHOICES, field)


def backend_for_format(fmt: Format) -> type[Backend]:
    """The backend class that runs artifacts of format ``fmt``."""
    for cls in BACKENDS.values():
        if fmt in cls.formats:
            return cls
    raise KeyError(fmt)


__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "Backend",
    "BackendChoice",
    "BackendName",
    "LiteRTBackend",
    "OnnxRuntimeBackend",
    "Session",
    "SessionInfo",
    "backend_for_format",
    "parse_backend",
]
