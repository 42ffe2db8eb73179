"""An unmodified standard Open Inference Protocol client (tritonclient[http]) against the server.

tritonclient 2.73 pins ml-dtypes<=0.5.4, which conflicts with the project's
TensorFlow, so it lives in its own virtual environment
(``bench/peers/setup_tritonclient.sh``); the test is skipped where that is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgerec.sdk import testing as demo

PYTHON = Path(os.environ.get("EDGEREC_TRITONCLIENT_PYTHON", "/tmp/tritonclient-venv/bin/python"))

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

c = http.InferenceServerClient(sys.argv[1])
out = {"live": c.is_server_live(), "ready": c.is_server_ready(), "model_ready": c.is_model_ready("ctr"),
       "server": c.get_server_metadata(), "meta": c.get_model_metadata("ctr", "1")}
def inputs(binary):
    xs = [http.InferInput("user_id", [3], "BYTES"), http.InferInput("item_id", [3], "INT64"),
          http.InferInput("ctx", [3, 4], "FP32")]
    xs[0].set_data_from_numpy(np.array([b"u1", b"u2", b"nobody"], dtype=np.object_), binary_data=binary)
    xs[1].set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64), binary_data=binary)
    xs[2].set_data_from_numpy(np.full((3, 4), 0.5, np.float32), binary_data=binary)
    return xs
out["binary"] = c.infer("ctr", inputs(True)).as_numpy("score").ravel().tolist()
res = c.infer("ctr", inputs(False), model_version="1", request_id="abc",
              outputs=[http.InferRequestedOutput("score", binary_data=False)])
out["json"] = res.as_numpy("score").ravel().tolist()
out["id"] = res.get_response()["id"]
try:
    c.infer("nope", inputs(True))
except InferenceServerException as exc:
    out["error"] = [exc.status(), exc.message()]
print(json.dumps(out))
"""


@pytest.mark.skipif(not PYTHON.exists(), reason="tritonclient venv missing: run bench/peers/setup_tritonclient.sh")
def test_tritonclient_http_works_unmodified(live):
    host = live.url.removeprefix("http://")
    r = subprocess.run([str(PYTHON), "-c", CLIENT, host], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server"]["name"] == "edgerec" and out["meta"]["inputs"][0]["datatype"] == "BYTES"
    ref = demo.ctr_reference(demo.ctr_weights(0), np.array([1, 2, 0]), np.array([1, 2, 3]),
                             np.full((3, 4), 0.5, np.float32)).ravel()
    np.testing.assert_allclose(out["binary"], ref, atol=1e-5)
    np.testing.assert_allclose(out["json"], ref, atol=1e-5)
    assert out["id"] == "abc"
    assert out["error"] == ["404", "model_not_found"]  # tritonclient shows the "error" field
