"""The runtime backend interface: one per inference engine.

A backend turns artifact bytes into a :class:`Session` on an accelerator. It
raises :class:`AcceleratorUnavailable` when the accelerator cannot run the
model, and the caller (:mod:`edgerec.sdk.model`) decides how to fall back.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy.typing as npt

from ..manifest import Artifact
from ..package import Blob

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class SessionInfo:
    """Where and how a session runs, as the engine reports it."""

    backend: str
    accelerator: str
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

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]

    @classmethod
    @abc.abstractmethod
    def available(cls) -> bool:
        """Whether the engine's Python package imports here."""

    @abc.abstractmethod
    def load(self, model: Blob, artifact: Artifact, accelerator: str, threads: int | None) -> Session:
        """Load model bytes (never a file on disk) onto ``accelerator`` ("cpu", "gpu" or "npu")."""

    def version(self) -> str:
        return ""

