"""Building, signing and verifying packages, and every tamper a reader must refuse."""

from __future__ import annotations

import ast
import contextlib
import gc
import io
import json
import sys
import threading
import zipfile

import pytest

from edgerec.sdk import (
    DuplicateEntryError,
    IntegrityError,
    OversizedEntryError,
    Package,
    PackageError,
    PackageLimits,
    SignatureError,
    UnsafeEntryError,
    UntrustedSignerError,
)
from edgerec.sdk.manifest import Manifest


def entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(items: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in items:
            zf.writestr(name, body)
    return buf.getvalue()


def replace_entry(data: bytes, name: str, body: bytes) -> bytes:
    return rezip([(n, body if n == name else b) for n, b in entries(data)])


def flip(body: bytes, at: int = 0) -> bytes:
    i = at % len(body)
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]


def test_round_trip_manifest(onnx_pkg, signing_key):
    pkg = Package.open(onnx_pkg, [signing_key.public_key()])
    m = pkg.manifest
    assert (m.name, m.version) == ("ctr", 1)
    assert [a.path for a in m.artifacts] == ["model.onnx"]
    art = m.artifacts[0]
    assert art.size == len(pkg.stored_bytes("model.onnx")) and len(art.sha256) == 64
    assert [(f.input, f.role, f.field) for f in m.features] == [
        ("user_id", "user", "user"), ("item_id", "item", "item_id"), ("ctx", "context", "ctx")]
    assert m.features[0].vocabulary == "vocab/user_id.json"
    assert m.features[1].id_range == (0, 79)
    assert pkg.vocabulary("vocab/user_id.json").lookup(["u1", "nope"])[0].tolist() == [1, 0]
    assert pkg.warmup()["item_id"].tolist() == list(range(8))
    assert m.score_distribution["count"] == 512
    assert Manifest.from_bytes(m.to_bytes()) == m
    assert pkg.signer == __import__("edgerec.sdk", fromlist=["key_id"]).key_id(signing_key.public_key())


def test_builds_are_reproducible_apart_from_time(ctr_weights, signing_key):
    from edgerec.sdk.testing import ctr_builder

    a = Package.open(ctr_builder(ctr_weights).build(signing_key), signing_key.public_key())
    b = Package.open(ctr_builder(ctr_weights).build(signing_key), signing_key.public_key())
    assert a.manifest.all_paths() == b.manifest.all_paths()


@pytest.mark.parametrize("target", ["model.onnx", "vocab/user_id.json", "items.npz", "warmup.npz"])
def test_flipped_byte_in_a_file_rezipped(onnx_pkg, signing_key, target):
    body = dict(entries(onnx_pkg))[target]
    bad = replace_entry(onnx_pkg, target, flip(body, len(body) // 2))
    with pytest.raises(IntegrityError, match=target):
        Package.open(bad, [signing_key.public_key()])


def test_flipped_byte_in_the_raw_zip_artifact(onnx_pkg, signing_key):
    # Without re-zipping, the zip's own CRC catches the change first.
    body = dict(entries(onnx_pkg))["model.onnx"]
    raw = rezip([(n, b) for n, b in entries(onnx_pkg)])
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        for n, b in entries(raw):
            zf.writestr(n, b)
    data = stored.getvalue()
    at = data.index(body[100:140]) + 10
    bad = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    with pytest.raises(IntegrityError, match="model.onnx"):
        Package.open(bad, [signing_key.public_key()])


def test_flipped_byte_in_manifest(onnx_pkg, signing_key):
    body = dict(entries(onnx_pkg))["manifest.json"]
    at = body.index(b'"version":1') + len(b'"version":')
    bad = replace_entry(onnx_pkg, "manifest.json", body[:at] + b"2" + body[at + 1 :])
    with pytest.raises(SignatureError, match="does not match"):
        Package.open(bad, [signing_key.public_key()])


def test_flipped_byte_in_signature(onnx_pkg, signing_key):
    doc = json.loads(dict(entries(onnx_pkg))["signature.json"])
    import base64

    sig = base64.b64decode(doc["signatures"][0]["sig"])
    doc["signatures"][0]["sig"] = base64.b64encode(flip(sig, 5)).decode()
    bad = replace_entry(onnx_pkg, "signature.json", json.dumps(doc).encode())
    with pytest.raises(SignatureError, match="does not match"):
        Package.open(bad, [signing_key.public_key()])


def test_signature_by_untrusted_key(onnx_pkg, other_key):
    with pytest.raises(UntrustedSignerError, match="no trusted key"):
        Package.open(onnx_pkg, [other_key.public_key()])


def test_missing_signature(onnx_pkg, signing_key):
    bad = rezip([(n, b) for n, b in entries(onnx_pkg) if n != "signature.json"])
    with pytest.raises(SignatureError, match="unsigned"):
        Package.open(bad, [signing_key.public_key()])


def test_any_of_several_trusted_keys(onnx_pkg, signing_key, other_key):
    assert Package.open(onnx_pkg, [other_key.public_key(), signing_key.public_key()]).manifest.name == "ctr"


@pytest.mark.parametrize("cut", [10, 0.5, -30])
def test_truncated_zip(onnx_pkg, signing_key, cut):
    n = int(len(onnx_pkg) * cut) if isinstance(cut, float) else cut
    with pytest.raises(PackageError, match="zip|truncated"):
        Package.open(onnx_pkg[:n], [signing_key.public_key()])


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/passwd", "a/../../b", "C:/x", "a\\b"])
def test_path_traversal_entry(onnx_pkg, signing_key, name):
    bad = rezip([*entries(onnx_pkg), (name, b"x")])
    with pytest.raises(UnsafeEntryError, match="unsafe path"):
        Package.open(bad, [signing_key.public_key()])


def test_unlisted_entry(onnx_pkg, signing_key):
    bad = rezip([*entries(onnx_pkg), ("extra.bin", b"x")])
    with pytest.raises(UnsafeEntryError, match="not listed"):
        Package.open(bad, [signing_key.public_key()])


def test_duplicate_entry(onnx_pkg, signing_key):
    items = entries(onnx_pkg)
    with pytest.warns(UserWarning, match="Duplicate"):
        bad = rezip([*items, ("model.onnx", b"other")])
    with pytest.raises(DuplicateEntryError, match="model.onnx"):
        Package.open(bad, [signing_key.public_key()])


def test_oversized_entry(onnx_pkg, signing_key):
    limits = PackageLimits(max_entry_size=1000)
    with pytest.raises(OversizedEntryError, match="over 1000"):
        Package.open(onnx_pkg, [signing_key.public_key()], limits)


def test_zip_bomb_ratio(onnx_pkg, signing_key):
    bomb = rezip([*entries(onnx_pkg)])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in entries(bomb):
            zf.writestr(n, b)
        zf.writestr("items2.npz", b"\0" * (64 * 1024 * 1024))
    with pytest.raises(OversizedEntryError, match="compression ratio"):
        Package.open(buf.getvalue(), [signing_key.public_key()])


def test_header_size_lie(onnx_pkg, signing_key):
    # A local/central header claiming fewer bytes than the stream holds.
    data = bytearray(onnx_pkg)
    body = dict(entries(onnx_pkg))["items.npz"]
    import struct

    # Patch the central directory's uncompressed size for items.npz to 10.
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"items.npz"))
    struct.pack_into("<I", data, cd + 24, 10)
    assert len(body) > 10
    with pytest.raises(PackageError):
        Package.open(bytes(data), [signing_key.public_key()])


