"""The package reader verifies before it reads: bounded work on untrusted files, nothing unlisted.

Work is measured in bytes read through a counting file, not in wall time, so
the bounds hold on any machine.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerec.sdk import (
    EdgeModel,
    OversizedEntryError,
    Package,
    PackageError,
    PackageLimits,
    SignatureError,
    UnsafeEntryError,
    UntrustedSignerError,
    encrypt_package,
)
from edgerec.sdk import _zip as zip_mod
from edgerec.sdk.cli.main import cli
from edgerec.sdk.encryption import Envelope, add_envelopes, seal_data_key
from edgerec.sdk.keys import public_pem
from edgerec.sdk.package import read_unverified_manifest, sign_manifest

BIG = 10 * 1024 * 1024
# What a reader may read of a 10 MB package it does not trust: the end record, the directory
# and the two small metadata entries (about 4 KiB for the test package).
UNTRUSTED_BUDGET = 16 * 1024


class CountingFile(io.BytesIO):
    """A file that counts the bytes read from it and remembers the largest single read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0
        self.largest = 0
        self.ranges: list[tuple[int, int]] = []

    def read(self, n: int | None = -1) -> bytes:
        at = self.tell()
        out = super().read(n)
        self.read_bytes += len(out)
        self.largest = max(self.largest, len(out))
        self.ranges.append((at, at + len(out)))
        return out

    def touched(self, start: int, end: int) -> bool:
        return any(a < end and start < b for a, b in self.ranges)


def entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(items: list[tuple[str, bytes]], stored: bool = False) -> bytes:
    buf = io.BytesIO()
    kind = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buf, "w", compression=kind) as zf:
        for name, body in items:
            zf.writestr(name, body)
    return buf.getvalue()


@pytest.fixture(scope="module")
def junk() -> bytes:
    return os.urandom(BIG)  # incompressible: no ratio check trips


# -- bounded work before the signature -----------------------------------------------


def test_random_10mb_file_reads_only_its_tail(signing_key, junk):
    fh = CountingFile(junk)
    with pytest.raises(PackageError, match="not a package"):
        Package.open(fh, [signing_key.public_key()])
    assert fh.read_bytes <= 22 + (64 * 1024 + 22) and not fh.touched(0, BIG - 64 * 1024 - 22)


def test_unsigned_10mb_package_reads_no_artifact(onnx_pkg, signing_key, junk):
    items = [(n, b) for n, b in entries(onnx_pkg) if n != "signature.json"] + [("blob.bin", junk)]
    fh = CountingFile(rezip(items, stored=True))
    with pytest.raises(SignatureError, match="unsigned"):
        Package.open(fh, [signing_key.public_key()])
    assert fh.read_bytes < UNTRUSTED_BUDGET and fh.largest < UNTRUSTED_BUDGET


def test_foreign_signature_reads_neither_manifest_nor_artifacts(onnx_pkg, signing_key, other_key, junk):
    manifest = dict(entries(onnx_pkg))["manifest.json"]
    data = rezip([*entries(onnx_pkg), ("blob.bin", junk)], stored=True)
    fh = CountingFile(data)
    with pytest.raises(UntrustedSignerError):
        Package.open(fh, [other_key.public_key()])
    assert fh.read_bytes < UNTRUSTED_BUDGET
    at = data.index(manifest)
    assert not fh.touched(at, at + len(manifest)), "the manifest was read though no trusted key signed it"
    at = data.index(junk[:4096])
    assert not fh.touched(at, at + len(junk))


def test_signed_package_with_an_unlisted_10mb_entry_is_refused_before_reading_it(onnx_pkg, signing_key, junk):
    fh = CountingFile(rezip([*entries(onnx_pkg), ("extra.bin", junk)], stored=True))
    with pytest.raises(UnsafeEntryError, match="not listed"):
        Package.open(fh, [signing_key.public_key()])
    assert fh.read_bytes < UNTRUSTED_BUDGET


def test_a_path_is_not_read_whole_before_it_is_trusted(onnx_pkg, signing_key, junk, tmp_path, monkeypatch):
    items = [(n, b) for n, b in entries(onnx_pkg) if n != "signature.json"] + [("blob.bin", junk)]
    path = tmp_path / "unsigned.edgepkg"
    path.write_bytes(rezip(items, stored=True))
    opened: list[CountingFile] = []

    def counting_open(file, mode="r", *args, **kw):
        assert mode == "rb"
        with open(file, "rb") as real:
            fh = CountingFile(real.read())
        opened.append(fh)
        return fh

    monkeypatch.setattr(zip_mod, "open", counting_open, raising=False)
    with pytest.raises(SignatureError, match="unsigned"):
        Package.open(path, [signing_key.public_key()])
    assert len(opened) == 1 and opened[0].read_bytes < UNTRUSTED_BUDGET


