"""``edgerec convert``: a model in, a signed, evaluated package out."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgerec.sdk.cli.output import console, print_json, progress_wanted
from edgerec.sdk.keys import load_signing_key

from .errors import ConversionError
from .evaluate import VariantResult
from .ort import CALIBRATION_METHODS
from .pipeline import QUANTIZE_MODES, ConvertOptions, ConvertResult
from .pipeline import convert as run_convert

_File = click.Path(dir_okay=False, path_type=Path)


def _ints(value: str | None, what: str) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise ConversionError(f"{what} {value!r}: expected integers like 1,16,64") from exc


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=_File, required=True, help="The package to write (.edgepkg).")
@click.option("--sign-key", type=_File, required=True, envvar="EDGEREC_SIGN_KEY",
              help="Ed25519 publisher private key. Env: EDGEREC_SIGN_KEY.")
@click.option("--name", help="Package name (default: from the source file name).")
@click.option("--version", "version", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--format", "formats", help="tflite,ort (default: both for Keras/SavedModel, ort for ONNX).")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default="dynamic", show_default=True)
@click.option("--calibration", type=_File, help="Representative rows (.npz/.parquet/.csv) for int8.")
@click.option("--calibration-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default="minmax",
              show_default=True, help="ORT static int8 calibration.")
@click.option("--per-channel", is_flag=True, help="ORT static int8: per-channel weight scales.")
@click.option("--prune", type=click.FloatRange(0.0, 0.99), default=0.0, help="Dense weight sparsity.")
@click.option("--min-id-count", type=click.IntRange(min=0), default=0,
              help="Map ids seen fewer times to the OOV row and drop their embedding rows.")
@click.option("--id-counts", type=_File, help="Id counts: JSON {input: {id: count}} or a file of raw ids.")
@click.option("--batch-buckets", help="Fixed batch sizes for GPU/NPU artifacts, e.g. 1,16,64,256.")
@click.option("--eval", "eval_path", type=_File, help="Held-out rows with a label column.")
@click.option("--label", default="label", show_default=True)
@click.option("--eval-rows", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--max-auc-drop", type=click.FloatRange(min=0.0), default=0.002, show_default=True)
@click.option("--max-log-loss-increase", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
              help="Log loss a variant may add over the source's (inf: no check).")
@click.option("--max-ece-increase", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
              help="Expected calibration error (10 bins) a variant may add over the source's (inf: no check).")
@click.option("--slice-by", metavar="COLUMN",
              help="An --eval column (e.g. a user or item segment): its worst slice must stay within budget too.")
@click.option("--max-slice-auc-drop", type=click.FloatRange(min=0.0),
              help="AUC a --slice-by slice may lose (default: --max-auc-drop).")
@click.option("--features", "features_path", type=_File,
              help='Feature spec JSON {input: {"role", "field", "default"}}; names decide the rest.')
@click.option("--score-output", help="The output that holds the score (default: the first).")
@click.option("--example-inputs", type=_File,
              help="PyTorch .pt/.pt2: example inputs (.npz, one array per forward argument).")
@click.option("--npu", "npu_targets", metavar="VENDOR:SOC,...",
              help="Also compile the fixed-batch LiteRT artifacts for these NPUs, e.g. qualcomm:SM8650,mediatek:MT6989 "
                   "(needs --batch-buckets and the [npu] extra).")
@click.option("--item-field", help="The item feature that names a candidate (default: the item input that is an id).")
@click.option("--user-field", help="The user feature that takes the user id (default: the user input that is an id).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(
    source: Path, out: Path, sign_key: Path, name: str | None, version: int, formats: str | None,
    quantize: str, calibration: Path | None, calibration_rows: int, calibration_method: str,
    per_channel: bool, prune: float, min_id_count: int, id_counts: Path | None,
    batch_buckets: str | None, eval_path: Path | None, label: str, eval_rows: int,
    max_auc_drop: float, features_path: Path | None, score_output: str | None, as_json: bool,
    max_log_loss_increase: float = 0.01, max_ece_increase: float = 0.01, slice_by: str | None = None,
    max_slice_auc_drop: float | None = None,
    item_field: str | None = None, user_field: str | None = None, example_inputs: Path | None = None,
    npu_targets: str | None = None,
) -> None:
    """Convert a Keras (.keras), SavedModel, ONNX or PyTorch (TorchScript .pt, torch.export .pt2) model
    into a signed package."""
    key = load_signing_key(sign_key)
    opts = ConvertOptions(
        name=name, version=version,
        formats=[f.strip() for f in formats.split(",") if f.strip()] if formats else None,
        quantize=quantize, calibration=calibration, calibration_rows=calibration_rows,
        calibration_method=calibration_method, per_channel=per_channel, prune=prune,
        min_id_count=min_id_count, id_counts=id_counts,
        batch_buckets=_ints(batch_buckets, "--batch-buckets"), eval=eval_path, label=label,
        eval_rows=eval_rows, max_auc_drop=max_auc_drop, features=features_path,
        max_log_loss_increase=max_log_loss_increase, max_ece_increase=max_ece_increase, slice_by=slice_by,
        max_slice_auc_drop=max_slice_auc_drop,
        score_output=score_output, item_field=item_field, user_field=user_field, example_inputs=example_inputs,
        npu=npu_targets,
        progress=progress_wanted(as_json),
    )
    result = run_convert(source, out, key, opts)
    if as_json:
        print_json({"package": str(result.path), **(result.manifest.eval_report or {})})
        return
    console.print(report_table(result))
    arts = ", ".join(f"{a.path} ({a.size:,} B)" for a in result.manifest.artifacts)
    console.print(f"wrote {result.path}: {result.manifest.name} v{result.manifest.version}: {arts}", markup=False)


def report_table(result: ConvertResult) -> Table:
    """Source and every variant: accuracy, size, latency, and what happened to it."""
    src = result.source
    t = Table("variant", "AUC", "AUC drop", "log loss", "ECE", "max |diff|", "size", "zipped", "latency ms",
              "status", title="conversion report")
    t.add_row(escape(src["name"]), _f(src.get("auc")), "", _f(src.get("log_loss")), _f(src.get("ece")), "", "", "", "",
              "reference")
    for r in result.variants:
        t.add_row(escape(r.name), _f(r.auc), _f(r.auc_drop), _f(r.log_loss), _f(r.ece), _f(r.max_abs_diff),
                  f"{r.size:,}", f"{r.compressed_size:,}", _f(r.latency_ms, 3), _status(r))
    return t


def _status(r: VariantResult) -> str:
    color = {"kept": "green", "rejected": "red", "dropped": "yellow"}[r.status]
    return f"[{color}]{r.status}[/]" + (f" ({escape(r.note)})" if r.note else "")


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
