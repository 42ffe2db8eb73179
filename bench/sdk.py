"""SDK runtime latency: LiteRT and ONNX Runtime, per batch size, side by side.

    python bench/sdk.py [--gpu-json FILE]

Measures the demo CTR model and a heavier DLRM-like MLP (bench/sdk_gpu.py) on
this machine's CPU through ``EdgeModel`` (what ``edgerec bench`` runs), and adds
the GPU results of ``bench/sdk_gpu.py check`` when given its JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import header, write_section

from edgerec.sdk import Package
from edgerec.sdk import testing as demo
from edgerec.sdk.cli.bench import run_bench


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | backend | precision | batch | p50 ms | p99 ms | rows/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch']} | {r['p50_ms']:.3f} | "
                   f"{r['p99_ms']:.3f} | {r['rows_per_s']:,.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu-json", type=Path, help="output of `bench/sdk_gpu.py check` on a GPU machine")
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    import sdk_gpu
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = Package.open(demo.ctr_builder(demo.ctr_weights(), tflite_dir=work).build(key), key.public_key())
        for r in run_bench(small, ["cpu"], [1, 16, 100, 256], args.repeats, threads=1):
            rows.append({"model": "demo CTR (1 thread)", **r})
        sdk_gpu.build(work / "heavy")
        from edgerec.sdk import load_verify_key

        heavy = Package.open(work / "heavy" / "heavy.edgepkg", load_verify_key(work / "heavy" / "publisher.pub"))
        for r in run_bench(heavy, ["cpu"], [1, 16, 256], max(20, args.repeats // 5), threads=2):
            rows.append({"model": "DLRM-like MLP 7 MB (2 threads)", **r})
    body = header("SDK runtime (EdgeModel.run, CPU)") + table(rows) + "\n"
    body += ("\nEach row is the median of repeated `EdgeModel.run` calls on already-encoded inputs "
             "(validation and vocabulary lookups excluded), LiteRT through the XNNPACK Interpreter for "
             "dynamic batches, ONNX Runtime's CPU provider.\n")
    if args.gpu_json:
        text = args.gpu_json.read_text()
        g = json.loads(text[text.index("{"):])  # LiteRT prints log lines on stdout first
        info = g["gpu_info"]
        body += (f"\n### LiteRT GPU through EdgeModel (NVIDIA H200, WebGPU/Vulkan)\n\n"
                 f"`EdgeModel.load(..., accelerator=\"gpu\")` ran on **{info['accelerator']}**, fully delegated: "
                 f"{info['fully_delegated']}, fixed-batch buckets {info['batch_buckets']} (padding to the next "
                 "bucket); CPU column: the same package with `accelerator=\"cpu\"`, 8 XNNPACK threads, same run. "
                 "Command there: `python bench/sdk_gpu.py check DIR` after `build DIR` here.\n\n"
                 "| batch | GPU p50 ms | CPU (8 threads) p50 ms | CPU/GPU | max abs diff |\n|---|---|---|---|---|\n")
        for r in g["rows"]:
            body += (f"| {r['batch']} | {r['gpu_p50_ms']:.3f} | {r['cpu8_p50_ms']:.3f} | "
                     f"{r['cpu8_p50_ms'] / r['gpu_p50_ms']:.2f}x | {r['max_abs_diff']:.1e} |\n")
        body += ("\nThe GPU wins from batch ~100 up (1.9x at 256) and loses below (a fixed ~0.85 ms per call): "
                 "route single requests to the CPU, batches to the GPU.\n")
    write_section("sdk", body)
    print(body)


if __name__ == "__main__":
    main()
