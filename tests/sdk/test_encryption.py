"""HPKE key wrapping and AES-GCM artifact encryption."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec.sdk import (
    DecryptionError,
    EdgeModel,
    Envelope,
    IntegrityError,
    Package,
    Recipient,
    add_envelopes,
    encrypt_package,
    seal_data_key,
)
from edgerec.sdk.encryption import decrypt_artifact, open_envelope
from edgerec.sdk.testing import sample_inputs as ctr_inputs


@pytest.fixture(scope="module")
def encrypted(onnx_pkg, signing_key, node_key):
    pkg = Package.open(onnx_pkg, [signing_key.public_key()])
    return encrypt_package(pkg, {"node-a": node_key.public_key()})


def test_ciphertext_is_not_plaintext(encrypted, onnx_pkg, signing_key):
    plain = Package.open(onnx_pkg, [signing_key.public_key()]).stored_bytes("model.onnx")
    enc = Package.open(encrypted.data, [signing_key.public_key()])
    assert enc.encrypted and enc.manifest == Package.open(onnx_pkg, [signing_key.public_key()]).manifest
    ct = enc.stored_bytes("model.onnx")
    assert len(ct) == len(plain) + 16 and plain[64:128] not in ct


def test_recipient_decrypts_and_scores(encrypted, signing_key, node_key):
    model = EdgeModel.load(encrypted.data, [signing_key.public_key()], recipient_key=node_key,
                           recipient_id="node-a", backend="onnxruntime")
    inputs, ref = ctr_inputs(5)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, rtol=1e-5)


def test_encrypted_package_needs_a_key(encrypted, signing_key):
    with pytest.raises(DecryptionError, match="encrypted"):
        EdgeModel.load(encrypted.data, [signing_key.public_key()])


def test_other_recipient_fails(encrypted, signing_key):
    stranger = X25519PrivateKey.generate()
    pkg = Package.open(encrypted.data, [signing_key.public_key()])
    # Claiming node-a's id with another key: the envelope does not open.
    with pytest.raises(DecryptionError, match="does not open"):
        decrypt_artifact(pkg, "model.onnx", Recipient("node-a", stranger))
    # Its own id: there is no envelope for it.
    with pytest.raises(DecryptionError, match="no key envelope"):
        decrypt_artifact(pkg, "model.onnx", Recipient("node-b", stranger))


@pytest.mark.parametrize("field,value", [("recipient", "node-b"), ("package", "other"),
                                          ("version", 2), ("artifact", "x.onnx")])
def test_changed_info_fails(encrypted, node_key, field, value):
    env = seal_data_key(encrypted.data_keys["model.onnx"], "node-a", node_key.public_key(), "ctr", 1, "model.onnx")
    coords = {"recipient": "node-a", "package": "ctr", "version": 1, "artifact": "model.onnx"}
    coords[field] = value
    with pytest.raises(DecryptionError, match="does not open"):
        open_envelope(env, Recipient(coords["recipient"], node_key), coords["package"], coords["version"],
                      coords["artifact"])
    assert len(open_envelope(env, Recipient("node-a", node_key), "ctr", 1, "model.onnx")) == 32


def _replace(data: bytes, name: str, body: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for i in src.infolist():
            dst.writestr(i.filename, body if i.filename == name else src.read(i))
    return buf.getvalue()


def test_flipped_ciphertext_byte(encrypted, signing_key, node_key):
    with zipfile.ZipFile(io.BytesIO(encrypted.data)) as zf:
        ct = zf.read("model.onnx")
    bad = _replace(encrypted.data, "model.onnx", ct[:50] + bytes([ct[50] ^ 1]) + ct[51:])
    # The ciphertext hash in encryption.json catches it before decryption...
    with pytest.raises(IntegrityError, match="model.onnx"):
        Package.open(bad, [signing_key.public_key()])
    # ...and GCM catches it even when that hash is rewritten to match.
    import hashlib
    import json

    with zipfile.ZipFile(io.BytesIO(bad)) as zf:
        doc = json.loads(zf.read("encryption.json"))
    flipped = ct[:50] + bytes([ct[50] ^ 1]) + ct[51:]
    doc["artifacts"]["model.onnx"]["sha256"] = hashlib.sha256(flipped).hexdigest()
    bad2 = _replace(bad, "encryption.json", json.dumps(doc).encode())
    pkg = Package.open(bad2, [signing_key.public_key()])
    with pytest.raises(DecryptionError, match="does not authenticate"):
        decrypt_artifact(pkg, "model.onnx", Recipient("node-a", node_key))


def test_late_recipient_gets_envelope(encrypted, signing_key):
    late = X25519PrivateKey.generate()
    env = seal_data_key(encrypted.data_keys["model.onnx"], "node-late", late.public_key(), "ctr", 1, "model.onnx")
    data = add_envelopes(encrypted.data, [Envelope.from_bytes(env.to_bytes())])
    model = EdgeModel.load(data, [signing_key.public_key()], recipient_key=late, recipient_id="node-late")
    inputs, ref = ctr_inputs(3)
    np.testing.assert_allclose(model.predict(inputs)["score"].ravel(), ref, rtol=1e-5)
    # Passing the envelope separately works too, with the shared ciphertext untouched.
    model2 = EdgeModel.load(encrypted.data, [signing_key.public_key()], recipient_key=late,
                            recipient_id="node-late", envelopes=[env])
    assert model2.info.backend == "onnxruntime"


def test_ciphertext_is_shared_by_all_recipients(onnx_pkg, signing_key):
    pkg = Package.open(onnx_pkg, [signing_key.public_key()])
    keys = {f"n{i}": X25519PrivateKey.generate().public_key() for i in range(3)}
    enc = encrypt_package(pkg, keys)
    p = Package.open(enc.data, [signing_key.public_key()])
    assert len(p.envelope_entries()) == 3
    for i in range(3):
        env = next(Envelope.from_bytes(b) for b in p.envelope_entries().values()
                   if Envelope.from_bytes(b).recipient == f"n{i}")
        assert len(env.sealed) == 32 + 32 + 16  # enc || wrapped key || tag


def test_no_plaintext_model_on_disk(encrypted, signing_key, node_key, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    tempfile.tempdir = None
    try:
        EdgeModel.load(encrypted.data, [signing_key.public_key()], recipient_key=node_key, recipient_id="node-a")
    finally:
        tempfile.tempdir = None
    assert list(tmp_path.iterdir()) == []