def test_large_zip_directory_is_refused_before_it_is_read(onnx_pkg, signing_key):
    items = [*entries(onnx_pkg)] + [(f"pad/{i:04d}-" + "x" * 200, b"") for i in range(4000)]
    fh = CountingFile(rezip(items, stored=True))
    with pytest.raises(OversizedEntryError, match="directory"):
        Package.open(fh, [signing_key.public_key()], PackageLimits(max_directory_size=64 * 1024))
    assert fh.read_bytes <= 22  # the end record alone


def test_the_unverified_manifest_is_read_within_the_same_bounds(onnx_pkg, signing_key, junk):
    """What an edge server peeks at in its model folder: the manifest alone, never an artifact."""
    items = [(n, b) for n, b in entries(onnx_pkg) if n != "signature.json"] + [("blob.bin", junk)]
    fh = CountingFile(rezip(items, stored=True))
    manifest = read_unverified_manifest(fh)
    assert manifest.to_bytes() == dict(entries(onnx_pkg))["manifest.json"]
    assert fh.read_bytes < UNTRUSTED_BUDGET and fh.largest < UNTRUSTED_BUDGET
    fh = CountingFile(junk)
    with pytest.raises(PackageError, match="not a package"):
        read_unverified_manifest(fh)
    assert fh.read_bytes <= 22 + (64 * 1024 + 22) and not fh.touched(0, BIG - 64 * 1024 - 22)
    fh = CountingFile(rezip([*entries(onnx_pkg)] + [(f"pad/{i:04d}-" + "x" * 200, b"") for i in range(4000)]))
    with pytest.raises(OversizedEntryError, match="directory"):
        read_unverified_manifest(fh, PackageLimits(max_directory_size=64 * 1024))
    assert fh.read_bytes <= 22
    no_manifest = rezip([(n, b) for n, b in entries(onnx_pkg) if n != "manifest.json"])
    with pytest.raises(PackageError, match="no manifest.json"):
        read_unverified_manifest(no_manifest)
    with pytest.raises(OversizedEntryError, match="manifest.json"):
        read_unverified_manifest(onnx_pkg, PackageLimits(max_manifest_size=64))


# -- signature.json is bounded -----------------------------------------------------------


def test_oversized_signature_file(onnx_pkg, signing_key):
    sig = json.loads(dict(entries(onnx_pkg))["signature.json"])
    sig["padding"] = "x" * 70_000
    bad = rezip([(n, json.dumps(sig).encode() if n == "signature.json" else b) for n, b in entries(onnx_pkg)])
    with pytest.raises(OversizedEntryError, match="signature.json"):
        Package.open(bad, [signing_key.public_key()])


def test_too_many_signatures(onnx_pkg, signing_key, other_key):
    manifest = dict(entries(onnx_pkg))["manifest.json"]
    many = sign_manifest(manifest, [other_key] * 16 + [signing_key])
    bad = rezip([(n, many if n == "signature.json" else b) for n, b in entries(onnx_pkg)])
    with pytest.raises(SignatureError, match="17 signatures, over 16"):
        Package.open(bad, [signing_key.public_key()])
    assert Package.open(bad, [signing_key.public_key()], PackageLimits(max_signatures=17)).signer


@pytest.mark.parametrize("doc", [
    {"signatures": {"keyid": "a"}},
    {"signatures": [{"keyid": 7, "sig": "AAAA"}]},
    {"signatures": [{"keyid": "ab" * 32, "sig": "AAAA"}]},  # 3 bytes, not 64
    [[[[[[[[[[]]]]]]]]]],
])
def test_malformed_signature_file(onnx_pkg, signing_key, doc):
    bad = rezip([(n, json.dumps(doc).encode() if n == "signature.json" else b) for n, b in entries(onnx_pkg)])
    with pytest.raises(SignatureError, match="malformed"):
        Package.open(bad, [signing_key.public_key()])


# -- only listed entries, and well-formed envelopes --------------------------------------


@pytest.fixture(scope="module")
def encrypted(onnx_pkg, signing_key, node_key) -> bytes:
    return encrypt_package(Package.open(onnx_pkg, [signing_key.public_key()])).data


