#!/usr/bin/env bash
# A separate virtual environment with the standard Open Inference Protocol client
# (tritonclient[http]) for tests/edge_server/test_oip_client.py. Not a project
# dependency: tritonclient 2.73 pins ml-dtypes<=0.5.4, which conflicts with the
# TensorFlow in the project's environment.
set -euo pipefail
VENV="${1:-/tmp/tritonclient-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q 'tritonclient[http]==2.73.0'
"$VENV/bin/python" -c 'import tritonclient.http, importlib.metadata as m; print("tritonclient", m.version("tritonclient"))'
