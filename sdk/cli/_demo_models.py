"""Small real CTR models for the demo and the tests, built on the spot (no binaries).

The CTR function has a planted signal: the score depends on the user and item
embeddings and on the context, so results can be checked against a NumPy
reference, not only that something ran.
"""

from __future__ import annotations

import numpy as np

N_USERS, N_ITEMS, DIM, N_CTX = 50, 80, 8, 4


def ctr_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_emb": rng.normal(0, 0.5, (N_USERS, DIM)).astype(np.float32),
        "item_emb": rng.normal(0, 0.5, (N_ITEMS, DIM)).astype(np.float32),
        "w": rng.normal(0, 0.5, (2 * DIM + N_CTX, 1)).astype(np.float32),
    }


def ctr_reference(w: dict[str, np.ndarray], user_id, item_id, ctx) -> np.ndarray:
    x = np.concatenate([w["user_emb"][user_id], w["item_emb"][item_id], ctx], axis=1)
    return 1.0 / (1.0 + np.exp(-(x @ w["w"])))


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
    return model.SerializeToString()


def ort_format(onnx_bytes: bytes, tmp_path) -> tuple[bytes, bytes]:
    """Convert ONNX bytes to ORT format with onnxruntime's tool; also returns the operator config."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "m.onnx").write_bytes(onnx_bytes)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src), "--output_dir", str(out)],
        check=True,
        capture_output=True,
    )
    return (out / "m.ort").read_bytes(), (out / "required_operators.config").read_bytes()


def keras_ctr_tflite(w: dict[str, np.ndarray], tmp_path, batch: int | None = None) -> bytes:
    """The same CTR function as a Keras model converted to LiteRT (via SavedModel)."""
    import keras
    import tensorflow as tf

    u = keras.Input((), batch_size=batch, dtype="int32", name="user_id")
    i = keras.Input((), batch_size=batch, dtype="int32", name="item_id")
    c = keras.Input((N_CTX,), batch_size=batch, dtype="float32", name="ctx")
    ue = keras.layers.Embedding(N_USERS, DIM, name="user_emb")(u)
    ie = keras.layers.Embedding(N_ITEMS, DIM, name="item_emb")(i)
    x = keras.layers.Concatenate()([ue, ie, c])
    out = keras.layers.Dense(1, activation="sigmoid", use_bias=False, name="dense")(x)
    model = keras.Model({"user_id": u, "item_id": i, "ctx": c}, {"score": out})
    model.get_layer("user_emb").set_weights([w["user_emb"]])
    model.get_layer("item_emb").set_weights([w["item_emb"]])
    model.get_layer("dense").set_weights([w["w"]])
    path = tmp_path / f"sm{batch or 'dyn'}"
    model.export(str(path), verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(str(path)).convert()
