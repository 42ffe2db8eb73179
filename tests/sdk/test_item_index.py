"""ItemIndex (sdk/ranking.py): the vectorized search gives the rows the dict gives, and names unknown ids."""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk.ranking import ItemIndex


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint64])
def test_rows_match_the_dict(dtype):
    rng = np.random.default_rng(1)
    table = rng.choice(10_000, 500, replace=False).astype(dtype)
    index = ItemIndex(table)
    assert dict(index) == {int(v): i for i, v in enumerate(table)}
    wanted = rng.choice(table, 100)
    assert index.rows(wanted).tolist() == [index[int(v)] for v in wanted]
    assert (table[index.rows(wanted)] == wanted).all()


def test_a_repeated_id_takes_its_last_row_as_the_dict_does():
    index = ItemIndex(np.asarray([5, 3, 9, 3], np.int64))
    assert index.rows(np.asarray([3, 5, 9])).tolist() == [3, 0, 2]


@pytest.mark.parametrize(("ids", "unknown"), [([3, 4, 7], 4), ([101], 101), ([-1, 3], -1), ([3, 2**40], 2**40),
                                              ([0], 0)])
def test_the_first_unknown_id_is_named(ids, unknown):
    index = ItemIndex(np.asarray([5, 3, 9, 100], np.int64))
    with pytest.raises(KeyError) as err:
        index.rows(np.asarray(ids, np.int64))
    assert err.value.args == (unknown,)


def test_other_id_types_take_the_dict():
    assert ItemIndex(np.asarray([5, 3], np.int64)).rows(np.asarray([3, 5], np.int32)).tolist() == [1, 0]
    strings = ItemIndex(np.asarray(["a", "b", "c"]))
    assert strings.rows(np.asarray(["c", "a"])).tolist() == [2, 0]
    with pytest.raises(KeyError) as err:
        strings.rows(np.asarray(["z"]))
    assert err.value.args == ("z",)