@pytest.fixture(scope="module")
def with_envelope(onnx_pkg, signing_key, node_key) -> bytes:
    enc = encrypt_package(Package.open(onnx_pkg, [signing_key.public_key()]))
    envs = [seal_data_key(k, "node-1", node_key.public_key(), "ctr", 1, a) for a, k in enc.data_keys.items()]
    return add_envelopes(enc.data, envs)


def test_a_legitimate_envelope_added_after_signing_is_accepted(with_envelope, signing_key, node_key):
    pkg = Package.open(with_envelope, [signing_key.public_key()])
    assert list(pkg.envelope_entries()) == [Envelope.from_bytes(b).entry_name for b in pkg.envelope_entries().values()]
    model = EdgeModel.load(pkg, recipient_key=node_key, recipient_id="node-1")
    assert model.info.name == "ctr"
    model.close()


def _envelope(with_envelope: bytes) -> tuple[str, dict[str, object]]:
    name, body = next((n, b) for n, b in entries(with_envelope) if n.startswith("envelopes/"))
    return name, json.loads(body)


def _bad_envelope_cases(with_envelope: bytes) -> dict[str, tuple[str, bytes]]:
    name, doc = _envelope(with_envelope)
    digest = name.rsplit("/", 1)[1]
    return {
        "junk name": ("envelopes/node-1/evil.bin", b"x"),
        "nested": (f"envelopes/node-1/sub/{digest}", b"{}"),
        "upper-case recipient": (f"envelopes/NODE/{digest}", json.dumps(doc).encode()),
        "not json": (f"envelopes/node-2/{digest}", b"\x00\x01junk"),
        "other package": (f"envelopes/node-2/{digest}", json.dumps({**doc, "recipient": "node-2",
                                                                         "version": 9}).encode()),
        "under another recipient's name": (f"envelopes/node-2/{digest}", json.dumps(doc).encode()),
        "sealed key of the wrong size": (f"envelopes/node-2/{digest}",
                                         json.dumps({**doc, "recipient": "node-2", "sealed": "AAAA"}).encode()),
        "oversized": (f"envelopes/node-2/{digest}", json.dumps({**doc, "pad": "x" * 5000}).encode()),
    }


@pytest.mark.parametrize("case", ["junk name", "nested", "upper-case recipient", "not json", "other package",
                                  "under another recipient's name", "sealed key of the wrong size", "oversized"])
def test_junk_under_envelopes_is_refused_by_open_load_and_verify(case, with_envelope, signing_key, node_key,
                                                                  trusted_key_file, tmp_path):
    extra = _bad_envelope_cases(with_envelope)[case]
    bad = rezip([*entries(with_envelope), extra])
    with pytest.raises(UnsafeEntryError):
        Package.open(bad, [signing_key.public_key()])
    with pytest.raises(UnsafeEntryError):
        EdgeModel.load(bad, [signing_key.public_key()], recipient_key=node_key, recipient_id="node-1")
    path = tmp_path / "bad.edgepkg"
    path.write_bytes(bad)
    result = CliRunner().invoke(cli, ["package", "verify", str(path), "-k", str(trusted_key_file)])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "ok:" not in result.output


def test_envelope_in_a_plaintext_package_is_refused(onnx_pkg, with_envelope, signing_key):
    name, body = next((n, b) for n, b in entries(with_envelope) if n.startswith("envelopes/"))
    with pytest.raises(UnsafeEntryError, match="names no encrypted artifact"):
        Package.open(rezip([*entries(onnx_pkg), (name, body)]), [signing_key.public_key()])


def test_envelope_count_is_bounded(encrypted, signing_key, node_key):
    pkg = Package.open(encrypted, [signing_key.public_key()])
    art = pkg.manifest.artifacts[0].path
    envs = [seal_data_key(b"k" * 32, f"node-{i}", node_key.public_key(), "ctr", 1, art) for i in range(3)]
    data = add_envelopes(encrypted, envs)
    assert len(Package.open(data, [signing_key.public_key()]).envelope_entries()) == 3
    with pytest.raises(OversizedEntryError, match="3 key envelopes exceeds 2"):
        Package.open(data, [signing_key.public_key()], PackageLimits(max_envelopes=2))


@pytest.fixture(scope="module")
def trusted_key_file(tmp_path_factory, signing_key) -> Path:
    path = tmp_path_factory.mktemp("trust") / "publisher.pub"
    path.write_bytes(public_pem(signing_key.public_key()))
    return path
