"""``convert``: source model in, signed package out, under an accuracy budget.

Steps: load the source; lift lookups and prune (``prepare``); read the
evaluation and calibration rows; build every candidate variant; score each
on the held-out rows with the SDK runtimes; keep the requested (or, with
``auto``, the smallest in-budget) variant per format; add fixed-batch
buckets; write the package. All intermediate files live in a temporary
folder and the package is written atomically, so a failure leaves nothing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.sdk.choices import pick
from edgerec.sdk.errors import InvalidInputError
from edgerec.sdk.inputs import InputEncoder
from edgerec.sdk.manifest import Format, Manifest, ModelSignature, TensorSpec
from edgerec.sdk.native_logs import silenced
from edgerec.sdk.package import Package

from . import data as tables
from . import npu, torch_litert
from .assemble import PackageParts, assemble
from .build import Built, OrtBuilder, TfBuilder
from .calibration import ort_samples
from .errors import AccuracyBudgetError, ConversionError, DataError
from .evaluate import (
    Slices,
    VariantResult,
    auc,
    compressed_size,
    expected_calibration_error,
    log_loss,
    measure,
    score_column,
)
from .features import feature_specs, id_fields, read_feature_file
from .guard import Budget, failing, judge, make_slices
from .ort import StaticOptions
from .prepare import Prepared, prepare
from .sources import Source, load_source

Arrays = dict[str, npt.NDArray[Any]]
QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8", "int4-rows", "int4", "auto")
FORMATS: tuple[Format, ...] = ("tflite", "ort")
_MODE_PRECISION = {"none": "fp32", "fp16": "fp16", "dynamic": "int8-dynamic", "int8": "int8",
                   "int4-rows": "int4-rows", "int4": "int4"}
_AUTO: dict[Format, tuple[str, ...]] = {
    "tflite": ("fp32", "fp16", "int8-dynamic", "int8", "int4-rows", "int4"),
    "ort": ("fp32", "int8-dynamic", "int8", "int4-rows", "int4"),
}
MIXED_STEPS = 4  # per format, at most this many per-layer 4-bit trials under auto


@dataclass
class ConvertOptions:
    """Everything ``edgerec convert`` can be told; defaults are the CLI's."""

    name: str | None = None
    version: int = 1
    formats: Sequence[str] | None = None  # None: tflite,ort for TensorFlow sources, ort otherwise
    quantize: str = "dynamic"
    calibration: Path | None = None
    calibration_rows: int = 256
    calibration_method: str = "minmax"
    per_channel: bool = False
    prune: float = 0.0
    min_id_count: int = 0
    id_counts: Path | None = None
    batch_buckets: Sequence[int] = ()
    eval: Path | None = None
    label: str = "label"
    eval_rows: int | None = 20000
    max_auc_drop: float = 0.002
    max_log_loss_increase: float | None = 0.01  # None: no log loss gate
    max_ece_increase: float | None = 0.01  # None: no calibration gate
    slice_by: str | None = None  # an --eval column: its worst slice must stay within budget too
    max_slice_auc_drop: float | None = None  # None: max_auc_drop
    features: Path | None = None
    score_output: str | None = None
    example_inputs: Path | None = None  # PyTorch files: example inputs (.npz)
    npu: str | None = None  # "qualcomm:SM8650,mediatek:MT6989": LiteRT artifacts compiled for those NPUs
    item_field: str | None = None  # None: the item-role input that is an id
    user_field: str | None = None  # None: the user-role input that is an id
    progress: bool = False


@dataclass
class ConvertResult:
    """What was written and the measurements behind it."""

    path: Path
    manifest: Manifest
    source: dict[str, Any]
    variants: list[VariantResult]
    kept: list[Built] = field(default_factory=list)


ProgressFactory = Callable[[], AbstractContextManager[Any]]


