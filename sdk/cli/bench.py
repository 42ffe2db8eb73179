"""``edgerec bench``: latency per backend, accelerator and batch size."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from ..choices import parse_choice
from ..errors import EdgeRecError
from ..keys import load_recipient_key
from ..manifest import ACCELERATORS, Device
from ..model import EdgeModel
from ..package import Package
from ..runtime import backend_for_format
from ..timing import time_ms
from ._options import model_options, open_package
from .output import console, print_json, text_row


def synthetic_inputs(model: EdgeModel, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid model-level inputs: ids inside their vocabularies or ranges, small floats."""
    rng = np.random.default_rng(seed)
    feats = {f.input: f for f in model.manifest.features}
    vocabs = model.encoder.vocabularies
    out: dict[str, np.ndarray] = {}
    for spec in model.manifest.signature.inputs:
        shape = (rows, *[d or 1 for d in spec.shape[1:]])
        dt = np.dtype(spec.dtype)
        f = feats.get(spec.name)
        if spec.name in vocabs:
            keys = np.asarray(vocabs[spec.name].keys)
            out[spec.name] = keys[rng.integers(0, len(keys), shape)]
        elif dt.kind in "iu":
            low, high = f.id_range if f and f.id_range else (0, 1)
            out[spec.name] = rng.integers(low, high + 1, shape).astype(dt)
        else:
            out[spec.name] = rng.random(shape).astype(dt)
    return out


def measure(model: EdgeModel, rows: int, repeats: int) -> dict[str, float]:
    encoded = model.encode(synthetic_inputs(model, rows))
    times = sorted(time_ms(lambda: model.run(encoded), repeats))
    return {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))]}


def run_bench(
    package: Package, accelerators: list[Device], batches: list[int], repeats: int, threads: int | None,
    recipient: Any = None, recipient_id: str | None = None,
) -> list[dict[str, Any]]:
    rows = []
    formats = {(a.format, a.precision) for a in package.manifest.artifacts}
    for fmt, precision in sorted(formats):
        engine = backend_for_format(fmt)
        if not engine.available():
            continue
        for acc in accelerators:
            with EdgeModel.load(package, recipient_key=recipient, recipient_id=recipient_id, accelerator=acc,
                                backend=engine.name, precision=precision, threads=threads) as m:
                for b in batches:
                    r = measure(m, b, repeats)
                    rows.append({"backend": engine.name, "format": fmt, "precision": precision,
                                 "requested": acc, "accelerator": m.info.accelerator,
                                 "fully_delegated": m.info.fully_delegated, "batch": b,
                                 **r, "rows_per_s": b / (r["p50_ms"] / 1e3)})
    return rows


@click.command()
@click.argument("pkg", type=click.Path(dir_okay=False, path_type=Path))
@model_options
@click.option("--accelerators", default="cpu", show_default=True, help="Comma list of cpu,gpu,npu.")
@click.option("--batch-sizes", default="1,16,64,256", show_default=True)
@click.option("--repeats", type=click.IntRange(min=5), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench(pkg: Path, trusted_keys: tuple[Path, ...], recipient_key: Path | None, recipient_id: str | None,
          backend: str, threads: int | None, accelerators: str, batch_sizes: str, repeats: int,
          as_json: bool) -> None:
    """Measure latency of every artifact kind on each accelerator and batch size."""
    try:
        batches = [int(b) for b in batch_sizes.split(",")]
    except ValueError as exc:
        raise EdgeRecError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,16,64") from exc
    accs = [parse_choice(a.strip(), ACCELERATORS, "--accelerators") for a in accelerators.split(",") if a.strip()]
    if not accs or any(b < 1 for b in batches):
        raise EdgeRecError(f"--accelerators/--batch-sizes: bad value {accelerators if not accs else batch_sizes!r}")
    rkey = load_recipient_key(recipient_key) if recipient_key else None
    rows = run_bench(open_package(pkg, trusted_keys), accs, batches, repeats, threads, rkey, recipient_id)
    if backend != "auto":
        rows = [r for r in rows if r["backend"] == backend]
    if as_json:
        print_json(rows)
        return
    t = Table("backend", "format", "precision", "requested", "ran on", "batch", "p50 ms", "p99 ms", "rows/s")
    for r in rows:
        t.add_row(*text_row(r["backend"], r["format"], r["precision"], r["requested"], r["accelerator"], r["batch"],
                            f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['rows_per_s']:,.0f}"))
    console.print(t)
