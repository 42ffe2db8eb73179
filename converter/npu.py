"""NPU ahead-of-time artifacts: ``--npu qualcomm:SM8650,mediatek:MT6989``.

Each fixed-batch LiteRT artifact (``--batch-buckets``: NPUs run fixed shapes)
is compiled for each named SoC through ai-edge-litert's public AOT API
(``ai_edge_litert.aot.aot_compile``), which runs the vendor's compiler plugin
shipped in the ai-edge-litert wheel. The plugins need the vendor SDK
libraries, which the ``ai-edge-litert-sdk-qualcomm`` / ``-mediatek`` packages
(the ``[npu]`` extra) download from the vendor when they are built (QAIRT from
Qualcomm, NeuroPilot from MediaTek); where that download was not possible the
compilation fails, and edgerec says so in one line rather than writing a
package without the artifact asked for.

Each compiled artifact records its target (``npu_target``: vendor, SoC) and
the share of operators the compiler moved onto the NPU; the SDK loads it only
on a device whose SoC matches, and falls back to the generic artifacts.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerec.sdk.manifest import NpuTarget

from .build import Built
from .errors import ConversionError

VENDORS = ("qualcomm", "mediatek")
_SDK_PACKAGES = {"qualcomm": "ai-edge-litert-sdk-qualcomm", "mediatek": "ai-edge-litert-sdk-mediatek"}


def _target_module(vendor: str) -> Any:
    if vendor == "qualcomm":
        from ai_edge_litert.aot.vendors.qualcomm import target
    else:
        from ai_edge_litert.aot.vendors.mediatek import target
    return target


def parse_targets(spec: str | None) -> list[NpuTarget]:
    """``vendor:SOC[,vendor:SOC...]`` checked against the SoCs ai-edge-litert's compilers know."""
    if not spec:
        return []
    out: list[NpuTarget] = []
    for item in (s.strip() for s in spec.split(",")):
        vendor, _, soc = item.partition(":")
        vendor, soc = vendor.strip().lower(), soc.strip().upper()
        if vendor not in VENDORS or not soc:
            raise ConversionError(f"--npu {item!r}: expected vendor:SOC with vendor {' or '.join(VENDORS)}, "
                                  "e.g. qualcomm:SM8650,mediatek:MT6989")
        known = [m.value for m in _target_module(vendor).SocModel if m.value != "ALL"]
        if soc not in known:
            raise ConversionError(f"--npu {item}: the {vendor} compiler does not know SoC {soc} "
                                  f"(it knows {', '.join(known)})")
        target = NpuTarget(vendor, soc)
        if target not in out:
            out.append(target)
    return out


@dataclass(frozen=True)
class Compiled:
    """One compiled model: its bytes and how many operators went to the NPU."""

    data: bytes
    npu_ops: int | None
    ops: int | None


def compile_for(data: bytes, target: NpuTarget) -> Compiled:
    """``data`` (a .tflite) compiled for ``target``'s NPU; raises ConversionError with the reason."""
    from ai_edge_litert.aot import aot_compile as aot
    from ai_edge_litert.aot.core import aot_types

    mod = _target_module(target.vendor)
    chatter = io.StringIO()  # progress bars and "Skipping failed compilation" lines: the report says it once
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        result = aot.aot_compile(aot_types.Model.create_from_bytes(data),
                                 target=mod.Target(mod.SocModel(target.soc)), keep_going=True)
    if result.models:
        model = result.models[0]
        stats = getattr(getattr(model, "partition_stats", None), "subgraph_stats", None) or []
        npu_ops = sum(s.num_ops_offloaded for s in stats) if stats else None
        ops = sum(s.num_total_ops for s in stats) if stats else None
        return Compiled(bytes(model.model_bytes), npu_ops, ops)
    errors = [str(e) for _, e in result.failed_backends] or ["no model came back"]
    raise ConversionError(f"--npu {target.vendor}:{target.soc}: {_reason(errors[0], target.vendor)}")


def _reason(error: str, vendor: str) -> str:
    """The one line that says why a vendor compiler failed (its log sits in a temporary file)."""
    log = ""
    found = re.search(r"See (\S+\.error) for details", error)
    if found:
        path = Path(found.group(1))
        try:
            log = path.read_text(errors="replace")
            path.unlink()
        except OSError:
            log = ""
    missing = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", log)
    if missing or "Failed to load NeuronAdapter" in log or "SDK files directory not found" in log:
        lib = missing.group(1) if missing else "the NeuroPilot adapter" if vendor == "mediatek" else "its libraries"
        return (f"the {vendor} compiler needs the vendor SDK, which is not installed here ({lib} is missing): "
                f"pip install 'edgerec[npu]' (or {_SDK_PACKAGES[vendor]}) on a host that can reach the vendor's "
                "download, since the package fetches the SDK when it is built")
    lines = [ln.strip() for ln in log.splitlines() if "ERROR" in ln or "rror:" in ln]
    return (lines[-1] if lines else error)[:300]


def check_plan(targets: Sequence[NpuTarget], formats: Sequence[str], batch_buckets: Sequence[int]) -> None:
    """Fail before converting when ``--npu`` cannot be served: it needs fixed-batch LiteRT artifacts."""
    if targets and ("tflite" not in formats or not batch_buckets):
        raise ConversionError("--npu needs fixed-batch LiteRT artifacts: add --batch-buckets (e.g. 1,16) "
                              "and keep tflite in --format")


def compile_artifacts(targets: Sequence[NpuTarget], built: Sequence[Built]) -> list[Built]:
    """Every fixed-batch LiteRT artifact in ``built`` compiled for every target."""
    from .assemble import artifact_path

    bases = [b for b in built if b.format == "tflite" and b.batch]
    out = []
    for target in targets:
        for base in bases:
            compiled = compile_for(base.data, target)
            extra: dict[str, Any] = {"npu_target": target, "compiled_from": artifact_path(base)}
            if compiled.ops:
                extra["npu_ops"] = compiled.npu_ops
                extra["ops"] = compiled.ops
            out.append(Built("tflite", base.precision, compiled.data, base.batch, extra))
    return out
