"""The MovieLens example end to end on the real data (skipped where the shared data is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "movielens-small"

pytestmark = [
    pytest.mark.data,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "ratings.csv").exists(), reason=f"needs the MovieLens data at {DATA}"),
]


def test_split_is_by_time_within_each_user_and_the_model_learns():
    sys.path.insert(0, str(ROOT / "examples" / "movielens"))
    try:
        import movielens
    finally:
        sys.path.pop(0)
    split = movielens.load(DATA)
    n_train, n_eval = len(split.train["label"]), len(split.eval["label"])
    assert n_train + n_eval == 100_836  # every rating of ml-latest-small, once
    assert 0.75 < n_train / (n_train + n_eval) < 0.85
    assert set(np.unique(split.eval["user_id"])) <= set(np.unique(split.train["user_id"]))
    assert 0.4 < split.train["label"].mean() < 0.6  # rating >= 4
    model = movielens.train(split, epochs=1)
    from edgerec.converter.evaluate import auc

    scores = np.asarray(model.predict({k: split.eval[k] for k in movielens.INPUTS}, verbose=0)["score"]).ravel()
    assert auc(split.eval["label"].astype(np.float64), scores.astype(np.float64)) > 0.7
