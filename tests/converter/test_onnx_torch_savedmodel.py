"""ONNX, PyTorch and SavedModel sources; ORT precisions and calibration methods."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk import testing as demo
from edgerec.sdk.model import EdgeModel


@pytest.fixture(scope="module")
def big_ctr(tmp_path_factory):
    """The SDK demo CTR graph with larger tables, and rows labelled from its own scores."""
    rng = np.random.default_rng(3)
    w = {
        "user_emb": rng.normal(0, 0.5, (500, 32)).astype(np.float32),
        "item_emb": rng.normal(0, 0.5, (2000, 32)).astype(np.float32),
        "w": rng.normal(0, 0.5, (2 * 32 + demo.N_CTX, 1)).astype(np.float32),
    }
    d = tmp_path_factory.mktemp("onnx")
    (d / "ctr.onnx").write_bytes(demo.onnx_ctr(w))
    n = 3000
    rows = {"user_id": rng.integers(0, 500, n), "item_id": rng.integers(0, 2000, n),
            "ctx": rng.normal(size=(n, demo.N_CTX)).astype(np.float32)}
    p = demo.ctr_reference(w, rows["user_id"], rows["item_id"], rows["ctx"]).ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    np.savez(d / "eval.npz", **rows)
    np.savez(d / "calib.npz", **{k: v[:200] for k, v in rows.items()})
    return w, d, rows


@pytest.mark.parametrize(
    ("quantize", "method", "per_channel", "max_diff", "max_ratio"),
    [
        ("none", "minmax", False, 1e-6, 1.05),
        ("dynamic", "minmax", False, 0.05, 0.3),
        ("int8", "minmax", True, 0.2, 0.3),
        ("int8", "entropy", False, 0.2, 0.3),
        ("int8", "percentile", False, 0.2, 0.3),
    ],
)
def test_onnx_precisions(big_ctr, signing_key, tmp_path, quantize, method, per_channel, max_diff, max_ratio):
    w, d, rows = big_ctr
    opts = ConvertOptions(quantize=quantize, calibration=d / "calib.npz", calibration_method=method,
                          per_channel=per_channel, eval=d / "eval.npz", max_auc_drop=0.01)
    res = convert(d / "ctr.onnx", tmp_path / "m.edgepkg", signing_key, opts)
    [r] = res.variants
    assert res.source["auc"] > 0.7
    assert r.max_abs_diff <= max_diff and r.auc_drop < 0.01
    assert r.size <= max_ratio * (d / "ctr.onnx").stat().st_size
    m = res.manifest
    assert [a.format for a in m.artifacts] == ["ort"]
    feats = {f.input: f for f in m.features}
    assert feats["user_id"].id_range == (0, 499) and feats["item_id"].id_range == (0, 1999)
    with EdgeModel.load(res.path, [signing_key.public_key()], accelerator="cpu") as model:
        got = model.scores(model.predict({k: rows[k][:50] for k in ("user_id", "item_id", "ctx")}))
    want = demo.ctr_reference(w, rows["user_id"][:50], rows["item_id"][:50], rows["ctx"][:50]).ravel()
    assert np.max(np.abs(got - want)) <= max_diff


def test_onnx_magnitude_pruning_reports_sparsity(big_ctr, signing_key, tmp_path):
    _, d, _ = big_ctr
    res = convert(d / "ctr.onnx", tmp_path / "p.edgepkg", signing_key,
                  ConvertOptions(quantize="none", prune=0.5))
    rep = res.manifest.eval_report["pruning"]
    assert rep["tensors"] == ["w"] and rep["weights"] == 68 and rep["achieved"] == pytest.approx(0.5, abs=0.01)
    art = res.manifest.artifacts[0]
    assert art.extra["sparsity"] == rep["achieved"]


def test_torch_module(signing_key, tmp_path):
    torch = pytest.importorskip("torch")

    class Ctr(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.user = torch.nn.Embedding(300, 32)
            self.head = torch.nn.Linear(32 + 4, 1)

        def forward(self, user, ctx):
            return torch.sigmoid(self.head(torch.cat([self.user(user), ctx], dim=1)))

    torch.manual_seed(0)
    model = Ctr().eval()
    rng = np.random.default_rng(0)
    n = 2000
    rows = {"user": rng.integers(0, 300, n), "ctx": rng.normal(size=(n, 4)).astype(np.float32)}
    with torch.no_grad():
        p = model(torch.as_tensor(rows["user"]), torch.as_tensor(rows["ctx"])).numpy().ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    np.savez(tmp_path / "eval.npz", **rows)
    examples = (torch.as_tensor(rows["user"][:2]), torch.as_tensor(rows["ctx"][:2]))
    res = convert(model, tmp_path / "t.edgepkg", signing_key,
                  ConvertOptions(name="torch-ctr", eval=tmp_path / "eval.npz", max_auc_drop=0.01),
                  example_inputs=examples, input_names=["user", "ctx"], output_names=["score"])
    # LiteRT too where litert-torch is installed (the [torch] extra), as for Keras sources.
    litert = importlib.util.find_spec("litert_torch") is not None
    assert {r.format for r in res.variants} == ({"ort", "tflite"} if litert else {"ort"})
    assert res.manifest.producer["source"] == "torch"
    assert [s.name for s in res.manifest.signature.inputs] == ["user", "ctx"]
    for r in res.variants:
        assert r.precision == "int8-dynamic"
        assert res.source["auc"] > 0.6 and r.max_abs_diff < 0.03 and r.auc_drop < 0.01


def test_savedmodel_to_litert_and_ort(keras_models, ctr_data, signing_key, tmp_path, rows_of):
    np.savez(tmp_path / "eval.npz", **rows_of(ctr_data.eval))
    res = convert(keras_models.saved_model, tmp_path / "sm.edgepkg", signing_key,
                  ConvertOptions(quantize="none", eval=tmp_path / "eval.npz", batch_buckets=(8,)))
    by = {r.format: r for r in res.variants}
    assert set(by) == {"tflite", "ort"}
    assert by["tflite"].max_abs_diff < 1e-5 and by["ort"].max_abs_diff < 1e-5  # tf2onnx path included
    assert res.source["auc"] > 0.75
    assert sorted(str(a.batch) for a in res.manifest.artifacts) == ["8", "8", "dynamic", "dynamic"]


def test_savedmodel_fp16_and_pruning(keras_models, signing_key, tmp_path):
    res = convert(keras_models.saved_model, tmp_path / "sm16.edgepkg", signing_key,
                  ConvertOptions(quantize="fp16", formats=("tflite",), prune=0.6))
    [art] = res.manifest.artifacts
    assert art.precision == "fp16" and art.format == "tflite"
    rep = res.manifest.eval_report["pruning"]
    assert rep["achieved"] == pytest.approx(0.6, abs=0.01)
    assert sorted(rep["tensors"]) == ["head/kernel:0", "hidden/kernel:0"]

