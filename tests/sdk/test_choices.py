"""Strings from outside become the SDK's Literal types in one place, with the field named when they do not fit."""

from __future__ import annotations

import json

import pytest

from edgerec.sdk.choices import parse_choice, pick
from edgerec.sdk.errors import EdgeRecError, InvalidInputError, PackageError
from edgerec.sdk.manifest import ACCELERATORS, Artifact, Manifest, ModelSignature, TensorSpec
from edgerec.sdk.model import ACCELERATOR_CHOICES, parse_accelerator
from edgerec.sdk.runtime import BACKEND_CHOICES, BACKENDS, parse_backend


def test_parsers_accept_each_choice_and_name_the_field_otherwise():
    assert [parse_accelerator(a) for a in ACCELERATOR_CHOICES] == ["auto", "cpu", "gpu", "npu"]
    assert [parse_backend(b) for b in BACKEND_CHOICES] == ["auto", "litert", "onnxruntime"]
    assert set(BACKEND_CHOICES) == {"auto", *BACKENDS}
    with pytest.raises(InvalidInputError) as exc:
        parse_accelerator("tpu", "--accelerator")
    assert exc.value.field == "--accelerator"
    assert str(exc.value) == "--accelerator: 'tpu' is not one of auto, cpu, gpu, npu"
    with pytest.raises(InvalidInputError, match="backend: 'tensorflow' is not one of auto, litert, onnxruntime"):
        parse_backend("tensorflow")
    assert issubclass(InvalidInputError, EdgeRecError)


def test_pick_compares_values_not_types():
    assert pick("gpu", ACCELERATORS) == "gpu"
    assert pick("GPU", ACCELERATORS) is None
    assert pick(None, ACCELERATORS) is None
    assert pick(["cpu"], ACCELERATORS) is None
    with pytest.raises(InvalidInputError, match="x: 3 is not one of cpu, gpu, npu"):
        parse_choice(3, ACCELERATORS, "x")


def _manifest(**artifact):
    spec = ModelSignature((TensorSpec("x", "float32", (None, 1)),), (TensorSpec("score", "float32", (None, 1)),))
    art = Artifact("m.onnx", "onnx", "0" * 64, 1)
    doc = json.loads(Manifest("m", 1, "2026-01-01T00:00:00Z", spec, (art,)).to_bytes())
    doc["artifacts"][0].update(artifact)
    return doc


@pytest.mark.parametrize(("artifact", "message"), [
    ({"format": "pb"}, r"manifest.artifacts\[m.onnx\].format: 'pb' is not one of tflite, ort, onnx"),
    ({"accelerators": ["cpu", "tpu"]}, r"manifest.artifacts\[m.onnx\].accelerators: expected some of cpu, gpu, npu"),
    ({"accelerators": []}, r"manifest.artifacts\[m.onnx\].accelerators: expected some of"),
])
def test_manifest_refuses_unknown_formats_and_accelerators(artifact, message):
    with pytest.raises(PackageError, match=message):
        Manifest.from_dict(_manifest(**artifact))


def test_manifest_keeps_the_accelerators_it_was_given():
    m = Manifest.from_dict(_manifest(accelerators=["gpu", "cpu"]))
    assert m.artifacts[0].accelerators == ("gpu", "cpu")
    assert m.artifacts[0].format == "onnx"
