"""EdgeModel on both backends: outputs, buckets, accelerators, ranking, threads, close."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from edgerec.sdk import EdgeModel, EdgeRecError, ModelClosedError
from edgerec.sdk.testing import sample_inputs as ctr_inputs


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
def test_round_trip_matches_source(full_pkg, signing_key, backend):
    model = EdgeModel.load(full_pkg, [signing_key.public_key()], backend=backend, accelerator="cpu")
    assert model.info.backend == backend and model.info.accelerator == "cpu"
    inputs, ref = ctr_inputs(37)
    out = model.predict(inputs)["score"]
    assert out.shape == (37, 1)
    np.testing.assert_allclose(out.ravel(), ref, atol=1e-5)


def test_buckets_pad_and_chunk(bucket_only_pkg, signing_key):
    model = EdgeModel.load(bucket_only_pkg, [signing_key.public_key()], accelerator="cpu")
    assert model.info.batch_buckets == (4, 16)
    for n in (1, 3, 4, 5, 16, 37):
        inputs, ref = ctr_inputs(n, seed=n)
        np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, atol=1e-5)


@pytest.mark.parametrize("backend", ["litert", "onnxruntime"])
@pytest.mark.parametrize("accelerator", ["gpu", "npu"])
def test_accelerator_falls_back_to_cpu_and_says_so(full_pkg, signing_key, backend, accelerator, caplog):
    caplog.set_level(logging.WARNING, logger="edgerec.sdk")
    model = EdgeModel.load(full_pkg, [signing_key.public_key()], backend=backend, accelerator=accelerator)
    assert model.info.requested_accelerator == accelerator
    assert model.info.accelerator == "cpu"
    assert model.info.fallback_reason and accelerator in model.info.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running on the CPU" in warnings[0].getMessage()
    inputs, ref = ctr_inputs(6)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, atol=1e-5)


def test_auto_accelerator_is_quiet(onnx_pkg, signing_key, caplog):
    caplog.set_level(logging.WARNING, logger="edgerec.sdk")
    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    assert model.info.accelerator == "cpu" and model.info.fallback_reason is None
    assert not caplog.records


def test_rank_orders_by_reference_score(onnx_pkg, signing_key, ctr_weights):
    from edgerec.sdk.testing import ctr_reference

    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    cands = [3, 17, 42, 5, 60, 11]
    ctx = [0.2, 0.5, 0.1, 0.9]
    ranked = model.rank({"user": "u7"}, cands, {"ctx": ctx}, top_k=4)
    ref = ctr_reference(ctr_weights, np.full(6, 7), np.array(cands), np.tile(np.float32(ctx), (6, 1))).ravel()
    want = [cands[i] for i in np.argsort(-ref)[:4]]
    assert [r.item for r in ranked] == want
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    np.testing.assert_allclose([r.score for r in ranked], np.sort(ref)[::-1][:4], atol=1e-5)


def test_rank_with_feature_rows_and_defaults(onnx_pkg, signing_key, ctr_weights):
    from edgerec.sdk.testing import ctr_reference

    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    ranked = model.rank({"user": "u2"}, [{"item_id": 9}, {"item_id": 4}])  # ctx defaults to 0.0
    ref = ctr_reference(ctr_weights, np.array([2, 2]), np.array([9, 4]), np.zeros((2, 4), np.float32)).ravel()
    assert {r.item: round(r.score, 5) for r in ranked} == {9: round(float(ref[0]), 5), 4: round(float(ref[1]), 5)}


def test_unknown_candidate_id(onnx_pkg, signing_key):
    from edgerec.sdk import InvalidInputError

    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    with pytest.raises(InvalidInputError, match="candidates: unknown item id 999"):
        model.rank({"user": "u1"}, [1, 999])


def test_concurrent_callers_get_their_own_answers(full_pkg, signing_key):
    model = EdgeModel.load(full_pkg, [signing_key.public_key()], backend="litert", accelerator="cpu")
    errors: list[str] = []

    def worker(seed: int) -> None:
        for i in range(30):
            inputs, ref = ctr_inputs(1 + (seed + i) % 9, seed=seed * 100 + i)
            got = model.predict(inputs)["score"].ravel()
            if not np.allclose(got, ref, atol=1e-5):
                errors.append(f"seed {seed} call {i}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_close_releases_and_refuses(onnx_pkg, signing_key):
    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    inputs, _ = ctr_inputs(2)
    model.predict(inputs)
    model.close()
    model.close()  # idempotent
    assert model.closed
    with pytest.raises(ModelClosedError):
        model.predict(inputs)


def test_close_waits_for_the_call_in_flight(onnx_pkg, signing_key):
    """close() returns only once the last running call has left (the idle event is set by that call)."""
    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()])
    model._enter()  # a call in flight, held open deterministically
    closer = threading.Thread(target=model.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # still waiting for the call
    model._leave()
    closer.join(10)
    assert not closer.is_alive() and model.closed
    model.close()  # a closed model with nothing running returns at once


def test_warmup_runs_the_package_samples(onnx_pkg, signing_key):
    assert EdgeModel.load(onnx_pkg, [signing_key.public_key()]).warmup() == 8


def test_no_runnable_artifact(onnx_pkg, signing_key):
    with pytest.raises(EdgeRecError, match="no artifact for backend litert"):
        EdgeModel.load(onnx_pkg, [signing_key.public_key()], backend="litert")


def test_ort_format_artifact(ctr_weights, signing_key, tmp_path):
    from edgerec.sdk.testing import ctr_builder, onnx_ctr, ort_format

    ort_bytes, ops = ort_format(onnx_ctr(ctr_weights), tmp_path)
    b = ctr_builder(ctr_weights, onnx=False)
    b.add_artifact("model.ort", ort_bytes, "ort", extra={"required_operators": "required_operators.config"})
    b.add_file("required_operators.config", ops, kind="ort_operators")
    model = EdgeModel.load(b.build(signing_key), [signing_key.public_key()])
    assert model.info.format == "ort"
    inputs, ref = ctr_inputs(10)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, atol=1e-5)
