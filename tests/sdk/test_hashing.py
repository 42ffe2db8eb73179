"""Hashed id features: the SDK hashes raw ids exactly as Keras Hashing / TensorFlow do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgerec.sdk import (
    EdgeModel,
    FeatureSpec,
    InvalidInputError,
    ModelSignature,
    PackageBuilder,
    PackageError,
    TensorSpec,
)

BINS = 1000
# tf.strings.to_hash_bucket_fast(values, 1000), computed with TensorFlow 2.21.
KNOWN = {"alphabet": 93, "u1": 459, "": 263, "héllo": 151, "12345": 728}


def identity_table_model() -> bytes:
    """score[i] = row index of tag[i]: the model shows which row the SDK chose."""
    table = numpy_helper.from_array(np.arange(BINS, dtype=np.float32).reshape(BINS, 1), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tag"], ["score"], axis=0)], "rows",
        [helper.make_tensor_value_info("tag", TensorProto.INT64, ["b"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b", 1])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.fixture(scope="module")
def model(signing_key):
    sig = ModelSignature((TensorSpec("tag", "int64", (None,)),), (TensorSpec("score", "float32", (None, 1)),))
    b = PackageBuilder("hashed", 1, sig)
    b.add_artifact("m.onnx", identity_table_model(), "onnx")
    b.add_feature(FeatureSpec("tag", "item", "tag", hash_bins=BINS))
    return EdgeModel.load(b.build(signing_key), signing_key.public_key())


def test_strings_hash_like_tensorflow(model):
    out = model.predict({"tag": list(KNOWN)})["score"].ravel()
    assert out.astype(int).tolist() == list(KNOWN.values())


def test_integers_hash_as_their_text(model):
    out = model.predict({"tag": np.array([12345, 7])})["score"].ravel()
    assert out.astype(int).tolist() == [728, 88]


def test_floats_are_refused(model):
    with pytest.raises(InvalidInputError, match="tag: expected string or integer ids to hash"):
        model.predict({"tag": np.array([1.5])})


def test_vocabulary_and_hash_bins_exclude_each_other():
    from edgerec.sdk.manifest import Manifest

    sig = ModelSignature((TensorSpec("tag", "int64", (None,)),), (TensorSpec("score", "float32", (None, 1)),))
    b = PackageBuilder("hashed", 1, sig)
    b.add_artifact("m.onnx", b"x", "onnx")
    doc = json.loads(b.manifest().to_bytes())
    doc["features"] = [{"input": "tag", "role": "item", "field": "tag", "hash_bins": 0}]
    with pytest.raises(PackageError, match="hash_bins: expected an integer >= 1"):
        Manifest.from_dict(doc)
    doc["features"] = [{"input": "tag", "role": "item", "field": "tag", "hash_bins": 5, "vocabulary": "v.json"}]
    with pytest.raises(PackageError, match="not both"):
        Manifest.from_dict(doc)
