"""BentoML peer for bench/edge_server.py: the same ONNX model behind BentoML's adaptive batching.

Runs only in the BentoML virtual environment (bench/peers/setup_bentoml.sh):
``EDGEREC_BENCH_ONNX=model.onnx bentoml serve bento_service:CTR --port PORT``.
BentoML's batchable APIs take one batched argument, so a request is an array
of rows ``[user_id, item_id, ctx0..ctx3]``.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=1)
class CTR:
    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(os.environ["EDGEREC_BENCH_ONNX"], opts,
                                         providers=["CPUExecutionProvider"])

    def _score(self, rows: np.ndarray) -> np.ndarray:
        feeds = {"user_id": rows[:, 0].astype(np.int64), "item_id": rows[:, 1].astype(np.int64),
                 "ctx": np.ascontiguousarray(rows[:, 2:6], dtype=np.float32)}
        return self.sess.run(["score"], feeds)[0].ravel()

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=2000)
    def infer(self, rows: np.ndarray) -> np.ndarray:
        return self._score(rows)

    @bentoml.api(batchable=True, max_batch_size=3200, max_latency_ms=2000)
    def rank(self, rows: np.ndarray) -> np.ndarray:
        return self._score(rows)