def test_too_many_entries(onnx_pkg, signing_key):
    with pytest.raises(OversizedEntryError, match="entries"):
        Package.open(onnx_pkg, [signing_key.public_key()], PackageLimits(max_entries=3))


def test_non_canonical_manifest_is_refused(onnx_pkg, signing_key):
    from edgerec.sdk.package import sign_manifest

    body = dict(entries(onnx_pkg))["manifest.json"]
    pretty = json.dumps(json.loads(body), indent=1).encode()
    bad = rezip([(n, pretty if n == "manifest.json" else sign_manifest(pretty, [signing_key])
                  if n == "signature.json" else b) for n, b in entries(onnx_pkg)])
    with pytest.raises(PackageError, match="canonical"):
        Package.open(bad, [signing_key.public_key()])


def test_not_a_zip_and_missing_file(tmp_path, signing_key):
    with pytest.raises(PackageError, match="not a package"):
        Package.open(b"hello", [signing_key.public_key()])
    with pytest.raises(PackageError, match="cannot read"):
        Package.open(tmp_path / "nope.edgepkg", [signing_key.public_key()])


def test_write_is_atomic_and_complete(ctr_weights, signing_key, tmp_path):
    from edgerec.sdk.testing import ctr_builder

    path = ctr_builder(ctr_weights).write(tmp_path / "m.edgepkg", signing_key)
    assert Package.open(path, [signing_key.public_key()]).manifest.version == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.edgepkg"]


@pytest.mark.parametrize("name", ["../x", "a/b", "UPPER", "", "x" * 65])
def test_bad_package_names(name):
    from edgerec.sdk import PackageBuilder
    from edgerec.sdk.testing import ctr_signature

    with pytest.raises(PackageError, match="name"):
        PackageBuilder(name, 1, ctr_signature())


def test_threads_reading_a_packages_arrays_at_once(onnx_pkg, signing_key):
    """numpy parses .npy headers with ast.literal_eval; CPython 3.11 keeps the AST converter's
    depth in interpreter-wide state (gh-106905), so two threads converting at once fail with a
    SystemError (seen with twenty node daemons in one process). Here the two conversions are made
    to overlap for sure: a collection inside one parks it until the other is inside too, from
    another stack depth. Reads that take turns never overlap: the wait times out, both succeed."""
    pkg = Package.open(onnx_pkg, [signing_key.public_key()])
    overlap = threading.Barrier(2, timeout=1.0)
    parked = threading.local()

    def park_inside_the_parse(phase: str, info: dict) -> None:
        if phase == "start" and not getattr(parked, "done", False) and sys._getframe(1).f_code is ast.parse.__code__:
            parked.done = True
            with contextlib.suppress(threading.BrokenBarrierError):
                overlap.wait()

    def read_at_depth(depth: int, out: list) -> None:
        if depth:
            read_at_depth(depth - 1, out)
            return
        try:
            out.append(pkg.warmup()["item_id"].tolist())
        except Exception as exc:  # recorded for the assertion below
            out.append(f"{type(exc).__name__}: {exc}")

    results: list[list] = [[], []]
    threshold = gc.get_threshold()
    gc.callbacks.append(park_inside_the_parse)
    gc.set_threshold(1)
    try:
        threads = [threading.Thread(target=read_at_depth, args=(d, results[i])) for i, d in enumerate((0, 12))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(park_inside_the_parse)
    assert results == [[list(range(8))], [list(range(8))]]
