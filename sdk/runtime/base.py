"""The runtime backend interface: one per inference engine.

A backend turns artifact bytes into a :class:`Session` on an accelerator. It
raises :class:`AcceleratorUnavailableError` when the accelerator cannot run the
model, and the caller (:mod:`edgerec.sdk.model`) decides how to fall back.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.metadata
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy.typing as npt

from ..manifest import Artifact, Device, Format
from ..package import Blob

Arrays = dict[str, npt.NDArray[Any]]
BackendName = Literal["litert", "onnxruntime"]

# Models at least this large reach the engines through an anonymous in-memory file.
_MEMFD_MIN = 1 << 20


@contextlib.contextmanager
def model_source(model: Blob) -> Iterator[str | bytes]:
    """What to hand an engine: a ``/proc/self/fd`` path to a memfd holding the model, or bytes.

    Given bytes, ONNX Runtime and LiteRT copy (and ONNX Runtime parses) the
    model while holding the GIL: 35-40 ms for 50 MB, in which every request
    thread of an edge server loading a new version stalls. Given a path they
    map or read it with the GIL released. A memfd is anonymous memory, so a
    decrypted model still never touches a disk; it is closed once the engine
    has loaded the model (a mapping outlives the descriptor). Elsewhere than
    Linux, and for small models, plain bytes.
    """
    if len(model) < _MEMFD_MIN or not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        yield bytes(model)
        return
    fd = os.memfd_create("edgerec-model", os.MFD_CLOEXEC)
    try:
        view, n = memoryview(model), 0
        while n < len(view):  # os.write releases the GIL for each chunk
            n += os.write(fd, view[n:n + (4 << 20)])
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SessionInfo:
    """Where and how a session runs, as the engine reports it."""

    backend: BackendName
    accelerator: Device
    fully_delegated: bool | None
    detail: str = ""


class Session(abc.ABC):
    """One artifact loaded in one engine. ``run`` must be safe to call from many threads."""

    info: SessionInfo
    batch: int | None  # None: any batch size

    @abc.abstractmethod
    def run(self, inputs: Arrays) -> Arrays:
        """Run on inputs already shaped and typed for the model."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine's memory."""


class Backend(abc.ABC):
    """An inference engine that can load some artifact formats."""

    name: ClassVar[BackendName]
    formats: ClassVar[tuple[Format, ...]]
    module: ClassVar[str]  # what must import for the engine to run here
    distribution: ClassVar[str]  # the installed package whose version a report names

    @classmethod
    def available(cls) -> bool:
        """Whether the engine's Python package imports here."""
        try:
            importlib.import_module(cls.module)
        except ImportError:
            return False
        return True

    @abc.abstractmethod
    def load(self, model: Blob, artifact: Artifact, accelerator: Device, threads: int | None) -> Session:
        """Load model bytes (never a file on disk) onto ``accelerator`` ("cpu", "gpu" or "npu")."""

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)

