"""Sentence cutting: groups, sizes, with-replacement fill, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.loading.sentences import CellGroups, cut_sentences, group_cells


def _cells() -> pd.DataFrame:
    contexts = ["d.A"] * 7 + ["d.B"] * 5
    perts = ["ctrl", "ctrl", "p", "p", "p", "q", "q", "ctrl", "p", "p", "p", "p"]
    split = ["train"] * 5 + ["test"] * 2 + ["train"] * 5
    return pd.DataFrame(
        {
            "context": contexts,
            "perturbation": perts,
            "is_control": [p == "ctrl" for p in perts],
            "s": split,
        }
    )


def test_group_cells_by_context_and_perturbation():
    groups = group_cells(_cells(), split_col="s", label="train", include_controls=False)
    assert groups.keys == [("d.A", "p"), ("d.B", "p")]
    assert [list(r) for r in groups.rows] == [[2, 3, 4], [8, 9, 10, 11]]
    with_ctrl = group_cells(_cells(), split_col="s", label="train", include_controls=True)
    assert ("d.A", "ctrl") in with_ctrl.keys and ("d.B", "ctrl") in with_ctrl.keys
    test = group_cells(_cells(), split_col="s", label="test", include_controls=False)
    assert test.keys == [("d.A", "q")]


@pytest.fixture
def groups() -> CellGroups:
    rng = np.random.default_rng(0)
    sizes = [1, 5, 64, 130, 7]
    rows, start = [], 0
    for n in sizes:
        rows.append(np.arange(start, start + n))
        start += n + int(rng.integers(0, 3))
    return CellGroups(keys=[("c", f"p{i}") for i in range(len(sizes))], rows=rows)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_sentences_cover_each_group_and_stay_in_it(groups, seed):
    rng = None if seed is None else np.random.default_rng(seed)
    sentences, group_of = cut_sentences(groups, cell_set_len=64, rng=rng)
    assert sentences.shape[1] == 64
    # ceil(n / 64) sentences per group, at least one
    assert np.bincount(group_of).tolist() == [1, 1, 1, 3, 1]
    for g, rows in enumerate(groups.rows):
        used = sentences[group_of == g].ravel()
        assert set(used) <= set(rows)  # never a cell of another group
        assert set(used) == set(rows)  # every cell of the group appears (n <= capacity)


def test_small_groups_are_filled_with_replacement(groups):
    sentences, group_of = cut_sentences(groups, cell_set_len=64, rng=np.random.default_rng(0))
    single = sentences[group_of == 0]
    assert (single == groups.rows[0][0]).all()  # a group of one fills with itself
    five = sentences[group_of == 1].ravel()
    assert len(five) == 64 and len(set(five)) == 5


def test_training_sampling_is_seeded_and_fresh(groups):
    a = cut_sentences(groups, cell_set_len=64, rng=np.random.default_rng([3, 0]))[0]
    b = cut_sentences(groups, cell_set_len=64, rng=np.random.default_rng([3, 0]))[0]
    c = cut_sentences(groups, cell_set_len=64, rng=np.random.default_rng([3, 1]))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_evaluation_sentences_are_deterministic_and_cyclic(groups):
    a, group_of = cut_sentences(groups, cell_set_len=64, rng=None)
    b, _ = cut_sentences(groups, cell_set_len=64, rng=None)
    np.testing.assert_array_equal(a, b)
    big = a[group_of == 3].ravel()  # 130 cells in 3 sentences: stored order, then cycle
    np.testing.assert_array_equal(big[:130], groups.rows[3])
    np.testing.assert_array_equal(big[130:], groups.rows[3][: 192 - 130])


def test_empty_groups_and_bad_length():
    empty = CellGroups(keys=[], rows=[])
    sentences, group_of = cut_sentences(empty, cell_set_len=8, rng=None)
    assert sentences.shape == (0, 8) and len(group_of) == 0
    with pytest.raises(ValueError, match="cell_set_len"):
        cut_sentences(empty, cell_set_len=0, rng=None)
