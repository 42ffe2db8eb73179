"""A Keras Hashing layer is lifted: the package hashes raw ids in the SDK, as Keras did in the graph."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.converter.errors import UnsupportedOpError
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk.model import EdgeModel

BINS = 64


def _hashing_model(path, **hashing):
    import keras

    tag = keras.Input((), dtype="string", name="tag")
    ctx = keras.Input((2,), dtype="float32", name="ctx")
    keras.utils.set_random_seed(3)
    rows = keras.layers.Hashing(num_bins=BINS, name="tag_hash", **hashing)(tag)
    emb = keras.layers.Embedding(BINS, 4, name="tag_emb")(rows)
    x = keras.layers.Concatenate()([emb, ctx])
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model({"tag": tag, "ctx": ctx}, {"score": out})
    model.save(path)
    return model


def test_hashing_is_lifted_and_scores_like_the_source(tmp_path, signing_key):
    import tensorflow as tf

    src = _hashing_model(tmp_path / "hash.keras")
    res = convert(tmp_path / "hash.keras", tmp_path / "hash.edgepkg", signing_key,
                  ConvertOptions(quantize="none", formats=("tflite", "ort")))
    feats = {f.input: f for f in res.manifest.features}
    assert feats["tag"].hash_bins == BINS and feats["tag"].vocabulary is None and feats["tag"].id_range is None
    assert res.manifest.signature.input("tag").dtype == "int32"
    lifted = res.manifest.metadata["converter"]["lifted_lookups"]
    assert lifted == [{"input": "tag", "layer": "tag_hash", "kind": "Hashing", "size": BINS}]

    rng = np.random.default_rng(0)
    tags = np.array([f"tag-{i}" for i in rng.integers(0, 500, 40)] + ["", "héllo"])
    ctx = rng.random((len(tags), 2)).astype(np.float32)
    expected = np.asarray(src({"tag": tf.constant(tags), "ctx": tf.constant(ctx)})["score"]).ravel()
    for backend in ("litert", "onnxruntime"):
        with EdgeModel.load(res.path, [signing_key.public_key()], backend=backend, accelerator="cpu") as m:
            got = m.scores(m.predict({"tag": tags, "ctx": ctx}))
            np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kwargs,problem", [({"salt": 7}, "salted"), ({"mask_value": ""}, "mask_value")])
def test_hashing_that_the_sdk_cannot_reproduce_is_refused(tmp_path, signing_key, kwargs, problem):
    _hashing_model(tmp_path / "h.keras", **kwargs)
    with pytest.raises(UnsupportedOpError, match=problem):
        convert(tmp_path / "h.keras", tmp_path / "h.edgepkg", signing_key, ConvertOptions(quantize="none"))
    assert not (tmp_path / "h.edgepkg").exists()
