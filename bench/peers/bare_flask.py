"""The bare baseline: Flask with one route per case that only parses JSON and calls the runtime.

Usage: python bare_flask.py MODEL.onnx PORT HTTP_THREADS [waitress|granian]

On waitress (the default) with HTTP_THREADS threads; on granian with the
settings ``edgerec serve`` uses (one worker, the front of
edgerec.sdk.wsgi_front with its defaults: bodies read on the event loop, 2
app threads), HTTP_THREADS ignored.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
from flask import Flask, Response, request
from waitress import serve

path, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
app = Flask(__name__)


@app.post("/infer")
def infer() -> Response:
    d = json.loads(request.get_data())
    feeds = {"user_id": np.asarray(d["user_id"], np.int64), "item_id": np.asarray(d["item_id"], np.int64),
             "ctx": np.asarray(d["ctx"], np.float32)}
    score = sess.run(["score"], feeds)[0]
    return Response(json.dumps({"score": score.ravel().tolist()}), mimetype="application/json")


@app.post("/rank")
def rank() -> Response:
    d = json.loads(request.get_data())
    items = np.asarray(d["candidates"], np.int64)
    n = len(items)
    feeds = {"user_id": np.full(n, d["user_id"], np.int64), "item_id": items,
             "ctx": np.broadcast_to(np.asarray(d["ctx"], np.float32), (n, 4)).copy()}
    scores = sess.run(["score"], feeds)[0].ravel()
    order = np.argsort(-scores, kind="stable")[: d.get("top_k", n)]
    out = [{"item": int(items[i]), "score": float(scores[i]), "rank": r + 1} for r, i in enumerate(order)]
    return Response(json.dumps({"items": out}), mimetype="application/json")


def factory() -> object:
    """granian's target: each worker imports this module (a session of its own) and takes the app."""
    from edgerec.sdk.wsgi_front import WSGIFront

    return WSGIFront(app.wsgi_app, lambda path: 1 << 20)


if __name__ == "__main__":
    if sys.argv[4:5] == ["granian"]:
        from edgerec.sdk.http_server import HttpSettings, build_granian

        build_granian("bare_flask:factory", HttpSettings(port=port)).serve()
    else:
        serve(app, host="127.0.0.1", port=port, threads=threads, ident="bare")
