"""LiteRT GPU path of the SDK, end to end, on a machine with a GPU.

Two steps, because the GPU machine has no TensorFlow and no network:

    python bench/sdk_gpu.py build DIR     # here: build and sign the packages into DIR
    python bench/sdk_gpu.py check DIR     # there: load with accelerator="gpu", compare, time

``check`` prints one JSON document: the accelerator each package actually ran
on, whether the graph was fully delegated, the max |GPU - CPU| difference and
median latencies per batch size, GPU and CPU side by side in one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

N_USERS, N_ITEMS, DIM, N_DENSE = 5000, 5000, 32, 16
BUCKETS = (16, 256)


class CheckRow(TypedDict):
    batch: int
    max_abs_diff: float
    gpu_p50_ms: float
    cpu8_p50_ms: float


class CheckDoc(TypedDict):
    """What ``check`` prints (bench/sdk.py --gpu-json reads it)."""

    gpu_info: dict[str, Any]
    cpu_info: dict[str, Any]
    rows: list[CheckRow]


def build_heavy_tflite(scratch: Path, batch: int | None, seed: int = 0) -> bytes:
    """A DLRM-like MLP (embeddings + 3 dense layers of 1024): ~15 MB of fp32 weights."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    u = keras.Input((), batch_size=batch, dtype="int32", name="user_id")
    i = keras.Input((), batch_size=batch, dtype="int32", name="item_id")
    d = keras.Input((N_DENSE,), batch_size=batch, dtype="float32", name="dense")
    x = keras.layers.Concatenate()([
        keras.layers.Embedding(N_USERS, DIM, name="ue")(u),
        keras.layers.Embedding(N_ITEMS, DIM, name="ie")(i), d])
    for n, width in enumerate((1024, 1024, 512)):
        x = keras.layers.Dense(width, activation="relu", name=f"h{n}")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(x)
    model = keras.Model({"user_id": u, "item_id": i, "dense": d}, {"score": out})
    spec = [{"user_id": tf.TensorSpec((batch,), tf.int32, name="user_id"),
             "item_id": tf.TensorSpec((batch,), tf.int32, name="item_id"),
             "dense": tf.TensorSpec((batch, N_DENSE), tf.float32, name="dense")}]
    path = scratch / f"heavy-{batch or 'dyn'}"
    model.export(str(path), verbose=False, input_signature=spec)
    return bytes(tf.lite.TFLiteConverter.from_saved_model(str(path)).convert())


def build(out: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgerec.sdk import FeatureSpec, ModelSignature, PackageBuilder, TensorSpec
    from edgerec.sdk.keys import public_pem

    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    (out / "publisher.pub").write_bytes(public_pem(key.public_key()))
    sig = ModelSignature(
        (TensorSpec("user_id", "int32", (None,)), TensorSpec("item_id", "int32", (None,)),
         TensorSpec("dense", "float32", (None, N_DENSE))),
        (TensorSpec("score", "float32", (None, 1)),))
    b = PackageBuilder("heavy", 1, sig)
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)
    b.add_artifact("model.tflite", build_heavy_tflite(scratch, None), "tflite")
    for n in BUCKETS:
        b.add_artifact(f"model.b{n}.tflite", build_heavy_tflite(scratch, n), "tflite", batch=n,
                       accelerators=("gpu", "npu", "cpu"))
    b.add_feature(FeatureSpec("user_id", "user", "user_id", id_range=(0, N_USERS - 1)))
    b.add_feature(FeatureSpec("item_id", "item", "item_id", id_range=(0, N_ITEMS - 1)))
    b.add_feature(FeatureSpec("dense", "context", "dense", default=0.0))
    b.write(out / "heavy.edgepkg", key)
    import shutil

    shutil.rmtree(scratch)


def _median_ms(fn: Callable[[], object], repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check(folder: Path) -> CheckDoc:
    from edgerec.sdk import EdgeModel, load_verify_key

    trusted = [load_verify_key(folder / "publisher.pub")]
    rng = np.random.default_rng(0)
    gpu = EdgeModel.load(folder / "heavy.edgepkg", trusted, accelerator="gpu", backend="litert")
    cpu = EdgeModel.load(folder / "heavy.edgepkg", trusted, accelerator="cpu", backend="litert", threads=8)
    rows: list[CheckRow] = []
    for n in (1, 16, 200, 256):
        inputs = {"user_id": rng.integers(0, N_USERS, n).astype(np.int32),
                  "item_id": rng.integers(0, N_ITEMS, n).astype(np.int32),
                  "dense": rng.random((n, N_DENSE)).astype(np.float32)}
        g, c = gpu.predict(inputs)["score"], cpu.predict(inputs)["score"]
        rows.append({"batch": n, "max_abs_diff": float(np.abs(g - c).max()),
                     "gpu_p50_ms": _median_ms(functools.partial(gpu.predict, inputs)),
                     "cpu8_p50_ms": _median_ms(functools.partial(cpu.predict, inputs))})
    return {"gpu_info": gpu.info.__dict__, "cpu_info": cpu.info.__dict__, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("verb", choices=("build", "check"))
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    if args.verb == "build":
        build(args.folder)
    else:
        print(json.dumps(check(args.folder), indent=1, default=str))


if __name__ == "__main__":
    main()
