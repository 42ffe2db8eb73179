"""Putting converted artifacts, feature spec, vocabularies and reports into a package."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk import __version__
from edgerec.sdk.manifest import Device, FeatureSpec, ModelSignature, NpuTarget
from edgerec.sdk.package import PackageBuilder
from edgerec.sdk.vocab import Vocabulary

from .build import Built
from .evaluate import VariantResult
from .features import id_fields
from .prepare import Prepared
from .sources import Source

if TYPE_CHECKING:
    from .pipeline import ConvertOptions

GPU_NPU: tuple[Device, ...] = ("gpu", "npu", "cpu")


@dataclass
class PackageParts:
    """Everything the package is made of."""

    name: str
    version: int
    signature: ModelSignature
    score_output: str
    features: list[tuple[FeatureSpec, Vocabulary | None]]
    artifacts: list[Built]
    source: Source
    prepared: Prepared
    warmup: dict[str, npt.NDArray[Any]] | None
    scores: npt.NDArray[np.float64] | None
    results: list[VariantResult]
    source_row: dict[str, Any]
    options: ConvertOptions


def artifact_path(b: Built) -> str:
    suffix = f"-b{b.batch}" if b.batch else ""
    target = b.extra.get("npu_target")
    if isinstance(target, NpuTarget):  # compiled ahead of time for one SoC's NPU (converter/npu.py)
        suffix += f".{target.vendor}-{target.soc.lower()}"
    return f"model-{b.precision}{suffix}.{b.format}"


def runtime_versions(fmt: str, target: NpuTarget | None = None) -> dict[str, str]:
    """Versions that made and that run the artifact (format lock-in shows up here)."""
    names: tuple[str, ...] = ("tensorflow", "ai-edge-litert") if fmt == "tflite" else ("onnx", "onnxruntime")
    if target is not None:
        names += (f"ai-edge-litert-sdk-{target.vendor}",)
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _order(b: Built) -> tuple[Any, ...]:
    target = b.extra.get("npu_target")
    return (target.vendor, target.soc) if isinstance(target, NpuTarget) else (), b.format != "tflite", b.batch or 0


def assemble(p: PackageParts) -> PackageBuilder:
    builder = PackageBuilder(p.name, p.version, p.signature)
    builder.producer.update({"edgerec.converter": __version__, "source": p.source.kind})
    builder.score_output = p.score_output
    # tflite first: the SDK loads the first (format, precision) this device can run; NPU-compiled last.
    for b in sorted(p.artifacts, key=_order):
        path = artifact_path(b)
        target = b.extra.get("npu_target")
        extra = {k: v for k, v in b.extra.items() if k not in ("accelerators", "npu_target")}
        if p.prepared.sparsity is not None:
            extra["sparsity"] = round(p.prepared.sparsity.achieved, 4)
        if b.operators_config is not None:
            config_path = f"{path}.required_operators.config"
            builder.add_file(config_path, b.operators_config, kind="ort_operators")
            extra["required_operators"] = config_path
        builder.add_artifact(
            path, b.data, b.format,
            precision=b.precision, batch=b.batch or "dynamic",
            accelerators=("npu",) if target is not None else GPU_NPU if b.batch else ("cpu",),
            runtime=runtime_versions(b.format, target), extra=extra, npu_target=target,
        )
    for spec, vocab in p.features:
        builder.add_feature(spec, vocab)
    builder.item_id_field, builder.user_id_field = id_fields(
        [spec for spec, _ in p.features], p.options.item_field, p.options.user_field)
    if p.warmup is not None:
        builder.set_warmup(p.warmup)
    if p.scores is not None:
        builder.set_score_distribution(p.scores)
    builder.eval_report = eval_report(p)
    builder.metadata["converter"] = {
        "quantize": p.options.quantize,
        "formats": sorted({b.format for b in p.artifacts}),
        "batch_buckets": list(p.options.batch_buckets),
        "lifted_lookups": [
            {"input": lk.input, "layer": lk.layer, "kind": lk.kind, "size": lk.size}
            for lk in p.prepared.lifted
        ],
    }
    return builder


def eval_report(p: PackageParts) -> dict[str, Any]:
    """The manifest's ``eval_report``: source metrics, every variant, budget and pruning."""
    report: dict[str, Any] = {
        "source": p.source_row,
        "variants": [r.to_dict() for r in p.results],
        "max_auc_drop": p.options.max_auc_drop,
        "max_log_loss_increase": p.options.max_log_loss_increase,
        "max_ece_increase": p.options.max_ece_increase,
        "max_slice_auc_drop": p.options.max_slice_auc_drop if p.options.slice_by else None,
        "label": p.options.label if p.options.eval is not None else None,
        "latency": "median ms, batch 1, 1 thread, CPU",
    }
    if p.prepared.sparsity is not None:
        report["pruning"] = p.prepared.sparsity.to_dict()
    if p.prepared.id_pruning:
        report["id_pruning"] = [r.to_dict() for r in p.prepared.id_pruning]
    return report
