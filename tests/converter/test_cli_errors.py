"""``edgerec convert`` on the command line: the report, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgerec.sdk import testing as demo
from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import generate_keypair, load_verify_key
from edgerec.sdk.package import Package


@pytest.fixture(scope="module")
def files(tmp_path_factory, ctr_weights):
    d = tmp_path_factory.mktemp("cli")
    key = generate_keypair(d, "publisher")
    (d / "ctr.onnx").write_bytes(demo.onnx_ctr(ctr_weights))
    rng = np.random.default_rng(0)
    n = 600
    rows = {"user_id": rng.integers(0, demo.N_USERS, n), "item_id": rng.integers(0, demo.N_ITEMS, n),
            "ctx": rng.normal(size=(n, demo.N_CTX)).astype(np.float32)}
    p = demo.ctr_reference(ctr_weights, rows["user_id"], rows["item_id"], rows["ctx"]).ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    np.savez(d / "eval.npz", **rows)
    np.savez(d / "wrong.npz", user=rows["user_id"], item_id=rows["item_id"], label=rows["label"])
    return d, key


def _run(args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def test_convert_prints_the_report_and_writes_a_signed_package(files):
    d, key = files
    out = d / "ok.edgepkg"
    features = d / "features.json"
    features.write_text('{"ctx": {"role": "user", "field": "device", "default": 0.5}}')
    res = _run([d / "ctr.onnx", "--out", out, "--sign-key", key.private_path, "--eval", d / "eval.npz",
                "--quantize", "none", "--name", "ctr", "--version", "3", "--features", features])
    assert res.exit_code == 0, res.output
    assert "conversion report" in res.output and "fp32" in res.output and "kept" in res.output
    m = Package.open(out, load_verify_key(key.public_path)).manifest
    assert (m.name, m.version, m.artifacts[0].precision) == ("ctr", 3, "fp32")
    assert m.eval_report["variants"][0]["max_abs_diff"] < 1e-6
    feats = {f.input: (f.role, f.field, f.default) for f in m.features}
    # --features wins; the other inputs get roles from their names.
    assert feats == {"ctx": ("user", "device", 0.5), "user_id": ("user", "user_id", None),
                     "item_id": ("item", "item_id", None)}


def _hashing_model(path):
    import keras

    x = keras.Input((), dtype="string", name="user")
    h = keras.layers.Hashing(num_bins=16, salt=1, name="user_hash")(x)  # salted: SipHash, not liftable
    e = keras.layers.Embedding(16, 4)(h)
    keras.Model({"user": x}, {"score": keras.layers.Dense(1, activation="sigmoid")(e)}).save(path)


def _custom_op_model(path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("corrupt_keras", "not a readable Keras model"),
        ("corrupt_onnx", "not a valid ONNX model"),
        ("unsupported_type", "unsupported model type '.h5' (a Keras 2 HDF5 file: load it with keras.models"),
        ("int8_without_calibration", "--quantize int8 needs --calibration"),
        ("missing_calibration_file", "missing.npz: no such file"),
        ("names_do_not_match", "no column or array for model input(s) user_id, ctx"),
        ("salted_hashing_layer", "layer 'user_hash' (Hashing): salted hashing cannot be lifted"),
        ("custom_op", "Frobnicate"),
        ("tflite_from_onnx", "LiteRT artifacts come from Keras, SavedModel or PyTorch sources"),
        ("auto_without_eval", "--quantize auto needs --eval"),
        ("bad_feature_role", "ctx.role 'device' is not one of user, item, context"),
    ],
)
def test_bad_input_fails_in_one_line_and_leaves_nothing(files, tmp_path, case, expected):
    d, key = files
    src, extra = d / "ctr.onnx", []
    if case == "corrupt_keras":
        src = tmp_path / "m.keras"
        src.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "corrupt_onnx":
        src = tmp_path / "m.onnx"
        src.write_bytes(b"\x08\x07garbage")
    elif case == "unsupported_type":
        src = tmp_path / "m.h5"
        src.write_bytes(b"x")
    elif case == "int8_without_calibration":
        extra = ["--quantize", "int8"]
    elif case == "missing_calibration_file":
        extra = ["--quantize", "int8", "--calibration", tmp_path / "missing.npz"]
    elif case == "names_do_not_match":
        extra = ["--eval", d / "wrong.npz"]
    elif case == "salted_hashing_layer":
        src = tmp_path / "h.keras"
        _hashing_model(src)
    elif case == "custom_op":
        src = tmp_path / "c.onnx"
        _custom_op_model(src)
    elif case == "tflite_from_onnx":
        extra = ["--format", "tflite"]
    elif case == "auto_without_eval":
        extra = ["--quantize", "auto"]
    elif case == "bad_feature_role":
        (tmp_path / "f.json").write_text('{"ctx": {"role": "device"}}')
        extra = ["--features", tmp_path / "f.json"]
    out = tmp_path / "out" / "x.edgepkg"
    res = _run([src, "--out", out, "--sign-key", key.private_path, *extra])
    assert res.exit_code == 1, res.output
    assert expected in res.stderr
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
