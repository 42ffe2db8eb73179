"""Runtime backends: LiteRT and ONNX Runtime behind one interface."""

from .base import Backend, Session, SessionInfo
from .litert import LiteRTBackend
from .ort import OnnxRuntimeBackend

BACKENDS: dict[str, type[Backend]] = {
    LiteRTBackend.name: LiteRTBackend,
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
}


def backend_for_format(fmt: str) -> type[Backend]:
    """The backend class that runs artifacts of format ``fmt``."""
    for cls in BACKENDS.values():
        if fmt in cls.formats:
            return cls
    raise KeyError(fmt)


__all__ = ["BACKENDS", "Backend", "LiteRTBackend", "OnnxRuntimeBackend", "Session", "SessionInfo", "backend_for_format"]
