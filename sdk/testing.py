"""Small real CTR models for the demo, the tests and the benchmarks, built on the spot.

Public so that the other packages' tests and the examples share one set of
models; TensorFlow and ONNX are imported only by the builders that need them.
No binary is checked in anywhere.

The CTR function has a planted signal: the score depends on the user and item
embeddings and on the context, so results can be checked against a NumPy
reference, not only that something ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .manifest import FeatureSpec, ModelSignature, TensorSpec
from .native_logs import silenced
from .package import PackageBuilder
from .vocab import Vocabulary

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

N_USERS, N_ITEMS, DIM, N_CTX = 50, 80, 8, 4


def ctr_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_emb": rng.normal(0, 0.5, (N_USERS, DIM)).astype(np.float32),
        "item_emb": rng.normal(0, 0.5, (N_ITEMS, DIM)).astype(np.float32),
        "w": rng.normal(0, 0.5, (2 * DIM + N_CTX, 1)).astype(np.float32),
    }


def ctr_reference(w: dict[str, np.ndarray], user_id: Any, item_id: Any, ctx: Any) -> np.ndarray:
    """The CTR function in NumPy: sigmoid([user_emb, item_emb, ctx] @ w)."""
    x = np.concatenate([w["user_emb"][user_id], w["item_emb"][item_id], ctx], axis=1)
    out: np.ndarray = 1.0 / (1.0 + np.exp(-(x @ w["w"])))
    return out


def onnx_ctr(w: dict[str, np.ndarray], batch: int | None = None) -> bytes:
    """ONNX bytes: inputs user_id[B] int64, item_id[B] int64, ctx[B,4] float32 -> score[B,1]."""
    from onnx import TensorProto, helper, numpy_helper

    b = batch if batch is not None else "batch"
    inits = [numpy_helper.from_array(w[k], k) for k in ("user_emb", "item_emb", "w")]
    nodes = [
        helper.make_node("Gather", ["user_emb", "user_id"], ["ue"], axis=0),
        helper.make_node("Gather", ["item_emb", "item_id"], ["ie"], axis=0),
        helper.make_node("Concat", ["ue", "ie", "ctx"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ctr",
        [
            helper.make_tensor_value_info("user_id", TensorProto.INT64, [b]),
            helper.make_tensor_value_info("item_id", TensorProto.INT64, [b]),
            helper.make_tensor_value_info("ctx", TensorProto.FLOAT, [b, N_CTX]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [b, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def ort_format(onnx_bytes: bytes, tmp_path: Path) -> tuple[bytes, bytes]:
    """Convert ONNX bytes to ORT format with onnxruntime's tool; also returns the operator config."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "m.onnx").write_bytes(onnx_bytes)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src), "--output_dir", str(out)],
        check=True,
        capture_output=True,
    )
    return (out / "m.ort").read_bytes(), (out / "required_operators.config").read_bytes()


def keras_ctr_tflite(w: dict[str, np.ndarray], tmp_path: Path, batch: int | None = None) -> bytes:
    """The same CTR function as a Keras model converted to LiteRT (via SavedModel)."""
    with silenced():
        return _keras_ctr_tflite(w, tmp_path, batch)


def _keras_ctr_tflite(w: dict[str, np.ndarray], tmp_path: Path, batch: int | None) -> bytes:
    import tensorflow as tf

    model = _keras_ctr(w, batch, user_lookup=False)
    path = tmp_path / f"sm{batch or 'dyn'}"
    # Keras drops Input(batch_size=...) on export; a fixed signature keeps it.
    spec = [{
        "user_id": tf.TensorSpec((batch,), tf.int32, name="user_id"),
        "item_id": tf.TensorSpec((batch,), tf.int32, name="item_id"),
        "ctx": tf.TensorSpec((batch, N_CTX), tf.float32, name="ctx"),
    }]
    model.export(str(path), verbose=False, input_signature=spec)
    return bytes(tf.lite.TFLiteConverter.from_saved_model(str(path)).convert())


def ctr_signature() -> ModelSignature:
    """The model signature shared by every artifact of the demo CTR model."""
    return ModelSignature(
        inputs=(
            TensorSpec("user_id", "int64", (None,)),
            TensorSpec("item_id", "int64", (None,)),
            TensorSpec("ctx", "float32", (None, N_CTX)),
        ),
        outputs=(TensorSpec("score", "float32", (None, 1)),),
    )


USER_KEYS = tuple(f"u{i}" for i in range(1, N_USERS))


