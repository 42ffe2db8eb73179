"""``edgerec convert model.pt`` / ``model.pt2``: TorchScript and torch.export files to ORT and LiteRT.

The LiteRT half needs litert-torch (in the ``[torch]`` extra); without it the
ORT half still runs, and asking for tflite says what to install.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from click.testing import CliRunner

from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import generate_keypair, load_verify_key
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.package import Package

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
LITERT = importlib.util.find_spec("litert_torch") is not None
needs_litert = pytest.mark.skipif(not LITERT, reason="litert-torch not installed (pip install 'edgerec[torch]')")
INPUTS = ("user_id", "item_id", "ctx")


class Ctr(torch.nn.Module):
    def __init__(self, view_batch: int | None = None, flatten: bool = False) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(300, 16)
        self.item = torch.nn.Embedding(500, 16)
        self.hidden = torch.nn.Linear(32 + 4, 16)
        self.head = torch.nn.Linear(16, 1)
        self.view_batch = view_batch
        self.flatten = flatten
        self.mix = torch.nn.Linear(4, 4)

    def forward(self, user_id, item_id, ctx):
        u, i = self.user(user_id), self.item(item_id)
        if self.view_batch is not None:  # a batch-size constant, as some hand-written models have
            u = u.reshape(self.view_batch, -1)
        if self.flatten:  # fine in PyTorch and ONNX; a static export makes it a constant
            u = self.mix(u.reshape(user_id.shape[0] * 4, 4)).reshape(user_id.shape[0], 16)
        return torch.sigmoid(self.head(torch.relu(self.hidden(torch.cat([u, i, ctx], dim=1)))))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    model = Ctr().eval()
    d = tmp_path_factory.mktemp("torchfiles")
    rng = np.random.default_rng(0)
    n = 1500
    rows = {"user_id": rng.integers(0, 300, n), "item_id": rng.integers(0, 500, n),
            "ctx": rng.normal(size=(n, 4)).astype(np.float32)}
    with torch.no_grad():
        p = model(*[torch.as_tensor(rows[k]) for k in INPUTS]).numpy().ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    np.savez(d / "eval.npz", **rows)
    np.savez(d / "examples.npz", **{k: rows[k][:8] for k in INPUTS})
    np.savez(d / "positional.npz", *[rows[k][:8] for k in INPUTS])
    np.savez(d / "wrong.npz", user=rows["user_id"][:8], item_id=rows["item_id"][:8], ctx=rows["ctx"][:8])
    examples = tuple(torch.as_tensor(rows[k][:8]) for k in INPUTS)
    torch.jit.save(torch.jit.script(model), d / "ctr.pt")
    batch = torch.export.Dim("batch")
    dyn = {k: {0: batch} for k in INPUTS}
    torch.export.save(torch.export.export(model, examples, dynamic_shapes=dyn), d / "ctr.pt2")
    torch.export.save(torch.export.export(model, examples), d / "static.pt2")
    torch.save(model.state_dict(), d / "weights.pt")
    (d / "garbage.pt").write_bytes(b"\x80\x02not a zip")
    torch.jit.save(torch.jit.trace(Ctr(view_batch=8).eval(), examples), d / "fixed.pt")
    flat = Ctr(flatten=True).eval()
    torch.export.save(torch.export.export(flat, examples, dynamic_shapes=dyn), d / "flatten.pt2")
    key = generate_keypair(d, "publisher")
    return d, key, model, rows


def _convert(args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def _torch_scores(model, rows):
    with torch.no_grad():
        return model(*[torch.as_tensor(rows[k]) for k in INPUTS]).numpy().ravel()


@pytest.fixture(scope="module")
def torchscript_fp32(files):
    d, key, _, _ = files
    out = d / "ts.edgepkg"
    res = _convert([d / "ctr.pt", "--out", out, "--sign-key", key.private_path, "--example-inputs",
                    d / "examples.npz", "--eval", d / "eval.npz", "--quantize", "none", "--batch-buckets", "4",
                    "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_torchscript_file_to_ort_and_litert(files, torchscript_fp32):
    _, key, model, rows = files
    m = Package.open(torchscript_fp32, load_verify_key(key.public_path)).manifest
    assert m.producer["source"] == "torch"
    assert [s.name for s in m.signature.inputs] == list(INPUTS) and m.output_name == "score"
    formats = {"ort", "tflite"} if LITERT else {"ort"}
    assert {(a.format, a.batch) for a in m.artifacts} == {(f, b) for f in formats for b in ("dynamic", 4)}
    for v in m.eval_report["variants"]:
        assert v["max_abs_diff"] < 1e-5 and v["status"] == "kept"
    feats = {f.input: f for f in m.features}
    assert feats["user_id"].id_range == (0, 299) and feats["item_id"].id_range == (0, 499)
    some = {k: rows[k][:37] for k in INPUTS}  # a batch size neither the examples nor a bucket has
    want = _torch_scores(model, some)
    for backend in ["onnxruntime", *(["litert"] if LITERT else [])]:
        with EdgeModel.load(torchscript_fp32, [load_verify_key(key.public_path)], backend=backend,
                            accelerator="cpu") as em:
            assert em.info.batch_buckets == ()  # the dynamic artifact on the CPU
            np.testing.assert_allclose(em.scores(em.predict(some)), want, atol=1e-5)


@needs_litert
def test_litert_bucket_runs_at_its_fixed_batch(files, torchscript_fp32):
    _, key, model, rows = files
    pkg = Package.open(torchscript_fp32, load_verify_key(key.public_path))
    [bucket] = [a for a in pkg.manifest.artifacts if a.format == "tflite" and a.batch == 4]
    assert bucket.accelerators == ("gpu", "npu", "cpu") and bucket.extra["max_abs_diff_vs_dynamic"] < 1e-5
    from edgerec.sdk.runtime import LiteRTBackend

    session = LiteRTBackend().load(pkg.stored_bytes(bucket.path), bucket, "cpu", 1)
    try:
        four = {k: rows[k][:4] for k in INPUTS}
        feed = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in four.items()}
        got = np.asarray(session.run(feed)["score"]).ravel()
    finally:
        session.close()
    np.testing.assert_allclose(got, _torch_scores(model, four), atol=1e-5)


def test_torch_export_program_with_its_saved_examples_quantized(files, torchscript_fp32, tmp_path):
    d, key, model, rows = files
    out = tmp_path / "ep.edgepkg"
    res = _convert([d / "ctr.pt2", "--out", out, "--sign-key", key.private_path, "--eval", d / "eval.npz",
                    "--max-auc-drop", "0.02"])  # no --example-inputs: the program kept its own
    assert res.exit_code == 0, res.output
    m = Package.open(out, load_verify_key(key.public_path)).manifest
    fp32 = {a.format: a.size for a in Package.open(torchscript_fp32, load_verify_key(key.public_path))
            .manifest.artifacts if a.batch == "dynamic"}
    for a in m.artifacts:
        assert a.precision == "int8-dynamic" and a.size < 0.5 * fp32[a.format], (a.path, a.size, fp32)
    for v in m.eval_report["variants"]:
        assert v["max_abs_diff"] < 0.02 and abs(v["auc_drop"]) < 0.02
    with EdgeModel.load(out, [load_verify_key(key.public_path)], accelerator="cpu") as em:
        some = {k: rows[k][:50] for k in INPUTS}
        np.testing.assert_allclose(em.scores(em.predict(some)), _torch_scores(model, some), atol=0.02)


def test_positional_example_arrays(files, tmp_path):
    d, key, _, _ = files
    out = tmp_path / "p.edgepkg"
    res = _convert([d / "ctr.pt", "--out", out, "--sign-key", key.private_path, "--format", "ort",
                    "--example-inputs", d / "positional.npz", "--quantize", "none"])
    assert res.exit_code == 0, res.output
    assert [s.name for s in Package.open(out, load_verify_key(key.public_path)).manifest.signature.inputs] == list(
        INPUTS)


@pytest.mark.parametrize(("source", "extra", "expected"), [
    ("static.pt2", [], "static.pt2: the program's batch dimension is fixed (user_id (8), item_id (8), ctx (8)); "
                       "export it with batch = torch.export.Dim('batch')"),
    ("weights.pt", [], "weights.pt: a torch.save checkpoint (a pickled module or state_dict, no graph), "
                       "which edgerec does not unpickle; save a TorchScript"),
    ("garbage.pt", [], "garbage.pt: not a TorchScript or torch.export file (not a zip archive"),
    ("ctr.pt", [], "ctr.pt: TorchScript needs --example-inputs FILE.npz (one array per forward argument: "
                   "user_id, item_id, ctx)"),
    ("ctr.pt", ["--example-inputs", "wrong.npz"], "wrong.npz: arrays user, item_id, ctx do not match the model's "
                                                  "inputs user_id, item_id, ctx"),
    ("ctr.pt", ["--example-inputs", "missing.npz"], "missing.npz: no such file"),
    ("eval.npz", ["--example-inputs", "examples.npz"], "--example-inputs: only PyTorch files"),
    ("ctr.pt", ["--example-inputs", "examples.npz", "--format", "tflite", "--quantize", "int8", "--calibration",
                "examples.npz"], "--quantize int8: LiteRT artifacts from PyTorch come in fp32, int8-dynamic"),
    ("ctr.pt", ["--example-inputs", "examples.npz", "--format", "tflite", "--prune", "0.5"],
     "--prune with LiteRT from PyTorch: pruning applies to the exported ONNX graph only; use --format ort"),
])
def test_refusals_are_one_line_and_say_what_to_do(files, tmp_path, source, extra, expected):
    d, key, _, _ = files
    if "--format" in extra and "tflite" in extra and not LITERT:
        expected = "LiteRT artifacts from PyTorch need litert-torch: pip install 'edgerec[torch]'"
    out = tmp_path / "x.edgepkg"
    args = [d / a if a.endswith(".npz") else a for a in extra]
    res = _convert([d / source, "--out", out, "--sign-key", key.private_path, *args])
    assert res.exit_code == 1, res.output
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert expected in res.stderr
    assert not out.exists()


def test_a_model_with_a_batch_size_built_in_is_refused(files, tmp_path):
    d, key, _, _ = files
    out = tmp_path / "f.edgepkg"
    res = _convert([d / "fixed.pt", "--out", out, "--sign-key", key.private_path, "--example-inputs",
                    d / "examples.npz"])
    assert res.exit_code == 1
    assert "fixed.pt: the model runs at batch 8 but fails at batch 9" in res.stderr
    assert "script or export it with a dynamic batch" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@needs_litert
def test_a_litert_graph_that_does_not_resize_is_refused_with_what_to_do(files, tmp_path):
    d, key, _, _ = files
    args = [d / "flatten.pt2", "--out", tmp_path / "f.edgepkg", "--sign-key", key.private_path, "--quantize", "none"]
    res = _convert([*args, "--format", "tflite"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "flatten.pt2: the LiteRT graph litert-torch made for batch 8 does not run at batch 1" in res.stderr
    assert "litert-torch converts fixed shapes only (litert-torch#870): use --format ort" in res.stderr
    res = _convert([*args, "--format", "ort"])  # the ONNX export keeps the batch symbolic
    assert res.exit_code == 0, res.output
