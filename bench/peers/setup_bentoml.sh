#!/usr/bin/env bash
# BentoML in its own virtual environment, for bench/edge_server.py only (never a
# project dependency): the peer the edge server is compared with.
set -euo pipefail
VENV="${1:-/tmp/bentoml-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q 'bentoml==1.4.40' 'onnxruntime==1.32.0' numpy
"$VENV/bin/python" -c 'import bentoml, onnxruntime; print("bentoml", bentoml.__version__, "onnxruntime", onnxruntime.__version__)'
