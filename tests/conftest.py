"""Fixtures shared by every area: keys, the demo CTR model and its packages.

Models are built here, in the test session, from small Keras and ONNX graphs;
no binary is checked in.
"""

from __future__ import annotations

import os

# pytest-xdist's workers start with COLUMNS=80 and LINES set; rich fixes a console's width at creation when
# COLUMNS is there, so CLI tables would wrap at 80 whatever a test sets later. A worker sees what a plain
# ``pytest`` process sees.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.sdk import testing as demo

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(env_var: str, what: str) -> str:
    """The URL of a service the suite needs; in CI a missing one fails the run."""
    url = os.environ.get(env_var)
    if not url:
        if IN_CI:
            pytest.fail(f"{env_var} is not set: .ci/run must start {what}")
        pytest.skip(f"{what} not available (set {env_var})")
    return url


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def node_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture(scope="session")
def ctr_weights() -> dict[str, np.ndarray]:
    return demo.ctr_weights(seed=0)


@pytest.fixture(scope="session")
def onnx_pkg(ctr_weights, signing_key) -> bytes:
    """A signed package with one ONNX artifact (fast: no TensorFlow)."""
    return demo.ctr_builder(ctr_weights).build(signing_key)


@pytest.fixture(scope="session")
def full_pkg(ctr_weights, signing_key, tmp_path_factory) -> bytes:
    """LiteRT (dynamic + batch buckets 4 and 16) and ONNX artifacts of one model."""
    scratch = tmp_path_factory.mktemp("tflite")
    return demo.ctr_builder(ctr_weights, tflite_dir=scratch, buckets=(4, 16)).build(signing_key)


@pytest.fixture(scope="session")
def bucket_only_pkg(ctr_weights, signing_key, tmp_path_factory) -> bytes:
    """LiteRT fixed-batch artifacts only, so every call goes through padding."""
    scratch = tmp_path_factory.mktemp("buckets")
    b = demo.ctr_builder(ctr_weights, onnx=False)
    for n in (4, 16):
        b.add_artifact(f"model.b{n}.tflite", demo.keras_ctr_tflite(ctr_weights, scratch, n), "tflite",
                       batch=n, accelerators=("gpu", "cpu"))
    return b.build(signing_key)


@pytest.fixture
def nginx_binary() -> str:
    """Debian's nginx for the tests that start it; a failure where .ci/run named it, else a skip."""
    from support.nginx import ENV, find_nginx

    binary = find_nginx()
    if binary is None:
        if os.environ.get(ENV):
            pytest.fail(f"{ENV} is set but names no nginx")
        pytest.skip("no nginx (apt-get install nginx-light, as .ci/run does)")
    return binary
