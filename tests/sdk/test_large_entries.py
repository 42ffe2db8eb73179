"""Large entries: read in chunks into untouched memory, and handed to the engines as a memfd.

The thresholds are lowered so the small test package takes the large-entry paths.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zipfile

import numpy as np
import pytest

from edgerec.sdk import EdgeModel, IntegrityError, Package, PackageError, encrypt_package
from edgerec.sdk import _zip as zip_mod
from edgerec.sdk.runtime import base as runtime_base
from edgerec.sdk.testing import sample_inputs as ctr_inputs


@pytest.fixture
def chunked(monkeypatch):
    monkeypatch.setattr(zip_mod, "CHUNK", 256)


@pytest.fixture
def via_memfd(monkeypatch):
    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd_create is Linux-only")
    monkeypatch.setattr(runtime_base, "_MEMFD_MIN", 1)


def _fd_links() -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed in between (listdir's own descriptor, for one)
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return links


def flip(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 1]) + body[at + 1:]


def stored(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.read(name)


def test_large_artifact_is_a_read_only_view_of_the_exact_bytes(chunked, onnx_pkg, signing_key):
    pkg = Package.open(onnx_pkg, [signing_key.public_key()])
    art = pkg.stored_bytes("model.onnx")
    assert isinstance(art, memoryview) and art.readonly
    assert bytes(art) == stored(onnx_pkg, "model.onnx")
    # Non-artifact files come back as bytes whatever their size.
    items = pkg.file_bytes("items.npz")
    assert type(items) is bytes and items == stored(onnx_pkg, "items.npz")
    assert pkg.item_table()["item_id"].tolist() == list(range(80))


def test_large_entry_header_lie_is_refused(chunked, onnx_pkg, signing_key):
    data = bytearray(onnx_pkg)
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"model.onnx"))
    struct.pack_into("<I", data, cd + 24, 1000)  # central directory: 1,000 bytes, far fewer than stored
    with pytest.raises(PackageError, match="model.onnx"):
        Package.open(bytes(data), [signing_key.public_key()])


def test_large_entry_changed_byte_is_refused(chunked, onnx_pkg, signing_key):
    items = [(n, stored(onnx_pkg, n)) for n in zipfile.ZipFile(io.BytesIO(onnx_pkg)).namelist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, body in items:
            zf.writestr(name, flip(body, 500) if name == "model.onnx" else body)
    with pytest.raises(IntegrityError, match="model.onnx"):
        Package.open(buf.getvalue(), [signing_key.public_key()])


def test_model_through_a_memfd_scores_as_from_bytes(chunked, via_memfd, onnx_pkg, signing_key):
    model = EdgeModel.load(onnx_pkg, [signing_key.public_key()], backend="onnxruntime")
    inputs, ref = ctr_inputs(7)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, rtol=1e-5)
    model.close()
    assert not [link for link in _fd_links() if "edgerec-model" in link], "the memfd was not closed"


def test_encrypted_large_artifact_decrypts_from_a_view(chunked, via_memfd, onnx_pkg, signing_key, node_key):
    enc = encrypt_package(Package.open(onnx_pkg, [signing_key.public_key()]), {"node-a": node_key.public_key()})
    model = EdgeModel.load(enc.data, [signing_key.public_key()], recipient_key=node_key, recipient_id="node-a",
                           backend="onnxruntime")
    inputs, ref = ctr_inputs(3)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["full_pkg", "bucket_only_pkg"])  # Interpreter; CompiledModel
def test_litert_through_a_memfd_scores_as_from_bytes(request, fixture, chunked, signing_key, monkeypatch):
    data = request.getfixturevalue(fixture)
    inputs, ref = ctr_inputs(5)
    from_bytes = EdgeModel.load(data, [signing_key.public_key()], backend="litert", accelerator="cpu")
    expected = from_bytes.predict(inputs)["score"].ravel()
    from_bytes.close()
    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd_create is Linux-only")
    monkeypatch.setattr(runtime_base, "_MEMFD_MIN", 1)
    model = EdgeModel.load(data, [signing_key.public_key()], backend="litert", accelerator="cpu")
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, ref, atol=0.05)  # int8 against the float reference
    model.close()
    assert not [link for link in _fd_links() if "edgerec-model" in link], "the memfd was not closed"