def ctr_builder(
    w: dict[str, np.ndarray],
    name: str = "ctr",
    version: int = 1,
    *,
    onnx: bool = True,
    tflite_dir: Path | None = None,
    buckets: tuple[int, ...] = (),
) -> PackageBuilder:
    """A PackageBuilder for the demo CTR model: user ids "u1".."u49" through a
    vocabulary (row 0 is OOV), item ids 0..79 by range, ``ctx`` as context.

    ``tflite_dir`` (a scratch folder) adds LiteRT artifacts, needing TensorFlow;
    ``buckets`` adds fixed-batch LiteRT artifacts for accelerators.
    """
    b = PackageBuilder(name, version, ctr_signature())
    if tflite_dir is not None:
        scratch = Path(tflite_dir)
        b.add_artifact("model.tflite", keras_ctr_tflite(w, scratch), "tflite")
        for n in buckets:
            b.add_artifact(f"model.b{n}.tflite", keras_ctr_tflite(w, scratch, n), "tflite",
                           batch=n, accelerators=("gpu", "npu", "cpu"))
    if onnx:
        b.add_artifact("model.onnx", onnx_ctr(w), "onnx")
    b.add_feature(FeatureSpec("user_id", "user", "user"), Vocabulary(USER_KEYS, oov_row=0, first_row=1))
    b.add_feature(FeatureSpec("item_id", "item", "item_id", id_range=(0, N_ITEMS - 1)))
    b.add_feature(FeatureSpec("ctx", "context", "ctx", default=0.0))
    b.set_item_table({"item_id": np.arange(N_ITEMS, dtype=np.int64)})
    rng = np.random.default_rng(1)
    b.set_warmup({
        "user_id": np.asarray(USER_KEYS[:8]),
        "item_id": np.arange(8, dtype=np.int64),
        "ctx": rng.random((8, N_CTX)).astype(np.float32),
    })
    users = rng.integers(0, N_USERS, 512)
    items = rng.integers(0, N_ITEMS, 512)
    b.set_score_distribution(ctr_reference(w, users, items, rng.random((512, N_CTX)).astype(np.float32)))
    return b


def sample_inputs(n: int, seed: int = 0, weights_seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Raw inputs for ``n`` rows (some user ids out of vocabulary) and their reference scores."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, N_USERS, n)  # row 0 is the OOV row
    users = np.array(["nobody" if r == 0 else f"u{r}" for r in rows])
    items = rng.integers(0, N_ITEMS, n).astype(np.int64)
    ctx = rng.random((n, N_CTX)).astype(np.float32)
    ref = ctr_reference(ctr_weights(weights_seed), rows, items, ctx).ravel()
    return {"user_id": users, "item_id": items, "ctx": ctx}, ref


def keras_ctr_source(w: dict[str, np.ndarray], path: Path) -> Path:
    """The CTR function as a trainer would hand it over: a ``.keras`` file whose user
    ids go through a ``StringLookup`` (which the converter lifts into a vocabulary)."""
    with silenced():
        _keras_ctr(w, None, user_lookup=True).save(path)
    return path


def _keras_ctr(w: dict[str, np.ndarray], batch: int | None, user_lookup: bool) -> Any:
    """The CTR function in Keras with the given weights; user ids as rows or as strings."""
    import keras

    u = keras.Input((), batch_size=batch, dtype="string" if user_lookup else "int32", name="user_id")
    i = keras.Input((), batch_size=batch, dtype="int32", name="item_id")
    c = keras.Input((N_CTX,), batch_size=batch, dtype="float32", name="ctx")
    rows = (keras.layers.StringLookup(vocabulary=list(USER_KEYS), num_oov_indices=1, name="user_lookup")(u)
            if user_lookup else u)
    ue = keras.layers.Embedding(N_USERS, DIM, name="user_emb")(rows)
    ie = keras.layers.Embedding(N_ITEMS, DIM, name="item_emb")(i)
    x = keras.layers.Concatenate()([ue, ie, c])
    out = keras.layers.Dense(1, activation="sigmoid", use_bias=False, name="dense")(x)
    model = keras.Model({"user_id": u, "item_id": i, "ctx": c}, {"score": out})
    model.get_layer("user_emb").set_weights([w["user_emb"]])
    model.get_layer("item_emb").set_weights([w["item_emb"]])
    model.get_layer("dense").set_weights([w["w"]])
    return model


def labelled_rows(n: int, seed: int = 0, weights_seed: int = 0) -> dict[str, np.ndarray]:
    """Rows with clicks drawn from the reference CTR: held-out data for the converter's eval."""
    inputs, ref = sample_inputs(n, seed, weights_seed)
    rng = np.random.default_rng(seed + 1)
    return {**inputs, "label": (rng.random(n) < ref).astype(np.int64)}


def build_demo_package(name: str, version: int, signing_key: Ed25519PrivateKey, seed: int = 0) -> bytes:
    """The SDK's demo CTR package (ONNX, vocabulary, warm-up), signed, for tests and benchmarks."""
    b = ctr_builder(ctr_weights(seed), name, version)
    b.metadata = {"seed": seed}
    return b.build(signing_key)
