"""Reading rows from .npz/.parquet/.csv, role guessing, metrics and the selection rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgerec.converter.data import label_column, read_table, select_inputs
from edgerec.converter.errors import DataError
from edgerec.converter.evaluate import auc, log_loss
from edgerec.converter.features import guess_role
from edgerec.converter.prune import magnitude_prune
from edgerec.sdk.manifest import TensorSpec

SPECS = (TensorSpec("user", "string", (None,)), TensorSpec("item", "int64", (None,)),
         TensorSpec("ctx", "float32", (None, 3)))


@pytest.fixture
def frame():
    return pd.DataFrame({"user": ["a", "b", "c"], "item": [10, 20, 30], "ctx_0": [0.1, 0.2, 0.3],
                         "ctx_1": [1.0, 2.0, 3.0], "ctx_2": [5.0, 6.0, 7.0], "label": [0, 1, 1]})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_inputs_are_found_by_name_in_every_format(frame, tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.assign(ctx=[list(r) for r in frame[["ctx_0", "ctx_1", "ctx_2"]].to_numpy()]).drop(
            columns=["ctx_0", "ctx_1", "ctx_2"]).to_parquet(path)
    else:
        np.savez(path, user=frame["user"].to_numpy().astype(str), item=frame["item"].to_numpy(),
                 ctx=frame[["ctx_0", "ctx_1", "ctx_2"]].to_numpy(), label=frame["label"].to_numpy())
    table = read_table(path)
    got = select_inputs(table, SPECS, str(path))
    assert got["user"].tolist() == ["a", "b", "c"] and got["item"].dtype == np.int64
    np.testing.assert_allclose(got["ctx"], [[0.1, 1, 5], [0.2, 2, 6], [0.3, 3, 7]], rtol=1e-6)
    assert got["ctx"].dtype == np.float32
    assert label_column(table, "label", "x").tolist() == [0.0, 1.0, 1.0]


def test_mismatched_data_is_refused_with_names(frame, tmp_path):
    path = tmp_path / "rows.csv"
    frame.drop(columns=["ctx_2"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no column or array for model input\(s\) ctx \(the file has ctx_0"):
        select_inputs(read_table(path), SPECS, "rows.csv")
    with pytest.raises(DataError, match="item holds non-integer values"):
        select_inputs({"user": frame["user"].to_numpy(), "item": np.array([1.5, 2, 3])}, SPECS[:2], "rows.csv")
    with pytest.raises(DataError, match="one class only"):
        label_column({"label": np.ones(3)}, "label", "rows.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported data file type '.json'"):
        read_table(tmp_path / "x.json")


def test_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(float)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    assert log_loss(np.array([1.0, 0.0]), np.array([0.9, 0.1])) == pytest.approx(-np.log(0.9))


def test_magnitude_prune_zeroes_the_smallest_weights():
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5) * np.array([1, -1] * 5).reshape(2, 5)
    out = magnitude_prune(w, 0.3)
    assert np.count_nonzero(out == 0) == 3 and set(np.abs(w[out == 0]).tolist()) == {1.0, 2.0, 3.0}
    assert np.array_equal(out[out != 0], w[out != 0])


@pytest.mark.parametrize(("name", "role"), [("user_id", "user"), ("u_age", "user"), ("movie_genres", "item"),
                                            ("item_id", "item"), ("hour_of_day", "context")])
def test_roles_are_guessed_from_names(name, role):
    assert guess_role(name) == role
