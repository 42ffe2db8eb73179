"""Lean ONNX graphs (index wraps dropped, node counts) and the 4-bit precisions on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerec.converter.lean import drop_index_wraps, lean
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk import testing as demo
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.package import Package

ROWS, DIM = 700, 16


def _wrapped_gather(shift: int = 0) -> bytes:
    """Gather(table, where(id < 0, id + ROWS + shift, id)) in the Cast/Less/Not/Mul/Add form tf2onnx writes."""
    table = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM)
    nodes = [
        helper.make_node("Less", ["id", "zero"], ["neg"]),
        helper.make_node("Not", ["neg"], ["pos"]),
        helper.make_node("Cast", ["neg"], ["neg_i"], to=TensorProto.INT32),
        helper.make_node("Cast", ["pos"], ["pos_i"], to=TensorProto.INT32),
        helper.make_node("Add", ["id", "rows"], ["wrapped"]),
        helper.make_node("Mul", ["neg_i", "wrapped"], ["a"]),
        helper.make_node("Mul", ["pos_i", "id"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["out"], axis=0),
    ]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0, np.int32), "zero"),
             numpy_helper.from_array(np.array(ROWS + shift, np.int32), "rows")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("id", TensorProto.INT32, ["b"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", DIM])], inits)
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _run(model: bytes, ids: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"id": ids})[0])


def test_an_index_wrap_is_dropped_only_after_checking_every_index():
    model = _wrapped_gather()
    unwrapped, n = drop_index_wraps(model)
    assert n == 1 and len(onnx.load_from_string(unwrapped).graph.node) == 9  # dead nodes go in lean's cleanup
    leaned, report = lean(model)
    assert (report.nodes_before, report.nodes_after, report.index_wraps) == (9, 1, 1)
    assert [node.op_type for node in onnx.load_from_string(leaned).graph.node] == ["Gather"]
    ids = np.array([-ROWS, -1, 0, 5, ROWS - 1], np.int32)
    np.testing.assert_array_equal(_run(leaned, ids), _run(model, ids))
    # A planted near-miss (id + rows + 1 for negative ids) is not the wrap: the graph keeps it.
    near = _wrapped_gather(shift=1)
    assert drop_index_wraps(near) == (near, 0)
    assert lean(near)[1].index_wraps == 0


@pytest.fixture(scope="module")
def mlp_ctr(tmp_path_factory):
    """Embeddings, a 64-unit hidden layer and a head, as ONNX; rows labelled from its own scores."""
    rng = np.random.default_rng(11)
    w = {"user_emb": rng.normal(0, 0.5, (500, 32)), "item_emb": rng.normal(0, 0.5, (2000, 32)),
         "w1": rng.normal(0, 0.25, (68, 64)), "b1": rng.normal(0, 0.1, 64), "w2": rng.normal(0, 0.5, (64, 1))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes = [
        helper.make_node("Gather", ["user_emb", "user_id"], ["ue"], axis=0),
        helper.make_node("Gather", ["item_emb", "item_id"], ["ie"], axis=0),
        helper.make_node("Concat", ["ue", "ie", "ctx"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("user_id", TensorProto.INT64, ["b"]),
         helper.make_tensor_value_info("item_id", TensorProto.INT64, ["b"]),
         helper.make_tensor_value_info("ctx", TensorProto.FLOAT, ["b", demo.N_CTX])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b", 1])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    d = tmp_path_factory.mktemp("mlp")
    (d / "mlp.onnx").write_bytes(model.SerializeToString())
    n = 4000
    rows = {"user_id": rng.integers(0, 500, n), "item_id": rng.integers(0, 2000, n),
            "ctx": rng.normal(size=(n, demo.N_CTX)).astype(np.float32)}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    p = sess.run(None, rows)[0].ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    np.savez(d / "eval.npz", **rows)
    return d, rows, p


@pytest.mark.parametrize(("quantize", "bits", "ops"), [
    ("int4-rows", {"4": 2, "8": 1}, {"GatherBlockQuantized"}),
    ("int4", {"4": 3, "8": 0}, {"GatherBlockQuantized", "MatMulNBits"}),
])
def test_onnx_at_4_bits(mlp_ctr, signing_key, tmp_path, quantize, bits, ops):
    d, rows, p = mlp_ctr
    res = convert(d / "mlp.onnx", tmp_path / "m.edgepkg", signing_key,
                  ConvertOptions(quantize=quantize, eval=d / "eval.npz", max_auc_drop=0.01))
    [r] = res.variants
    fp32 = (d / "mlp.onnx").stat().st_size
    # Tables: 2500 rows x (16 B of 4-bit values + 2 B fp16 scale + a 4-bit zero point) ~ 46 KB of 334 KB.
    assert r.size <= 0.2 * fp32 and r.auc_drop < 0.01
    [art] = res.manifest.artifacts
    assert art.precision == quantize and art.path == f"model-{quantize}.ort"
    assert art.extra["weight_bits"] == bits
    pkg = Package.open(res.path, signing_key.public_key())
    config = pkg.file_bytes(art.extra["required_operators"]).decode()
    assert all(op in config for op in ops) and "com.microsoft" in config
    with EdgeModel.load(pkg, backend="onnxruntime", accelerator="cpu") as model:
        got = model.scores(model.predict({k: rows[k][:200] for k in ("user_id", "item_id", "ctx")}))
    assert np.max(np.abs(got - p[:200])) <= r.max_abs_diff + 1e-6


def test_auto_mixes_per_layer_when_one_table_cannot_take_4_bits(signing_key, tmp_path):
    """Item rows with one large value (+-8, in a column the model ignores) and their signal in small
    ones (+-0.3): a 4-bit step per row is ~0.6, so the item table must stay int8 (one scale per table,
    step 0.07) while the user table can go to 4 bits. ``auto`` finds that per layer."""
    rng = np.random.default_rng(2)
    item = rng.normal(0, 0.3, (2000, 32))
    item[:, 0] = rng.choice([-8.0, 8.0], 2000)
    head = np.concatenate([rng.normal(0, 0.5, 32), [0.0], rng.normal(0, 1.0, 31), rng.normal(0, 0.5, demo.N_CTX)])
    w = {"user_emb": rng.normal(0, 0.5, (500, 32)).astype(np.float32), "item_emb": item.astype(np.float32),
         "w": head[:, None].astype(np.float32)}
    (tmp_path / "ctr.onnx").write_bytes(demo.onnx_ctr(w))
    n = 5000
    rows = {"user_id": rng.integers(0, 500, n), "item_id": rng.integers(0, 2000, n),
            "ctx": rng.normal(size=(n, demo.N_CTX)).astype(np.float32)}
    rows["label"] = (rng.random(n) < demo.ctr_reference(w, rows["user_id"], rows["item_id"], rows["ctx"]).ravel())
    rows["label"] = rows["label"].astype(np.int64)
    np.savez(tmp_path / "eval.npz", **rows)
    res = convert(tmp_path / "ctr.onnx", tmp_path / "auto.edgepkg", signing_key,
                  ConvertOptions(quantize="auto", eval=tmp_path / "eval.npz", max_auc_drop=0.004))
    by = {r.precision: r for r in res.variants}
    assert by["int4-rows"].status == "rejected" and by["int8-dynamic"].status != "rejected"
    assert by["mixed"].status == "kept" and by["mixed"].size < by["int8-dynamic"].size
    [art] = res.manifest.artifacts
    assert art.precision == "mixed" and art.extra["layers_4bit"] == ["user_emb"]
    assert art.extra["weight_bits"] == {"4": 1, "8": 1}


def test_a_runtime_without_the_contrib_ops_says_what_to_install():
    from edgerec.sdk.manifest import Artifact
    from edgerec.sdk.runtime.ort import _hint

    art = Artifact(path="model-int4.ort", format="ort", sha256="0" * 64, size=1, precision="int4")
    missing = RuntimeError("Could not find an implementation for GatherBlockQuantized(1) node with name 'n3_'")
    assert "full onnxruntime package" in _hint(missing, art) and "int4 artifacts" in _hint(missing, art)
    assert _hint(RuntimeError("file is corrupt"), art) == ""


def test_json_report_stays_json_with_histogram_calibration(mlp_ctr, tmp_path):
    import json

    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli
    from edgerec.sdk.keys import generate_keypair

    d, _, _ = mlp_ctr
    key = generate_keypair(tmp_path, "publisher")
    res = CliRunner().invoke(cli, [
        "convert", str(d / "mlp.onnx"), "--out", str(tmp_path / "p.edgepkg"), "--sign-key", str(key.private_path),
        "--quantize", "int8", "--calibration", str(d / "eval.npz"), "--calibration-method", "percentile",
        "--eval", str(d / "eval.npz"), "--max-auc-drop", "0.01", "--json",
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # ONNX Runtime's calibrator prints progress; none of it reaches stdout
    [v] = report["variants"]
    assert v["precision"] == "int8" and v["nodes"] > 0 and v["status"] == "kept"
