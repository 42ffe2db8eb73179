"""Small CTR models trained in the test session on data with a planted signal.

The click probability depends on a user bias, an item bias and the context,
so a model that learned it has an AUC well above 0.5 and an accuracy check
can fail. Items are Zipf-distributed so some ids are rare (id pruning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_USERS, N_ITEMS, N_CTX, DIM = 60, 1000, 4, 32
USERS = np.array([f"u{i}" for i in range(N_USERS)])
ITEMS = np.arange(N_ITEMS, dtype=np.int64) * 7 + 1000  # sparse raw ids


@dataclass
class CtrData:
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    eval_path: Path
    calib_path: Path
    counts_path: Path


def _rows(rng: np.random.Generator, n: int, ub, ib, v) -> dict[str, np.ndarray]:
    u = rng.integers(0, N_USERS, n)
    pop = 1.0 / (np.arange(N_ITEMS) + 1.0) ** 1.1
    i = rng.choice(N_ITEMS, n, p=pop / pop.sum())
    ctx = rng.normal(size=(n, N_CTX)).astype(np.float32)
    logit = ub[u] + ib[i] + ctx @ v
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {"user": USERS[u], "item": ITEMS[i], "ctx": ctx, "label": label}


@pytest.fixture(scope="session")
def ctr_data(tmp_path_factory) -> CtrData:
    rng = np.random.default_rng(7)
    ub, ib = rng.normal(0, 1.5, N_USERS), rng.normal(0, 1.5, N_ITEMS)
    v = rng.normal(0, 1.0, N_CTX)
    train, ev = _rows(rng, 6000, ub, ib, v), _rows(rng, 3000, ub, ib, v)
    ev["user"][:20] = "never-seen"  # out-of-vocabulary users reach the OOV row
    d = tmp_path_factory.mktemp("ctrdata")
    np.savez(d / "eval.npz", **ev)
    np.savez(d / "calib.npz", **{k: v[:256] for k, v in train.items()})
    np.savez(d / "counts.npz", item=train["item"])
    return CtrData(train, ev, d / "eval.npz", d / "calib.npz", d / "counts.npz")


@dataclass
class KerasModels:
    lookup_path: Path  # .keras with StringLookup(user) + IntegerLookup(item)
    plain: object  # the same trained layers on row-index inputs
    saved_model: Path  # ``plain`` exported as a SavedModel


@pytest.fixture(scope="session")
def keras_models(ctr_data, tmp_path_factory) -> KerasModels:
    import keras

    keras.utils.set_random_seed(1)
    user = keras.Input((), dtype="string", name="user")
    item = keras.Input((), dtype="int64", name="item")
    ctx = keras.Input((N_CTX,), dtype="float32", name="ctx")
    ulook = keras.layers.StringLookup(vocabulary=list(USERS), name="user_lookup")
    ilook = keras.layers.IntegerLookup(vocabulary=list(ITEMS), name="item_lookup")
    uemb = keras.layers.Embedding(N_USERS + 1, DIM, name="user_emb")
    iemb = keras.layers.Embedding(N_ITEMS + 1, DIM, name="item_emb")
    concat = keras.layers.Concatenate(name="concat")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")
    head = keras.layers.Dense(1, activation="sigmoid", name="head")

    def tower(u, i, c):
        return head(hidden(concat([uemb(u), iemb(i), c])))

    model = keras.Model({"user": user, "item": item, "ctx": ctx},
                        {"score": tower(ulook(user), ilook(item), ctx)})
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    t = ctr_data.train
    import tensorflow as tf

    x = {k: tf.constant(t[k]) for k in ("user", "item", "ctx")}  # Keras fit refuses numpy str arrays
    model.fit(x, t["label"], epochs=6, batch_size=128, verbose=0)
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "lookup.keras")

    ui = keras.Input((), dtype="int32", name="user_row")
    ii = keras.Input((), dtype="int32", name="item_row")
    ci = keras.Input((N_CTX,), dtype="float32", name="ctx")
    plain = keras.Model({"user_row": ui, "item_row": ii, "ctx": ci}, {"score": tower(ui, ii, ci)})
    plain.export(str(d / "saved_model"), verbose=False)
    return KerasModels(d / "lookup.keras", plain, d / "saved_model")


def _rows_of(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    u = {k: i + 1 for i, k in enumerate(USERS)}
    it = {int(k): i + 1 for i, k in enumerate(ITEMS)}
    return {
        "user_row": np.array([u.get(x, 0) for x in data["user"]], np.int32),
        "item_row": np.array([it.get(int(x), 0) for x in data["item"]], np.int32),
        "ctx": data["ctx"],
        "label": data["label"],
    }


@pytest.fixture(scope="session")
def rows_of():
    """Raw rows -> the row indices StringLookup/IntegerLookup would give (OOV row 0)."""
    return _rows_of
