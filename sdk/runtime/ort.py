"""ONNX Runtime backend for ``.onnx`` and ORT-format artifacts.

Execution providers are picked from those this onnxruntime build has, in the
order of preference for the requested accelerator; the CPU provider is always
last so unsupported nodes fall back inside ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

from ..errors import AcceleratorUnavailableError, RuntimeBackendError
from ..manifest import Artifact, Device
from ..package import Blob
from .base import Arrays, Backend, Session, SessionInfo, model_source

PROVIDERS: dict[Device, tuple[str, ...]] = {
    "gpu": (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "CoreMLExecutionProvider",
        "WebGpuExecutionProvider",
    ),
    "npu": (
        "QNNExecutionProvider",
        "OpenVINOExecutionProvider",
        "VitisAIExecutionProvider",
        "NnapiExecutionProvider",
        "CoreMLExecutionProvider",
    ),
    "cpu": (),
}


class _OrtSession(Session):
    def __init__(self, session: Any, accelerator: Device, artifact: Artifact) -> None:
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]
        used = session.get_providers()[0]
        # ONNX Runtime does not report how many nodes each provider took.
        self.info = SessionInfo(
            "onnxruntime", accelerator, True if accelerator == "cpu" else None, used
        )
        self.batch = artifact.batch if isinstance(artifact.batch, int) else None

    def run(self, inputs: Arrays) -> Arrays:
        try:
            values = self._session.run(self._outputs, inputs)
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise RuntimeBackendError(f"ONNX Runtime run failed: {exc}") from exc
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    """Runs ``.onnx`` and ``.ort`` artifacts with onnxruntime."""

    name = "onnxruntime"
    formats = ("ort", "onnx")
    module = "onnxruntime"
    distribution = "onnxruntime"


    def load(self, model: Blob, artifact: Artifact, accelerator: Device, threads: int | None) -> Session:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        wanted = [p for p in PROVIDERS[accelerator] if p in available]
        if accelerator != "cpu" and not wanted:
            raise AcceleratorUnavailableError(
                f"onnxruntime {accelerator}: no execution provider for it in this build "
                f"(available: {', '.join(sorted(available))})"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if artifact.format == "ort":
            opts.add_session_config_entry("session.load_model_format", "ORT")
        try:
            with model_source(model) as source:
                session = ort.InferenceSession(source, opts, providers=[*wanted, "CPUExecutionProvider"])
        except Exception as exc:
            if accelerator != "cpu":
                raise AcceleratorUnavailableError(f"onnxruntime {accelerator}: {exc}") from exc
            why = f"{exc}{_hint(exc, artifact)}"
            raise RuntimeBackendError(f"onnxruntime could not load {artifact.path}: {why}") from exc
        if accelerator != "cpu" and session.get_providers()[0] == "CPUExecutionProvider":
            raise AcceleratorUnavailableError(f"onnxruntime {accelerator}: the provider did not initialise")
        return _OrtSession(session, accelerator, artifact)


# Contrib ops the converter's 4-bit precisions use (int4-rows, int4, mixed).
_CONTRIB = ("GatherBlockQuantized", "MatMulNBits", "com.microsoft")


def _hint(exc: BaseException, artifact: Artifact) -> str:
    """What to do when the failure is a missing contrib op (a minimal or reduced onnxruntime build)."""
    text = str(exc)
    if any(name in text for name in _CONTRIB):
        return (
            f" ({artifact.precision} artifacts use onnxruntime contrib ops (com.microsoft "
            "GatherBlockQuantized, MatMulNBits): use the full onnxruntime package, or a minimal build "
            "made from the package's required_operators.config)"
        )
    return ""

