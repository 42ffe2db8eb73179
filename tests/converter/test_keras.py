"""Keras source: lifted lookups, every precision under ``auto``, buckets, id pruning."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.converter.errors import AccuracyBudgetError
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.package import Package

RAW = ("user", "item", "ctx")


@pytest.fixture(scope="module")
def auto(keras_models, ctr_data, signing_key, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "auto.edgepkg"
    opts = ConvertOptions(quantize="auto", eval=ctr_data.eval_path, calibration=ctr_data.calib_path,
                          batch_buckets=(1, 16), max_auc_drop=0.01, calibration_method="percentile",
                          per_channel=True)
    return convert(keras_models.lookup_path, out, signing_key, opts)


def _source_scores(keras_models, rows):
    import keras
    import tensorflow as tf

    model = keras.models.load_model(keras_models.lookup_path)
    return np.asarray(model({k: tf.constant(rows[k]) for k in RAW})["score"]).ravel()


def test_source_learned_the_planted_signal(auto):
    assert auto.source["auc"] > 0.75


def test_lookups_are_lifted_into_package_vocabularies(auto):
    m = auto.manifest
    feats = {f.input: f for f in m.features}
    assert feats["user"].vocabulary == "vocab/user.json" and feats["item"].vocabulary == "vocab/item.json"
    assert feats["user"].role == "user" and feats["item"].role == "item" and feats["ctx"].role == "context"
    # The graph now takes embedding rows; the gathers index with 1-D tensors.
    assert m.signature.input("user").dtype == "int32" and m.signature.input("user").shape == (None,)
    for art in m.artifacts:
        if art.format == "tflite":
            assert art.extra["gather_index_ranks"] == [1]
    kinds = {lk["input"]: lk["kind"] for lk in m.metadata["converter"]["lifted_lookups"]}
    assert kinds == {"user": "StringLookup", "item": "IntegerLookup"}


EVERY = {"tflite fp32", "tflite fp16", "tflite int8-dynamic", "tflite int8", "tflite int4-rows", "tflite int4",
         "ort fp32", "ort int8-dynamic", "ort int8", "ort int4-rows", "ort int4"}


def test_every_precision_is_measured_against_the_source(auto):
    by = {r.name: r for r in auto.variants}
    assert EVERY <= set(by) <= EVERY | {"tflite mixed", "ort mixed"}
    assert by["tflite fp32"].max_abs_diff < 1e-5 and by["ort fp32"].max_abs_diff < 1e-5
    assert by["tflite fp16"].max_abs_diff < 5e-3
    for r in auto.variants:
        assert abs(r.auc_drop) < 0.01, r
        assert r.latency_ms > 0 and r.log_loss > 0
    for fmt in ("tflite", "ort"):
        assert by[f"{fmt} int8"].size <= 0.4 * by[f"{fmt} fp32"].size
        assert by[f"{fmt} int8-dynamic"].size <= 0.4 * by[f"{fmt} fp32"].size
        # 4 bits a value and a scale a row: well under int8.
        assert by[f"{fmt} int4-rows"].size <= 0.75 * by[f"{fmt} int8-dynamic"].size
        assert by[f"{fmt} int4"].size <= by[f"{fmt} int4-rows"].size
    assert all(r.ece is not None and r.log_loss_increase is not None for r in auto.variants)


def test_ort_graph_is_lean_and_as_small_as_litert(auto):
    by = {r.name: r for r in auto.variants}
    for precision in ("int8-dynamic", "int8"):
        assert by[f"ort {precision}"].size <= 1.1 * by[f"tflite {precision}"].size
    graphs = [a.extra["graph"] for a in auto.manifest.artifacts if a.format == "ort"]
    g = graphs[0]
    assert all(x == g for x in graphs)
    # Two embeddings, each index wrapped by Keras in where(id < 0, id + rows, id): 8 nodes each.
    assert g["index_wraps"] == 2 and g["nodes_before"] - g["nodes_after"] >= 16
    for a in auto.manifest.artifacts:
        if a.format == "ort":
            assert 0 < a.extra["nodes"] <= g["nodes_after"] + 8


def test_auto_keeps_the_smallest_variant_within_budget(auto):
    dynamic = {a.format: a for a in auto.manifest.artifacts if a.batch == "dynamic"}
    for fmt in ("tflite", "ort"):
        ok = [r for r in auto.variants if r.format == fmt and r.status != "rejected"]
        best = min(ok, key=lambda r: r.size)
        assert best.status == "kept" and dynamic[fmt].precision == best.precision
        assert all(r.status == "dropped" for r in ok if r is not best)


def test_batch_buckets_for_accelerators(auto):
    for fmt in ("tflite", "ort"):
        fixed = sorted(a.batch for a in auto.manifest.artifacts if a.format == fmt and a.batch != "dynamic")
        assert fixed == [1, 16]
    for a in auto.manifest.artifacts:
        if a.batch != "dynamic":
            assert a.accelerators == ("gpu", "npu", "cpu")
            assert a.extra["max_abs_diff_vs_dynamic"] < 0.05
        if a.format == "ort":
            assert a.extra["required_operators"].endswith("required_operators.config")


def test_package_scores_raw_requests_like_the_source(auto, keras_models, ctr_data, signing_key):
    rows = {k: ctr_data.eval[k][:64] for k in RAW}  # includes out-of-vocabulary users
    expected = _source_scores(keras_models, rows)
    kept = {r.format: r for r in auto.variants if r.status == "kept"}
    for backend, fmt in (("litert", "tflite"), ("onnxruntime", "ort")):
        with EdgeModel.load(auto.path, [signing_key.public_key()], backend=backend, accelerator="cpu") as m:
            got = m.scores(m.predict(rows))
            assert np.max(np.abs(got - expected)) <= kept[fmt].max_abs_diff + 1e-4
            assert m.warmup() == 8


def test_report_distribution_and_warmup_are_in_the_manifest(auto, signing_key):
    m = Package.open(auto.path, signing_key.public_key()).manifest
    assert len(m.eval_report["variants"]) == len(auto.variants) >= 11
    assert m.eval_report["max_log_loss_increase"] == 0.01 and m.eval_report["source"]["ece"] > 0
    assert m.eval_report["source"]["rows"] == 3000
    assert m.score_distribution["count"] == 3000
    assert m.producer["source"] == "keras"
    assert m.artifacts[0].format == "tflite"


def test_id_pruning_maps_rare_ids_to_the_oov_row(keras_models, ctr_data, signing_key, tmp_path):
    opts = ConvertOptions(quantize="none", formats=("tflite",), min_id_count=5, id_counts=ctr_data.counts_path)
    res = convert(keras_models.lookup_path, tmp_path / "ids.edgepkg", signing_key, opts)
    [rep] = res.manifest.eval_report["id_pruning"]
    counts = {int(k): int(c) for k, c in zip(*np.unique(ctr_data.train["item"], return_counts=True), strict=True)}
    frequent = sorted(k for k, c in counts.items() if c >= 5)
    assert rep["input"] == "item" and rep["ids_kept"] == len(frequent) and rep["rows_after"] == len(frequent) + 1
    assert rep["rows_before"] == 1001 and rep["rows_after"] < 400
    pkg = Package.open(res.path, signing_key.public_key())
    assert sorted(pkg.vocabulary("vocab/item.json").keys) == frequent

    rows = {k: ctr_data.eval[k][:400] for k in RAW}
    rare = np.array([counts.get(int(i), 0) < 5 for i in rows["item"]])
    assert rare.any() and (~rare).any()
    as_oov = {**rows, "item": np.where(rare, -1, rows["item"])}  # -1 is no item: the OOV row
    expected = _source_scores(keras_models, as_oov)
    with EdgeModel.load(pkg, backend="litert", accelerator="cpu") as m:
        got = m.scores(m.predict(rows))
    assert np.max(np.abs(got - expected)) < 1e-5


def test_budget_rejects_a_variant_and_writes_nothing(keras_models, ctr_data, signing_key, tmp_path):
    # 97% of the dense weights zeroed without fine-tuning: the guard must refuse it.
    opts = ConvertOptions(quantize="none", formats=("tflite",), prune=0.97, eval=ctr_data.eval_path)
    out = tmp_path / "pruned.edgepkg"
    budget = r"tflite: no variant within the accuracy budget \(best: fp32: AUC drop 0\.\d+ > --max-auc-drop 0\.002"
    with pytest.raises(AccuracyBudgetError, match=budget):
        convert(keras_models.lookup_path, out, signing_key, opts)
    assert list(tmp_path.iterdir()) == []
