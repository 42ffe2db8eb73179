"""LiteRT (``ai_edge_litert``) backend.

Measured on these machines (DESIGN.md): the ``Interpreter`` with XNNPACK is the
path that handles dynamic batch sizes on the CPU; ``CompiledModel`` is faster
for fixed-shape artifacts and is the only way onto GPU/NPU. Asking
``CompiledModel`` for GPU|CPU raises on a machine without a GPU instead of
falling back, and NPU|CPU silently stays on the CPU when no vendor library is
present; both are turned into :class:`AcceleratorUnavailableError` here.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np

from ..errors import AcceleratorUnavailableError, RuntimeBackendError
from ..manifest import Artifact, Device
from ..native_logs import ENV, silenced
from ..package import Blob
from .base import Arrays, Backend, Session, SessionInfo, model_source


class _InterpreterSession(Session):
    def __init__(self, model: Blob, artifact: Artifact, threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            with model_source(model) as source, silenced():
                if isinstance(source, str):
                    self._interp = Interpreter(model_path=source, num_threads=threads)
                else:
                    self._interp = Interpreter(model_content=source, num_threads=threads)
                self._runner = self._interp.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeBackendError(f"LiteRT could not load the model: {exc}") from exc
        # A package has one signature for all artifacts; the TFLite graph may
        # want narrower types (int32 ids), already range-checked by the encoder.
        self._dtypes = {k: np.dtype(v["dtype"]) for k, v in self._runner.get_input_details().items()}
        # The interpreter holds mutable tensors; one call at a time.
        self._lock = threading.Lock()
        self.batch = artifact.batch if isinstance(artifact.batch, int) else None
        self.info = SessionInfo("litert", "cpu", True, "Interpreter/XNNPACK")

    def run(self, inputs: Arrays) -> Arrays:
        with self._lock:
            try:
                out = self._runner(**{k: np.ascontiguousarray(v, self._dtypes.get(k)) for k, v in inputs.items()})
            except (ValueError, RuntimeError) as exc:
                raise RuntimeBackendError(f"LiteRT run failed: {exc}") from exc
            return {k: np.array(v, copy=True) for k, v in out.items()}

    def close(self) -> None:
        with silenced():
            self._runner = None
            self._interp = None


class _CompiledSession(Session):
    def __init__(self, model: Blob, artifact: Artifact, accelerator: Device) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator as Accel

        flags = {"cpu": Accel.CPU, "gpu": Accel.GPU | Accel.CPU, "npu": Accel.NPU | Accel.CPU}[accelerator]
        env = _npu_environment() if accelerator == "npu" else None
        try:
            with model_source(model) as source, silenced():
                if isinstance(source, str):
                    self._model = CompiledModel.from_file(source, hardware_accel=flags, environment=env)
                else:
                    self._model = CompiledModel.from_buffer(source, hardware_accel=flags, environment=env)
        except (RuntimeError, ValueError) as exc:
            _drop_frames(exc)
            if accelerator == "cpu":
                raise RuntimeBackendError(f"LiteRT could not compile the model: {exc}") from exc
            raise AcceleratorUnavailableError(
                f"LiteRT {accelerator}: no usable {accelerator} for this model ({_first_line(exc)})"
            ) from exc
        full = self._model.is_fully_accelerated()
        if accelerator != "cpu" and not full:
            # NPU|CPU (and GPU|CPU on partial support) may compile with nothing
            # delegated; LiteRT cannot say how much ran on the accelerator.
            self._release()
            raise AcceleratorUnavailableError(
                f"LiteRT {accelerator}: the model is not delegated to the {accelerator}"
            )
        self._sig = next(iter(self._model.get_signature_list()))
        self._in = self._model.get_input_tensor_details(self._sig)
        self._out = self._model.get_output_tensor_details(self._sig)
        self._inputs = self._model.create_input_buffers(0)
        self._outputs = self._model.create_output_buffers(0)
        self._in_order = list(self._model.get_signature_list()[self._sig]["inputs"])
        self._out_order = list(self._model.get_signature_list()[self._sig]["outputs"])
        self._lock = threading.Lock()
        self.batch = artifact.batch if isinstance(artifact.batch, int) else None
        if self.batch is not None:
            dims = {int(d["shape"][0]) for d in self._in.values() if d["shape"]}
            if dims != {self.batch}:
                self._release()
                raise RuntimeBackendError(
                    f"{artifact.path}: the manifest says batch {self.batch}, the model has {sorted(dims)}"
                )
        self.info = SessionInfo("litert", accelerator, full if accelerator != "cpu" else True, "CompiledModel")

    def run(self, inputs: Arrays) -> Arrays:
        with self._lock:
            try:
                for name, buf in zip(self._in_order, self._inputs, strict=True):
                    want = np.dtype(self._in[name]["dtype"])
                    buf.write(np.ascontiguousarray(inputs[name], dtype=want))
                self._model.run_by_index(0, self._inputs, self._outputs)
                out: Arrays = {}
                for name, buf in zip(self._out_order, self._outputs, strict=True):
                    d = self._out[name]
                    shape = tuple(d["shape"])
                    out[name] = buf.read(int(np.prod(shape)), np.dtype(d["dtype"])).reshape(shape)
                return out
            except (RuntimeError, ValueError, KeyError) as exc:
                raise RuntimeBackendError(f"LiteRT run failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            for b in [*self._inputs, *self._outputs]:
                b.destroy()
            self._inputs, self._outputs = [], []
            self._release()

    def _release(self) -> None:
        # Dropping the model destroys its LiteRT environment, which logs every accelerator it drops.
        if self._model is None:
            return  # closed already
        with silenced():
            self._model.close()
            self._model = None


def _drop_frames(exc: BaseException) -> None:
    # A failed CompiledModel's environment lives on in the traceback's frames and
    # logs every accelerator it drops when they go: let them go now, quietly.
    with silenced():
        exc.__traceback__ = None


# "ERROR: [litert/runtime/compiled_model.cc:1036]": where LiteRT failed, not why.
_LOCATION = re.compile(r"\b(?:INFO|WARNING|ERROR): \[[^\]]*\]")


def _npu_environment() -> Any:
    """A LiteRT environment whose NPU dispatch library comes from ``EDGEREC_LITERT_DISPATCH_DIR``, if set.

    By default LiteRT looks for a vendor dispatch library inside its own
    package (``ai_edge_litert/vendors/<vendor>/dispatch``); on a device whose
    vendor runtime lives elsewhere, that variable names the folder.
    """
    folder = os.environ.get("EDGEREC_LITERT_DISPATCH_DIR")
    if not folder:
        return None
    import ai_edge_litert
    from ai_edge_litert.environment import Environment

    return Environment.create(runtime_path=os.path.dirname(os.path.abspath(ai_edge_litert.__file__)),
                              dispatch_library_path=folder)


def _first_line(exc: BaseException) -> str:
    # LiteRT's messages are multi-line source traces; one line is enough to report.
    text = " ".join(_LOCATION.sub(" ", str(exc)).replace("└", " ").split())
    return text[:200] or f"LiteRT gave no reason; {ENV}=1 shows its log"


class LiteRTBackend(Backend):
    """Runs ``.tflite`` artifacts with ai-edge-litert."""

    name = "litert"
    formats = ("tflite",)
    module = "ai_edge_litert.interpreter"
    distribution = "ai-edge-litert"


    def load(self, model: Blob, artifact: Artifact, accelerator: Device, threads: int | None) -> Session:
        if accelerator != "cpu":
            return _CompiledSession(model, artifact, accelerator)
        if isinstance(artifact.batch, int):
            try:
                return _CompiledSession(model, artifact, "cpu")
            except RuntimeBackendError:
                pass  # the Interpreter below handles what CompiledModel cannot
        return _InterpreterSession(model, artifact, threads)