def convert(
    source: Any,
    out: str | os.PathLike[str],
    signing_key: Ed25519PrivateKey,
    options: ConvertOptions | None = None,
    *,
    example_inputs: Sequence[Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> ConvertResult:
    """Convert ``source`` (path, ``keras.Model`` or ``torch.nn.Module``) into a signed package at ``out``."""
    opts = options or ConvertOptions()
    # TensorFlow and LiteRT log from C++ all along (quiet only in a native_logs.quiet() process).
    with silenced(), _progress(opts) as progress:
        steps = Steps(progress)
        return _convert(source, out, signing_key, opts, steps, example_inputs, input_names, output_names)


def _convert(
    source: Any, out: str | os.PathLike[str], signing_key: Ed25519PrivateKey, opts: ConvertOptions, steps: Steps,
    example_inputs: Sequence[Any] | None, input_names: Sequence[str] | None, output_names: Sequence[str] | None,
) -> ConvertResult:
    src = load_source(source, example_inputs, input_names, output_names, opts.example_inputs)
    formats = _formats(src, opts)
    plan = _plan(formats, opts)
    if src.kind == "torch" and "tflite" in plan:
        plan = torch_litert.restrict_plan(plan, opts.quantize, opts.prune)
    npu_targets = npu.parse_targets(opts.npu)
    npu.check_plan(npu_targets, formats, opts.batch_buckets)
    steps.step("reading data and preparing the model",
               total=sum(map(len, plan.values())) + len(plan) * len(opts.batch_buckets))
    overrides = read_feature_file(opts.features)
    eval_raw, labels = _read_eval(src, opts)
    calib_raw = _read_calibration(src, opts, plan)
    prepared = prepare(src, opts.prune, opts.min_id_count, opts.id_counts)
    score_output = _score_output(prepared.outputs, opts.score_output)
    signature = ModelSignature(
        tuple(TensorSpec(s.name, s.dtype, (None, *s.shape[1:])) for s in prepared.inputs),
        tuple(TensorSpec(s.name, s.dtype, (None, *s.shape[1:])) for s in prepared.outputs),
    )
    features = feature_specs(prepared.inputs, prepared.vocabularies, prepared.id_ranges, overrides,
                             prepared.hash_bins)
    id_fields([f for f, _ in features], opts.item_field, opts.user_field)  # a bad --item-field fails now
    encoder = InputEncoder(signature, {f.input: f for f, _ in features}, prepared.vocabularies)
    eval_enc = _encode(encoder, eval_raw, "--eval")
    calib_enc = _encode(encoder, calib_raw, "--calibration")

    with tempfile.TemporaryDirectory(prefix="edgerec-convert-") as tmp:
        work = Work(src, prepared, Path(tmp), opts, steps)
        reference = score_column(src.predict(eval_raw), score_output) if eval_raw is not None else None
        work.slices = _slices(src, opts, labels, reference)
        source_row = _source_row(src, labels, reference, work.slices)
        results, built = work.candidates(plan, calib_enc, eval_enc, labels, reference, score_output)
        if opts.quantize == "auto" and labels is not None:
            work.mixed(results, built, source_row, calib_enc, eval_enc, labels, reference, score_output)
        kept = _select(results, built, opts, source_row, labels is not None, work.slices)
        buckets = work.buckets(kept, calib_enc, eval_enc, score_output)
        buckets += npu.compile_artifacts(npu_targets, buckets)
        parts = PackageParts(
            name=opts.name or _default_name(src), version=opts.version, signature=signature,
            score_output=score_output, features=features, artifacts=[*kept, *buckets],
            source=src, prepared=prepared, warmup=_warmup(eval_raw, calib_raw),
            scores=reference, results=results, source_row=source_row, options=opts,
        )
        path = assemble(parts).write(out, signing_key)
    # Read back through the verifying reader: what devices will see.
    manifest = Package.open(path, signing_key.public_key()).manifest
    return ConvertResult(Path(path), manifest, source_row, results, kept)


class Steps:
    """Progress on stderr (``ConvertOptions.progress``): the step under way and the variants built of planned."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self._task = None if progress is None else progress.add_task("loading the source model", total=None)

    def step(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            self.progress.update(self._task, description=description)
            if total is not None:
                self.progress.update(self._task, total=total)

    def done(self) -> None:
        """One more variant built (and measured); its calibration and evaluation bars go."""
        if self._task is not None:
            self.progress.advance(self._task)
            for task in self.progress.tasks:
                if task.id != self._task and task.finished:
                    self.progress.remove_task(task.id)


class Work:
    """Builds and measures variants inside one temporary folder."""

    def __init__(self, src: Source, prepared: Prepared, tmp: Path, opts: ConvertOptions, steps: Steps) -> None:
        self.opts = opts
        self.steps = steps
        self.progress = steps.progress
        self.tf: TfBuilder | None = None
        self._ort: OrtBuilder | None = None
        self._lite: torch_litert.TorchLiteBuilder | None = None
        self._prepared = prepared
        self._src = src
        self.slices: Slices | None = None
        if src.is_tensorflow:
            self.tf = TfBuilder(tmp, prepared.inputs, prepared.keras_model, prepared.saved_model, prepared.kernels)

    def ort(self) -> OrtBuilder:
        if self._ort is None:
            data = self._prepared.onnx_bytes if self.tf is None else self.tf.onnx()
            assert data is not None
            options = StaticOptions(self.opts.calibration_method, self.opts.per_channel)
            self._ort = OrtBuilder(data, options)
        return self._ort

    def build(
        self, fmt: Format, precision: str, calib: Arrays | None, batch: int | None = None,
        layers: frozenset[str] | None = None,
    ) -> Built:
        if fmt == "tflite" and self._src.kind == "torch":
            if self._lite is None:
                self._lite = torch_litert.TorchLiteBuilder(self._src, self._prepared.inputs, self._prepared.outputs)
            return self._lite.tflite(precision, calib, batch)
        if fmt == "tflite":
            assert self.tf is not None
            task = self._task(f"calibrating tflite {precision}", calib if precision == "int8" else None, batch)
            return self.tf.tflite(precision, calib, batch, task, layers)
        samples = ort_samples(calib) if calib is not None and precision == "int8" else None
        return self.ort().build(precision, samples, batch, layers)

    def _task(self, label: str, calib: Arrays | None, batch: int | None) -> Callable[[int], None] | None:
        if self.progress is None or calib is None:
            return None
        total = tables.rows(calib)
        task = self.progress.add_task(label, total=total)
        return lambda n: self.progress.advance(task, n)

    def candidates(
        self, plan: dict[Format, tuple[str, ...]], calib: Arrays | None, eval_enc: Arrays | None,
        labels: npt.NDArray[np.float64] | None, reference: npt.NDArray[np.float64] | None, output: str,
    ) -> tuple[list[VariantResult], dict[str, Built]]:
        results, built = [], {}
        for fmt, precisions in plan.items():
            for precision in precisions:
                self.steps.step(f"converting {fmt} {precision}")
                b = self.build(fmt, precision, calib)
                r = VariantResult(f"{fmt} {precision}", fmt, precision, len(b.data), compressed_size(b.data))
                r.nodes = b.extra.get("nodes")
                if eval_enc is not None:
                    advance = self._task(f"evaluating {fmt} {precision}", eval_enc, None)
                    measure(r, b.data, eval_enc, output, labels, reference, advance, self.slices)
                results.append(r)
                built[b.key] = b
                self.steps.done()
        return results, built

    def buckets(self, kept: list[Built], calib: Arrays | None, eval_enc: Arrays | None, output: str) -> list[Built]:
        """Fixed-batch copies of every kept variant, checked against the dynamic one."""
        out = []
        for base in kept:
            for n in self.opts.batch_buckets:
                self.steps.step(f"converting {base.format} {base.precision}, batch {n}")
                layers = frozenset(base.extra["layers_4bit"]) if "layers_4bit" in base.extra else None
                b = self.build(base.format, base.precision, calib, n, layers)
                b.extra["accelerators"] = ["gpu", "npu", "cpu"]
                if eval_enc is not None:
                    b.extra["max_abs_diff_vs_dynamic"] = _bucket_diff(base, b, eval_enc, output, n)
                out.append(b)
                self.steps.done()
        return out


    def mixed(
        self, results: list[VariantResult], built: dict[str, Built], source_row: dict[str, Any],
        calib: Arrays | None, eval_enc: Arrays | None, labels: npt.NDArray[np.float64],
        reference: npt.NDArray[np.float64] | None, output: str,
    ) -> None:
        """Per-layer 4-bit choices where all-4-bit fails the budget: starting from the tables at 4 bits
        (when ``int4-rows`` passed) or from none, add one weight at a time, largest first, keeping it at
        4 bits only while the variant stays within budget. The last passing set becomes ``mixed``."""
        budget = _budget(self.opts)
        for fmt in dict.fromkeys(r.format for r in results):
            mine = {r.precision: r for r in results if r.format == fmt}
            if "int4" not in mine or "int4-rows" not in mine or eval_enc is None:
                continue
            for r in mine.values():
                judge(r, source_row, budget, self.slices)
            if mine["int4"].status != "rejected":
                continue  # everything at 4 bits passes: nothing to choose
            found = self.tf.four_bit_layers() if fmt == "tflite" and self.tf is not None else (
                self.ort().four_bit_layers() if fmt == "ort" else [])
            rows_ok = mine["int4-rows"].status != "rejected"
            chosen = frozenset(lay.name for lay in found if lay.kind == "rows") if rows_ok else frozenset()
            best: tuple[VariantResult, Built] | None = None
            tried = 0
            for lay in [lay for lay in found if lay.name not in chosen][:MIXED_STEPS]:
                trial = chosen | {lay.name}
                b = self.build(fmt, "mixed", calib, layers=trial)
                r = VariantResult(f"{fmt} mixed", fmt, "mixed", len(b.data), compressed_size(b.data))
                r.nodes = b.extra.get("nodes")
                measure(r, b.data, eval_enc, output, labels, reference, None, self.slices)
                judge(r, source_row, budget, self.slices)
                tried += 1
                if r.status != "rejected":
                    chosen, best = trial, (r, b)
            if best is not None:
                r, b = best
                r.note = f"{len(chosen)} of {len(found)} weights at 4 bits ({tried} tried)"
                results.append(r)
                built[b.key] = b


def _bucket_diff(base: Built, bucket: Built, encoded: Arrays, output: str, n: int) -> float:
    from .evaluate import open_session

    idx = np.arange(n) % tables.rows(encoded)
    rows = {k: v[idx] for k, v in encoded.items()}
    a_s = open_session(base.data, base.format, base.precision)
    b_s = open_session(bucket.data, bucket.format, bucket.precision, n)
    try:
        a = score_column(a_s.run(rows), output)
        b = score_column(b_s.run(rows), output)
    finally:
        a_s.close()
        b_s.close()
    return round(float(np.max(np.abs(a - b))), 6)


def _formats(src: Source, opts: ConvertOptions) -> tuple[Format, ...]:
    litert = src.is_tensorflow or (src.kind == "torch" and torch_litert.available())
    asked = tuple(opts.formats or (("tflite", "ort") if litert else ("ort",)))
    formats = tuple(f for f in (pick(a, FORMATS) for a in asked) if f is not None)
    if not formats or len(formats) != len(asked):
        raise ConversionError(f"--format {','.join(asked)}: use tflite and/or ort")
    if "tflite" in formats and src.kind == "torch" and not litert:
        raise ConversionError(
            "--format tflite: LiteRT artifacts from PyTorch need litert-torch: pip install 'edgerec[torch]' "
            "(a CPU build of torch first), or use --format ort"
        )
    if "tflite" in formats and not litert:
        raise ConversionError(
            f"--format tflite: {src.label} is {src.kind}; LiteRT artifacts come from Keras, SavedModel or PyTorch "
            "sources: convert the model it was exported from, or use --format ort"
        )
    return formats


def _plan(formats: tuple[Format, ...], opts: ConvertOptions) -> dict[Format, tuple[str, ...]]:
    mode = opts.quantize
    if mode not in QUANTIZE_MODES:
        raise ConversionError(f"--quantize {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    if mode == "int8" and opts.calibration is None:
        raise ConversionError("--quantize int8 needs --calibration FILE (representative rows)")
    if mode == "auto":
        if opts.eval is None:
            raise ConversionError("--quantize auto needs --eval FILE to measure each variant")
        return {
            f: tuple(p for p in _AUTO[f] if p != "int8" or opts.calibration is not None) for f in formats
        }
    precision = _MODE_PRECISION[mode]
    if precision == "fp16" and "ort" in formats:
        raise ConversionError("--quantize fp16: ORT artifacts have no fp16 variant here; use --format tflite")
    for n in opts.batch_buckets:
        if n < 1:
            raise ConversionError(f"--batch-buckets: {n} is not a batch size")
    return {f: (precision,) for f in formats}


def _read_eval(src: Source, opts: ConvertOptions) -> tuple[Arrays | None, npt.NDArray[np.float64] | None]:
    if opts.eval is None:
        return None, None
    table = tables.read_table(opts.eval)
    if opts.eval_rows:
        table = tables.take(table, opts.eval_rows)
    labels = tables.label_column(table, opts.label, str(opts.eval))
    return tables.select_inputs(table, src.inputs, str(opts.eval)), labels


def _read_calibration(src: Source, opts: ConvertOptions, plan: dict[Format, tuple[str, ...]]) -> Arrays | None:
    if opts.calibration is None:
        return None
    table = tables.take(tables.read_table(opts.calibration), opts.calibration_rows)
    return tables.select_inputs(table, src.inputs, str(opts.calibration))


def _encode(encoder: InputEncoder, raw: Arrays | None, where: str) -> Arrays | None:
    if raw is None:
        return None
    try:
        return encoder.encode(raw)
    except InvalidInputError as exc:
        raise DataError(f"{where}: {exc}") from exc


def _score_output(outputs: tuple[TensorSpec, ...], wanted: str | None) -> str:
    names = [o.name for o in outputs]
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise ConversionError(f"--score-output {wanted!r}: the model outputs {', '.join(names)}")
    return wanted


def _source_row(
    src: Source, labels: npt.NDArray[np.float64] | None, reference: npt.NDArray[np.float64] | None,
    slices: Slices | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": f"source ({src.kind})"}
    if labels is not None and reference is not None:
        row.update(auc=round(auc(labels, reference), 6), log_loss=round(log_loss(labels, reference), 6),
                   ece=round(expected_calibration_error(labels, reference), 6), rows=len(labels))
    if slices is not None:
        row["slices"] = slices.to_dict()
    return row


def _budget(opts: ConvertOptions) -> Budget:
    return Budget(opts.max_auc_drop, opts.max_log_loss_increase, opts.max_ece_increase, opts.max_slice_auc_drop)


def _slices(
    src: Source, opts: ConvertOptions, labels: npt.NDArray[np.float64] | None,
    reference: npt.NDArray[np.float64] | None,
) -> Slices | None:
    """The ``--slice-by`` column of the --eval file, grouped (see :mod:`.guard`)."""
    if opts.slice_by is None:
        return None
    if opts.eval is None or labels is None or reference is None:
        raise ConversionError("--slice-by needs --eval FILE (the column is read from it)")
    table = tables.read_table(opts.eval)
    if opts.slice_by not in table:
        have = ", ".join(sorted(table)[:12])
        raise DataError(f"--slice-by {opts.slice_by!r}: {opts.eval} has no such column (it has {have})")
    values = table[opts.slice_by]
    if opts.eval_rows:
        values = values[: opts.eval_rows]
    return make_slices(values, labels, reference, opts.slice_by)


def _select(
    results: list[VariantResult], built: dict[str, Built], opts: ConvertOptions,
    source_row: dict[str, Any], evaluated: bool, slices: Slices | None = None,
) -> list[Built]:
    """Mark each variant kept, dropped or rejected; the kept artifacts, one per format."""
    budget = _budget(opts)
    for r in results:
        if evaluated:
            judge(r, source_row, budget, slices)
    kept = []
    for fmt in dict.fromkeys(r.format for r in results):
        mine = [r for r in results if r.format == fmt]
        ok = [r for r in mine if r.status != "rejected"]
        if not ok:
            best = min(mine, key=lambda r: r.auc_drop or 0.0)
            raise AccuracyBudgetError(f"{fmt}: no variant within the accuracy budget (best: {best.precision}: "
                                      f"{failing(best)})")
        best = min(ok, key=lambda r: r.size)
        for r in ok:
            if r is not best:
                r.status, r.note = "dropped", f"larger than {best.precision}"
        kept.append(built[f"{fmt}:{best.precision}"])
    return kept


def _warmup(eval_raw: Arrays | None, calib_raw: Arrays | None) -> Arrays | None:
    raw = eval_raw if eval_raw is not None else calib_raw
    return None if raw is None else tables.take(raw, 8)


def _default_name(src: Source) -> str:
    stem = Path(src.label).stem.lower()
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-._")
    return cleaned[:64] or "model"


def _progress(opts: ConvertOptions) -> AbstractContextManager[Any]:
    if not opts.progress:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgerec.sdk.cli.output import err_console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)
