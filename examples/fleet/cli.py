"""``edgerec demo``: the whole loop on a small CTR model, end to end.

Builds a CTR model (Keras for LiteRT, ONNX and ORT format for ONNX Runtime),
packs and signs it, encrypts it for one node, verifies and loads it on each
backend and accelerator, ranks candidates and reports what ran where and how
fast. It uses only what an edgerec install has; TensorFlow is needed for the
LiteRT artifacts and is skipped with a note when absent.
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.markup import escape
from rich.table import Table

from edgerec.sdk import testing as demo
from edgerec.sdk.cli.output import busy, console, print_json, progress_wanted
from edgerec.sdk.encryption import encrypt_package
from edgerec.sdk.files import write_atomic
from edgerec.sdk.keys import (
    generate_keypair,
    load_recipient_key,
    load_recipient_public_key,
    load_signing_key,
    load_verify_key,
)
from edgerec.sdk.model import Accelerator, EdgeModel
from edgerec.sdk.package import Package
from edgerec.sdk.timing import time_ms

from .fleet import run_fleet


def _time_ms(fn: Any, repeats: int) -> float:
    return statistics.median(time_ms(fn, repeats, warmup=1))


def build_demo_package(work: Path, with_tflite: bool) -> Path:
    """Keys and a signed package in ``work``; returns the package path."""
    w = demo.ctr_weights()
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    b = demo.ctr_builder(w, tflite_dir=scratch if with_tflite else None, buckets=(16, 128) if with_tflite else ())
    ort_bytes, ops = demo.ort_format(demo.onnx_ctr(w), scratch)
    b.add_artifact("model.ort", ort_bytes, "ort", extra={"required_operators": "required_operators.config"})
    b.add_file("required_operators.config", ops, kind="ort_operators")
    b.eval_report = {"note": "synthetic demo model; outputs checked against a NumPy reference"}
    path: Path = b.write(work / "ctr-1.edgepkg", load_signing_key(work / "publisher.key"))
    return path


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep keys, packages, logs and state here (default: a temporary folder).")
@click.option("--device", "device_only", is_flag=True,
              help="Only the device part: package, sign, encrypt, load and rank in this process.")
@click.option("--repeats", type=click.IntRange(min=5), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo_cmd(workdir: Path | None, device_only: bool, repeats: int, as_json: bool) -> None:
    """The whole loop on this machine: convert, publish, install on a node, serve, rank.

    Needs the converter, edge and sync extras (pip install 'edgerec[all]'); with
    the SDK alone, or with --device, it runs the device part only.
    """
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # The story tells each fallback to the CPU itself; edgerec --verbose logs them too.
        logging.getLogger("edgerec.sdk").setLevel(logging.ERROR)
    progress = progress_wanted(as_json)
    with tempfile.TemporaryDirectory(prefix="edgerec-demo-") as tmp:
        work = (workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        missing = [m for m in ("tensorflow", "flask", "sqlalchemy", "tuf") if importlib.util.find_spec(m) is None]

        def say(text: str) -> None:
            if not as_json:
                console.print(text)

        results: dict[str, Any] = {}
        if not device_only and not missing:
            say("[bold]The fleet loop[/] (each step is an edgerec command or HTTP call on loopback)")
            results["fleet"] = run_fleet(work / "fleet", say, progress)
            say("")
        elif not device_only:
            say(escape(f"(the fleet loop needs {', '.join(missing)}: pip install 'edgerec[all]'; "
                       "running the device part)"))
        say("[bold]On a device[/] (the SDK alone, in this process)")
        results["device"] = run_demo(work / "device", repeats, quiet=as_json, progress=progress)
    if as_json:
        print_json(results)


def run_demo(work: Path, repeats: int, quiet: bool = False, progress: bool = False) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    def say(text: str) -> None:
        if not quiet:
            console.print(text)

    pub = generate_keypair(work, "publisher", "ed25519", overwrite=True)
    node = generate_keypair(work, "node-1", "x25519", overwrite=True)
    say(f"1. keys: publisher {pub.key_id[:12]} (ed25519), node-1 {node.key_id[:12]} (x25519)")
    with_tflite = importlib.util.find_spec("tensorflow") is not None
    with busy("building the demo package (Keras to LiteRT, ONNX to ORT format)", progress):
        path = build_demo_package(work, with_tflite)
    trusted = [load_verify_key(pub.public_path)]
    plain = Package.open(path, trusted)
    arts = ", ".join(f"{a.path} ({a.format}, batch {a.batch})" for a in plain.manifest.artifacts)
    say(f"2. package {escape(path.name)}: signed, {len(plain.raw):,} bytes: {escape(arts)}")
    if not with_tflite:
        say(escape("   (TensorFlow is not installed: LiteRT artifacts skipped; pip install 'edgerec[converter]')"))
    enc = encrypt_package(plain, {"node-1": load_recipient_public_key(node.public_path)})
    enc_path = write_atomic(work / "ctr-1.enc.edgepkg", enc.data)
    say(f"3. encrypted for node-1: {escape(enc_path.name)}, AES-256-GCM artifacts, HPKE-sealed keys")
    node_key = load_recipient_key(node.private_path)
    rows: list[dict[str, Any]] = []
    inputs, ref = demo.sample_inputs(1, seed=3)
    user, context = {"user": "u7"}, {"ctx": [0.3, 0.1, 0.8, 0.5]}
    candidates = list(range(demo.N_ITEMS))[:100]
    for backend in ("litert", "onnxruntime"):
        accels: tuple[Accelerator, ...] = ("auto", "gpu")
        for accel in accels:
            try:
                model = EdgeModel.load(Package.open(enc_path, trusted), recipient_key=node_key,
                                       recipient_id="node-1", backend=backend, accelerator=accel)
            except Exception as exc:  # shown in the table, the demo goes on
                rows.append({"backend": backend, "requested": accel, "error": str(exc)})
                continue
            with model:
                err = float(np.abs(model.predict(inputs)["score"].ravel() - ref).max())
                top = model.rank(user, candidates, context, top_k=3)
                rows.append({
                    "backend": backend, "format": model.info.format, "requested": accel,
                    "accelerator": model.info.accelerator, "fully_delegated": model.info.fully_delegated,
                    "fallback": model.info.fallback_reason,
                    "predict_1_ms": _time_ms(lambda m=model: m.predict(inputs), repeats),
                    "rank_ms": _time_ms(lambda m=model: m.rank(user, candidates, context), repeats),
                    "max_abs_err": err, "top3": [(t.item, round(t.score, 4)) for t in top],
                })
    if not quiet:
        t = Table("backend", "asked", "ran on", "1 row", f"rank {len(candidates)}", "max err", "top 3",
                  title="4. verified, decrypted in memory, loaded, ranked")
        for r in rows:
            if "error" in r:
                t.add_row(r["backend"], r["requested"], "[red]failed[/]", "", "", "", escape(r["error"][:40]))
                continue
            where = r["accelerator"] + ("" if r["fully_delegated"] else " (partial)")
            t.add_row(f"{r['backend']} ({r['format']})", r["requested"], where, f"{r['predict_1_ms']:.3f} ms",
                      f"{r['rank_ms']:.3f} ms", f"{r['max_abs_err']:.0e}", " ".join(str(i) for i, _ in r["top3"]))
        console.print(t)
        for r in rows:
            if r.get("fallback") and r["requested"] != "auto":
                console.print(f"   {r['backend']}: asked for {r['requested']}, runs on the CPU: "
                              f"{escape(r['fallback'][:120])}")
    return {"package": str(path), "encrypted_package": str(enc_path), "results": rows}
