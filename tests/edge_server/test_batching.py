"""The adaptive batcher, on a real model: merging, no delay when alone, deadlines, isolation, crashes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgerec.edge_server.batching import Batcher, BatcherCrashedError
from edgerec.sdk import testing as demo
from edgerec.sdk.errors import RuntimeBackendError
from edgerec.sdk.model import EdgeModel
from edgerec.sdk.wsgi_front import AppThreads


@pytest.fixture(scope="module")
def model(packages, trusted_key):
    with EdgeModel.load(packages["v1"], [trusted_key], threads=1) as m:
        yield m


def _rows(model, n, seed):
    inputs, _ = demo.sample_inputs(n, seed=seed)
    return model.encode(inputs)


class Recorder:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, rows, requests, waits):
        self.calls.append((rows, requests))


def test_concurrent_requests_merge_into_one_call(model):
    rec = Recorder()
    b = Batcher(model.run, max_batch=8, max_delay_s=1.0, observe=rec)
    parts = [_rows(model, 1, seed) for seed in range(8)]
    for _ in parts:
        b.arrive()  # all eight are on their way before any submits
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: b.submit(p, 1), parts))
    assert rec.calls == [(8, 8)]
    for p, out in zip(parts, results, strict=True):
        np.testing.assert_array_equal(out["score"], model.run(p)["score"])
    b.close()


def test_a_lone_request_is_not_delayed(model):
    rec = Recorder()
    b = Batcher(model.run, max_batch=64, max_delay_s=0.5, observe=rec)
    b.arrive()
    t0 = time.monotonic()
    b.submit(_rows(model, 1, 0), 1)
    assert time.monotonic() - t0 < 0.1 and rec.calls == [(1, 1)]
    b.close()


def test_a_request_that_fills_a_batch_runs_at_once(model):
    b = Batcher(model.run, max_batch=8, max_delay_s=0.5)
    b.arrive()
    b.arrive()  # someone else is on the way: a small request would wait for it
    t0 = time.monotonic()
    out = b.submit(_rows(model, 8, 1), 8)
    assert time.monotonic() - t0 < 0.1 and out["score"].shape == (8, 1)
    b.depart()
    b.close()


def test_deadline_flushes_when_others_never_come(model):
    rec = Recorder()
    b = Batcher(model.run, max_batch=64, max_delay_s=0.1, observe=rec)
    b.arrive()  # a request that never submits
    b.arrive()
    t0 = time.monotonic()
    b.submit(_rows(model, 2, 2), 2)
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 0.5 and rec.calls == [(2, 1)]
    b.depart()
    b.close()


def test_a_bad_request_does_not_fail_its_neighbours(model):
    rec = Recorder()
    b = Batcher(model.run, max_batch=4, max_delay_s=1.0, observe=rec)
    parts = [_rows(model, 1, s) for s in range(4)]
    bad = dict(parts[2])
    bad["item_id"] = np.array([999], np.int64)  # past the embedding table: ONNX Runtime fails
    parts[2] = bad
    for _ in parts:
        b.arrive()

    def call(p):
        try:
            return b.submit(p, 1)
        except RuntimeBackendError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, parts))
    assert isinstance(results[2], RuntimeBackendError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i]["score"], model.run(parts[i])["score"])
    assert rec.calls == [(4, 4)]
    b.close()


def test_a_crashed_batcher_fails_everything_pending_and_carries_on(model):
    entered, release = threading.Event(), threading.Event()
    boom = [True]

    def run(arrays):
        entered.set()
        release.wait(5)
        return model.run(arrays)

    def observe(rows, requests, waits):
        if boom and boom.pop():
            raise RuntimeError("observer bug")

    b = Batcher(run, max_batch=100, max_delay_s=0.01, observe=observe)
    b.arrive()  # a phantom keeps the first request queued until its deadline
    outcomes: dict[str, object] = {}

    def submit(key, seed):
        b.arrive()
        try:
            outcomes[key] = b.submit(_rows(model, 1, seed), 1)
        except BatcherCrashedError as exc:
            outcomes[key] = exc

    first = threading.Thread(target=submit, args=("a", 0))
    first.start()
    assert entered.wait(5)
    others = [threading.Thread(target=submit, args=(k, i)) for i, k in enumerate("bc", 1)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 5
    while len(b._queue) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for t in (first, *others):
        t.join(5)
    assert "score" in outcomes["a"]
    assert isinstance(outcomes["b"], BatcherCrashedError) and isinstance(outcomes["c"], BatcherCrashedError)
    b.depart()
    submit("d", 4)
    assert "score" in outcomes["d"]
    b.close()


def _cpu_bound(seconds):
    def run(arrays):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return {"score": arrays["x"] * 2}

    return run


def _groups(b, n_groups, size=8):
    """Groups of concurrent requests that all arrive before any submits: the batcher is never idle."""
    with ThreadPoolExecutor(size) as pool:
        for _ in range(n_groups):
            parts = [{"x": np.full((1, 1), float(i))} for i in range(size)]
            for _ in parts:
                b.arrive()
            results = list(pool.map(lambda p: b.submit(p, 1), parts))
            assert [r["score"][0, 0] for r in results] == [2.0 * i for i in range(size)]


@pytest.mark.parametrize(("call_s", "merged"), [(0.0, False), (0.003, True)])
def test_a_model_cheaper_than_merging_is_not_batched(call_s, merged):
    """After one direct call has measured it, a model whose call costs less CPU than ``min_merge_call_s`` runs
    every request directly, however many arrive together; a costlier one is merged as before."""
    rec = Recorder()
    b = Batcher(_cpu_bound(call_s), max_batch=8, max_delay_s=1.0, observe=rec, min_merge_call_s=0.001)
    b.arrive()
    assert b.submit({"x": np.ones((1, 1))}, 1)["score"][0, 0] == 2  # alone: direct, and measured
    _groups(b, 1)
    if merged:
        assert rec.calls[1:] == [(8, 8)]
    else:
        assert rec.calls == [(1, 1)] * 9
    b.close()


def test_one_slow_call_under_load_does_not_start_merging_a_light_model():
    """The estimate is the least of the last calls: a light model's occasional slow call (a cold cache, the
    GIL's hand-offs counted as its CPU) does not make it look heavy; with a moving average it did, and
    every request after it under load was merged."""
    rec = Recorder()
    slow, calls = _cpu_bound(0.01), [0]

    def run(arrays):
        calls[0] += 1
        return slow(arrays) if calls[0] == 2 else {"score": arrays["x"] * 2}

    b = Batcher(run, max_batch=8, max_delay_s=1.0, observe=rec, min_merge_call_s=0.001)
    for _ in range(2):  # measured light, then the slow one
        b.arrive()
        b.submit({"x": np.ones((1, 1))}, 1)
    _groups(b, 4)
    assert rec.calls == [(1, 1)] * (2 + 4 * 8)
    b.close()


def test_merged_calls_tell_the_batcher_that_a_model_became_light():
    """Merged calls feed the estimate too (the model call alone): a model merged while heavy runs directly
    again once its calls are cheap, with no idle moment needed (nothing else would measure it under load)."""
    rec = Recorder()
    heavy, calls = _cpu_bound(0.003), [0]

    def run(arrays):
        calls[0] += 1
        return heavy(arrays) if calls[0] <= 20 else {"score": arrays["x"] * 2}

    b = Batcher(run, max_batch=8, max_delay_s=1.0, observe=rec, min_merge_call_s=0.001)
    for _ in range(16):  # heavy, measured directly
        b.arrive()
        b.submit({"x": np.ones((1, 1))}, 1)
    _groups(b, 24)
    later = rec.calls[16:]
    assert later[:4] == [(8, 8)] * 4  # merged while its calls cost 3 ms
    assert later[-8:] == [(1, 1)] * 8  # direct again by the end
    b.close()


def test_a_light_model_timed_at_load_is_never_merged_however_dear_its_calls_under_load():
    """``calibrate`` times one request alone before serving; that floor holds: calls that look dear under
    load (every one of them here, merged or not) do not make a light model look heavy."""
    rec = Recorder()
    slow, calls = _cpu_bound(0.003), [0]

    def run(arrays):
        calls[0] += 1
        return {"score": arrays["x"] * 2} if calls[0] <= 5 else slow(arrays)

    b = Batcher(run, max_batch=8, max_delay_s=1.0, observe=rec, min_merge_call_s=0.001)
    assert b.call_s == float("inf")
    floor = b.calibrate({"x": np.ones((1, 1))})
    assert calls[0] == 5 and floor < 0.001 and b.call_s == floor
    assert rec.calls == []  # timing is not serving
    _groups(b, 3)
    assert rec.calls == [(1, 1)] * 24
    assert b.call_s == floor
    # Served as with batching off: a request takes no batcher lock (one held elsewhere does not stall it).
    done = threading.Event()
    with b._lock:
        threading.Thread(target=lambda: (b.arrive(), b.submit({"x": np.ones((1, 1))}, 1), done.set())).start()
        assert done.wait(5)
    b.close()


def test_a_heavy_model_timed_at_load_is_merged_and_timed_briefly():
    """A model dearer than the line is merged from the first group; calibration stops once it has spent
    its budget, so a heavy model costs one or two calls at load, not five."""
    rec = Recorder()
    calls = [0]
    heavy = _cpu_bound(0.03)

    def run(arrays):
        calls[0] += 1
        return heavy(arrays)

    b = Batcher(run, max_batch=8, max_delay_s=1.0, observe=rec, min_merge_call_s=0.001)
    assert b.calibrate({"x": np.ones((1, 1))}) >= 0.03
    assert 1 <= calls[0] <= 2
    _groups(b, 2)
    assert (8, 8) in rec.calls
    b.close()


def test_requests_waiting_for_an_app_thread_join_the_batch():
    """Behind the HTTP front a request reaches the batcher only once it has one of the front's few app threads.
    Those still waiting for one count as on their way: with one app thread and eight requests queued for it,
    the batch holds all eight (it would flush each one alone if only arrived requests counted), and the
    first does not run directly though the model is idle."""
    rec = Recorder()
    b = Batcher(_cpu_bound(0.003), max_batch=8, max_delay_s=1.0, observe=rec)
    threads = AppThreads(slots=1, spare=8)
    results: dict[int, float] = {}
    done = threading.Semaphore(0)

    def request(i: int) -> None:
        b.arrive()
        results[i] = float(b.submit({"x": np.full((1, 1), float(i))}, 1)["score"][0, 0])
        done.release()

    hold = threading.Event()
    threads.submit(hold.wait)  # the only slot is busy until all eight are queued behind it
    for i in range(8):
        threads.submit(lambda i=i: request(i))
    hold.set()
    for _ in range(8):
        assert done.acquire(timeout=10)
    assert results == {i: 2.0 * i for i in range(8)}
    assert rec.calls == [(8, 8)], rec.calls
    b.close()


def test_a_lone_request_behind_the_front_runs_at_once():
    """Idle app threads (waiting for work with a slot) are not requests on their way: a lone request runs
    directly, without waiting out the batch delay."""
    rec = Recorder()
    b = Batcher(_cpu_bound(0.002), max_batch=8, max_delay_s=1.0, observe=rec)
    threads = AppThreads(slots=2, spare=4)
    time.sleep(0.1)  # both slots taken by idle threads
    took: list[float] = []
    done = threading.Event()

    def request() -> None:
        t0 = time.monotonic()
        b.arrive()
        b.submit({"x": np.ones((1, 1))}, 1)
        took.append(time.monotonic() - t0)
        done.set()

    for _ in range(3):
        done.clear()
        threads.submit(request)
        assert done.wait(10)
    assert rec.calls == [(1, 1)] * 3 and max(took) < 0.5, (rec.calls, took)
    b.close()


def test_server_merges_concurrent_requests(serve, infer_body):
    live = serve(max_batch=32, max_delay_ms=20, http_threads=16, batch_min_call_us=0)
    n = 16
    bodies = [demo.sample_inputs(1, seed=s) for s in range(n)]
    sent = 0
    with ThreadPoolExecutor(n) as pool:
        for _ in range(10):  # bounded: whether requests overlap depends on thread scheduling
            start = threading.Barrier(n)

            def call(i, start=start):
                start.wait()
                return live.http.post("/v2/models/ctr/infer", json=infer_body(bodies[i][0])).json()

            docs = list(pool.map(call, range(n)))
            sent += n
            for (_, ref), doc in zip(bodies, docs, strict=True):
                np.testing.assert_allclose(doc["outputs"][0]["data"], ref, atol=1e-5)
            batches = live.metric("edgerec_batch_size_requests_count", model="ctr", version="1")
            if batches < sent:
                break
    requests = live.metric("edgerec_batch_size_requests_sum", model="ctr", version="1")
    assert requests == sent and batches < requests  # some runtime calls carried several requests


def test_server_never_merges_a_model_timed_light_at_load(serve, infer_body):
    """With the default line (100 us), the demo model is timed at load on a warm-up row and found light:
    even 16 requests released together run as 16 calls (before, the first burst was merged, since no
    call had measured the model yet, and merged calls under load kept it merged)."""
    live = serve(max_batch=32, max_delay_ms=20, http_threads=16)
    n = 16
    bodies = [demo.sample_inputs(1, seed=s) for s in range(n)]
    with ThreadPoolExecutor(n) as pool:
        for _ in range(5):
            start = threading.Barrier(n)

            def call(i, start=start):
                start.wait()
                return live.http.post("/v2/models/ctr/infer", json=infer_body(bodies[i][0])).json()

            for (_, ref), doc in zip(bodies, pool.map(call, range(n)), strict=True):
                np.testing.assert_allclose(doc["outputs"][0]["data"], ref, atol=1e-5)
    calls = live.metric("edgerec_batch_size_requests_count", model="ctr", version="1")
    assert calls == live.metric("edgerec_batch_size_requests_sum", model="ctr", version="1") == 5 * n
