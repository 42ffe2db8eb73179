"""What this device can run: its SoC, accelerators and runtime versions.

One function, :func:`device_capabilities`, describes the machine the SDK runs
on; the node daemon sends that description in its check-in, and
``EdgeModel.load`` uses it to pick the best artifact the device can run (an
NPU artifact compiled ahead of time for this SoC first; else the package's
generic artifacts, on an accelerator when one loads, else on the CPU).

The SoC comes from, in order: ``EDGEREC_SOC`` (``vendor:MODEL``, e.g.
``qualcomm:SM8650``: for operators and containers that hide the hardware);
Android's ``ro.soc.manufacturer`` / ``ro.soc.model`` properties; Linux's
``/sys/devices/soc0`` and the device tree's ``compatible`` list (``qcom,sm8650``,
``mediatek,mt8188``). Nothing here runs a model: "npu" is listed when the
SoC's vendor NPU runtime library is found (or onnxruntime has an NPU
execution provider), "gpu" when onnxruntime has a GPU provider or a Vulkan or
OpenCL loader is installed. Those are what the device *may* run; loading
still falls back to the CPU, saying why, when an accelerator refuses a model.
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Vendor names as ``--npu`` and the manifest spell them, from what devices report.
_VENDORS = {
    "qualcomm": "qualcomm", "qcom": "qualcomm", "qti": "qualcomm", "snapdragon": "qualcomm",
    "mediatek": "mediatek", "mtk": "mediatek",
    "google": "google_tensor", "google_tensor": "google_tensor",
    "samsung": "samsung", "exynos": "samsung",
}
# Libraries whose presence means the vendor's NPU runtime is installed.
NPU_RUNTIME_LIBRARIES: dict[str, tuple[str, ...]] = {
    "qualcomm": ("QnnHtp",),
    "mediatek": ("neuron_adapter", "neuronusdk_adapter.mtk", "neuron_runtime"),
    "google_tensor": ("edgetpu_litert",),
    "samsung": ("enn_public_api_cpp",),
}
_ORT_NPU = ("QNNExecutionProvider", "OpenVINOExecutionProvider", "VitisAIExecutionProvider", "NnapiExecutionProvider")
_ORT_GPU = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
            "DmlExecutionProvider", "CoreMLExecutionProvider", "WebGpuExecutionProvider")


def vendor_name(raw: str) -> str | None:
    """The vendor as edgerec spells it (``qualcomm``, ``mediatek``, ...), or None."""
    return _VENDORS.get(raw.strip().lower())


@dataclass(frozen=True)
class DeviceCapabilities:
    """A device's SoC, the accelerators it may run, and its runtime versions."""

    soc_vendor: str | None = None  # "qualcomm", "mediatek", ...
    soc_model: str | None = None  # upper case: "SM8650", "MT6989"
    accelerators: tuple[str, ...] = ("cpu",)
    runtimes: dict[str, str] = field(default_factory=dict)  # package -> version: ai-edge-litert, onnxruntime
    ort_providers: tuple[str, ...] = ()
    machine: str = ""
    system: str = ""

    @property
    def soc(self) -> str | None:
        """``vendor:MODEL``, the spelling of ``--npu``."""
        return f"{self.soc_vendor}:{self.soc_model}" if self.soc_vendor and self.soc_model else None

    def can_run_target(self, vendor: str, soc: str) -> bool:
        """Whether an artifact compiled for ``vendor``/``soc`` is for this device's SoC."""
        return (self.soc_vendor, (self.soc_model or "").upper()) == (vendor, soc.upper()) and \
            "ai-edge-litert" in self.runtimes

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a node sends in its check-in."""
        return {
            "soc": {"vendor": self.soc_vendor, "model": self.soc_model} if self.soc else None,
            "accelerators": list(self.accelerators),
            "runtimes": dict(self.runtimes),
            "ort_providers": list(self.ort_providers),
            "machine": self.machine,
            "system": self.system,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DeviceCapabilities:
        """Read a reported description (what a check-in carries); unknown keys are ignored."""
        soc = doc.get("soc") or {}
        vendor = soc.get("vendor") if isinstance(soc, Mapping) else None
        model = soc.get("model") if isinstance(soc, Mapping) else None
        return cls(
            soc_vendor=str(vendor) if vendor else None,
            soc_model=str(model).upper() if model else None,
            accelerators=tuple(str(a) for a in doc.get("accelerators") or ("cpu",)),
            runtimes={str(k): str(v) for k, v in (doc.get("runtimes") or {}).items()},
            ort_providers=tuple(str(p) for p in doc.get("ort_providers") or ()),
            machine=str(doc.get("machine") or ""),
            system=str(doc.get("system") or ""),
        )


@functools.cache
def device_capabilities() -> DeviceCapabilities:
    """This device's description (computed once per process: it reads files and package metadata)."""
    vendor, model = detect_soc()
    runtimes = {}
    for name in ("ai-edge-litert", "onnxruntime"):
        try:
            runtimes[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    providers = _ort_providers() if "onnxruntime" in runtimes else ()
    accels = ["cpu"]
    if any(p in providers for p in _ORT_GPU) or any(ctypes.util.find_library(n) for n in ("vulkan", "OpenCL")):
        accels.append("gpu")
    npu_lib = vendor is not None and any(ctypes.util.find_library(n) for n in NPU_RUNTIME_LIBRARIES.get(vendor, ()))
    if npu_lib or any(p in providers for p in _ORT_NPU):
        accels.append("npu")
    return DeviceCapabilities(vendor, model, tuple(accels), runtimes, providers, platform.machine(), platform.system())


def detect_soc(root: Path = Path("/"), env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(vendor, MODEL) of this device's SoC, or (None, None) when nothing says."""
    env = os.environ if env is None else env
    override = env.get("EDGEREC_SOC", "").strip()
    if override:
        vendor_raw, _, model = override.partition(":")
        vendor = vendor_name(vendor_raw)
        return (vendor, model.strip().upper() or None) if vendor else (None, None)
    if root == Path("/"):
        found = _android_soc()
        if found[0]:
            return found
    soc0 = root / "sys/devices/soc0"
    family, machine = _read(soc0 / "family"), _read(soc0 / "machine")
    vendor = vendor_name(family.split()[0]) if family else None
    if vendor and machine and re.fullmatch(r"[A-Za-z]{1,4}\d{3,5}[A-Za-z]?", machine):
        return vendor, machine.upper()
    for entry in _read(root / "proc/device-tree/compatible").split("\0"):
        maker, _, chip = entry.partition(",")
        vendor = vendor_name(maker)
        if vendor and re.fullmatch(r"[a-z]{1,4}\d{3,5}[a-z]?", chip):
            return vendor, chip.upper()
    return None, None


def _android_soc() -> tuple[str | None, str | None]:
    getprop = shutil.which("getprop")
    if getprop is None:
        return None, None
    try:
        maker, model = (subprocess.run([getprop, p], capture_output=True, text=True, timeout=2, check=False)
                        .stdout.strip() for p in ("ro.soc.manufacturer", "ro.soc.model"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    vendor = vendor_name(maker) if maker else None
    return (vendor, model.upper()) if vendor and model else (None, None)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


__all__ = ["NPU_RUNTIME_LIBRARIES", "DeviceCapabilities", "detect_soc", "device_capabilities", "vendor_name"]
