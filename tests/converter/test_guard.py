"""The accuracy guard beyond AUC: log loss, calibration (ECE) and the worst --slice-by slice."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgerec.converter import ort as ort_mod
from edgerec.converter.errors import AccuracyBudgetError, DataError
from edgerec.converter.evaluate import expected_calibration_error
from edgerec.converter.guard import make_slices
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk import testing as demo
from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import generate_keypair

N_USERS, N_ITEMS, HEAD, DIM = 300, 2000, 200, 32


@pytest.fixture(scope="module")
def rare_items(tmp_path_factory):
    """A CTR model whose tail items carry their signal in small embedding values (0.01) while head
    items have large ones (2.0): one int8 scale per table (quantize_dynamic) rounds the tail rows
    to zero, a scale per row (int4-rows) keeps them. Labels come from the model itself."""
    rng = np.random.default_rng(5)
    item = np.zeros((N_ITEMS, DIM), np.float32)
    item[:HEAD, :16] = rng.normal(0, 2.0, (HEAD, 16))
    item[HEAD:, 16:] = rng.normal(0, 0.01, (N_ITEMS - HEAD, 16))
    w = np.concatenate([rng.normal(0, 0.5, DIM), rng.normal(0, 0.3, 16), rng.normal(0, 30, 16),
                        rng.normal(0, 0.5, demo.N_CTX)]).astype(np.float32)[:, None]
    weights = {"user_emb": rng.normal(0, 0.5, (N_USERS, DIM)).astype(np.float32), "item_emb": item, "w": w}
    d = tmp_path_factory.mktemp("guard")
    (d / "ctr.onnx").write_bytes(demo.onnx_ctr(weights))
    n = 6000
    tail = rng.random(n) < 0.12
    rows = {"user_id": rng.integers(0, N_USERS, n),
            "item_id": np.where(tail, rng.integers(HEAD, N_ITEMS, n), rng.integers(0, HEAD, n)),
            "ctx": rng.normal(size=(n, demo.N_CTX)).astype(np.float32)}
    p = demo.ctr_reference(weights, rows["user_id"], rows["item_id"], rows["ctx"]).ravel()
    rows["label"] = (rng.random(n) < p).astype(np.int64)
    rows["popularity"] = np.where(tail, "tail", "head")  # not a model input: a column to slice by
    np.savez(d / "eval.npz", **rows)
    return d


def test_ece_is_the_row_weighted_gap_per_score_bin():
    y = np.array([0, 1, 0, 1, 1, 1, 0, 0], float)
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.95, 0.95, 0.05, 0.05])
    # Bins: 0.5 (4 rows, rate 0.5: gap 0), 0.95 (2 rows, rate 1: gap 0.05), 0.05 (2 rows, rate 0: gap 0.05).
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.05 + 2 * 0.05) / 8)
    assert expected_calibration_error(y, np.full(8, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == pytest.approx(1.0)


def test_slices_by_value_quantile_and_frequency():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.4).astype(float)
    s = rng.random(3000)
    few = make_slices(np.array(["a", "b", "c"] * 1000), y, s, "seg", min_rows=200)
    assert sorted(few.rows) == ["a", "b", "c"] and all(len(i) == 1000 for i in few.rows.values())
    numeric = make_slices(rng.normal(size=3000), y, s, "x")
    assert len(numeric.rows) == 5 and all(580 <= len(i) <= 620 for i in numeric.rows.values())
    assert sum(len(i) for i in numeric.rows.values()) == 3000
    ids = np.array([f"u{i}" for i in rng.zipf(1.6, 3000) % 400])
    many = make_slices(ids, y, s, "user", min_rows=100)
    assert len(many.rows) + len(many.skipped) <= 16 and "(other)" in {*many.rows, *many.skipped}
    assert all(len(i) >= 100 for i in many.rows.values())
    assert all("rows <" in why or why == "one class only" for why in many.skipped.values())
    with pytest.raises(DataError, match="--slice-by 'seg': no slice has 2000 rows"):
        make_slices(np.array(["a", "b", "c"] * 1000), y, s, "seg", min_rows=2000)


def test_per_table_int8_that_hurts_rare_items_is_refused_by_the_slice_check(rare_items, signing_key, tmp_path):
    d = rare_items
    base = {"quantize": "dynamic", "eval": d / "eval.npz", "max_auc_drop": 0.015, "max_log_loss_increase": None}
    # On all rows the loss hides in the 12% of tail rows: AUC alone keeps the artifact.
    res = convert(d / "ctr.onnx", tmp_path / "a.edgepkg", signing_key, ConvertOptions(**base))
    [r] = res.variants
    assert r.status == "kept" and r.auc_drop < 0.015
    out = tmp_path / "b.edgepkg"
    with pytest.raises(AccuracyBudgetError,
                       match=r"slice popularity=tail: AUC drop 0\.\d+ > --max-slice-auc-drop 0\.015") as err:
        convert(d / "ctr.onnx", out, signing_key, ConvertOptions(**base, slice_by="popularity"))
    assert not out.exists()
    tail_drop = float(str(err.value).split("AUC drop ")[-1].split()[0])
    assert tail_drop > 0.03  # the tail lost twice the budget and more


def test_auto_keeps_rows_at_4_bits_which_pass_every_slice(rare_items, signing_key, tmp_path):
    d = rare_items
    res = convert(d / "ctr.onnx", tmp_path / "auto.edgepkg", signing_key,
                  ConvertOptions(quantize="auto", eval=d / "eval.npz", max_auc_drop=0.015, slice_by="popularity"))
    by = {r.precision: r for r in res.variants}
    assert by["int8-dynamic"].status == "rejected" and by["int8-dynamic"].worst_slice == "tail"
    assert by["int4-rows"].status == "kept" and by["int4-rows"].worst_slice_auc_drop < 0.015
    assert by["int4-rows"].size < 0.2 * by["fp32"].size
    [art] = [a for a in res.manifest.artifacts if a.batch == "dynamic"]
    assert art.precision == "int4-rows" and art.extra["weight_bits"]["4"] == 2
    report = res.manifest.eval_report
    assert report["source"]["slices"]["column"] == "popularity"
    assert set(report["source"]["slices"]["slices"]) == {"head", "tail"}
    tail = next(v for v in report["variants"] if v["precision"] == "int8-dynamic")["slice_auc"]["tail"]
    assert tail < report["source"]["slices"]["slices"]["tail"]["source_auc"] - 0.03


def _shifted(onnx_bytes: bytes, by: float) -> bytes:
    """The same model with ``by`` added to the logit before the sigmoid: same ranking, worse calibration."""
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    model.graph.initializer.append(numpy_helper.from_array(np.array(by, np.float32), "planted_shift"))
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node(
        "Add", [sigmoid.input[0], "planted_shift"], ["planted_logit"]))
    sigmoid.input[0] = "planted_logit"
    return bytes(model.SerializeToString())


def test_a_quantization_that_only_shifts_scores_is_refused_by_log_loss_and_ece(
    rare_items, signing_key, tmp_path, monkeypatch
):
    d = rare_items
    real = ort_mod.quantize

    def planted(onnx_bytes, precision, *args, **kwargs):  # a bad quantizer: int8 plus a constant logit shift
        q = real(onnx_bytes, precision, *args, **kwargs)
        return _shifted(q, 0.6) if precision == "int4-rows" else q

    monkeypatch.setattr(ort_mod, "quantize", planted)
    opts = {"quantize": "int4-rows", "eval": d / "eval.npz", "max_auc_drop": 0.015}
    with pytest.raises(AccuracyBudgetError, match=r"int4-rows: log loss \+0\.\d+ > --max-log-loss-increase 0\.01; "
                                                  r"ECE \+0\.\d+ > --max-ece-increase 0\.01"):
        convert(d / "ctr.onnx", tmp_path / "x.edgepkg", signing_key, ConvertOptions(**opts))
    # With both gates off, AUC alone keeps it: the ranking did not change.
    res = convert(d / "ctr.onnx", tmp_path / "y.edgepkg", signing_key,
                  ConvertOptions(**opts, max_log_loss_increase=None, max_ece_increase=None))
    [r] = res.variants
    assert r.status == "kept" and r.auc_drop < 0.005 and r.ece_increase > 0.05 and r.log_loss_increase > 0.02


def test_cli_slice_column_errors_are_one_line_and_name_the_field(rare_items, tmp_path):
    d = rare_items
    key = generate_keypair(tmp_path, "publisher")
    out = tmp_path / "out" / "x.edgepkg"
    base = [str(d / "ctr.onnx"), "--out", str(out), "--sign-key", str(key.private_path)]
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", *base, "--eval", str(d / "eval.npz"), "--slice-by", "segment"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "--slice-by 'segment'" in res.stderr and "has no such column" in res.stderr
    res = runner.invoke(cli, ["convert", *base, "--slice-by", "popularity"])
    assert res.exit_code == 1 and "--slice-by needs --eval FILE" in res.stderr
    res = runner.invoke(cli, ["convert", *base, "--eval", str(d / "eval.npz"), "--slice-by", "popularity",
                              "--max-slice-auc-drop", "0.015", "--max-log-loss-increase", "1", "--json"])
    assert res.exit_code == 1, res.output
    assert "slice popularity=tail" in res.stderr and "--max-slice-auc-drop 0.015" in res.stderr
    assert not out.exists()
