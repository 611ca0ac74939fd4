"""merge_datasets: shared genes, dataset column, unique names, kind checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from perturbflow.exceptions import InputError
from perturbflow.preprocess import merge_datasets
from tests.preprocess.support import assert_unchanged, snapshot


@pytest.fixture
def halves(perturbench):
    dataset = perturbench.obs["dataset"]
    norman = perturbench[(dataset == "norman19").to_numpy()].copy()
    mcfaline = perturbench[(dataset == "mcfaline23").to_numpy()].copy()
    return norman, mcfaline


def test_inner_join_in_first_order(halves):
    norman, mcfaline = halves
    mcfaline = mcfaline[:, mcfaline.var_names[::-1][:400]].copy()  # other order, fewer genes
    before = (snapshot(norman), snapshot(mcfaline))
    merged = merge_datasets({"norman19": norman, "mcfaline23": mcfaline})
    assert_unchanged(norman, before[0])
    assert_unchanged(mcfaline, before[1])
    expected = [g for g in norman.var_names if g in set(mcfaline.var_names)]
    assert list(merged.var_names) == expected and len(expected) == 400
    assert merged.n_obs == norman.n_obs + mcfaline.n_obs
    assert list(merged.obs["dataset"].cat.categories) == ["norman19", "mcfaline23"]
    assert (merged.obs["dataset"] == "norman19").sum() == norman.n_obs
    # values follow their genes
    gene = expected[7]
    np.testing.assert_array_equal(
        merged[merged.n_obs - mcfaline.n_obs :, gene].X.toarray(), mcfaline[:, gene].X.toarray()
    )


def test_obs_names_are_prefixed_and_unique(halves):
    norman, _ = halves
    merged = merge_datasets({"a": norman, "b": norman}, dataset_col="source")
    assert merged.obs_names.is_unique and merged.n_obs == 2 * norman.n_obs
    assert merged.obs_names[0] == f"a:{norman.obs_names[0]}"
    assert merged.obs_names[norman.n_obs] == f"b:{norman.obs_names[0]}"
    assert set(merged.obs["source"]) == {"a", "b"}


def test_file_holding_several_datasets_keeps_its_labels(perturbench, halves):
    _, mcfaline = halves
    other = mcfaline.copy()
    del other.obs["dataset"]
    merged = merge_datasets({"perturbench": perturbench, "extra": other})
    assert list(merged.obs["dataset"].cat.categories) == ["norman19", "mcfaline23", "extra"]
    assert (merged.obs["dataset"] == "extra").sum() == other.n_obs
    assert (merged.obs["dataset"] == "norman19").sum() == (
        perturbench.obs["dataset"] == "norman19"
    ).sum()


def test_dataset_name_in_two_inputs_fails(halves):
    norman, mcfaline = halves
    unlabelled = mcfaline.copy()
    del unlabelled.obs["dataset"]  # named by its key, which clashes with norman's own label
    with pytest.raises(
        InputError, match=r"dataset 'norman19' occurs in both 'norman19' and 'k562'"
    ):
        merge_datasets({"norman19": unlabelled, "k562": norman})


def test_kind_mismatch_names_each_dataset(perturbench, papalexi):
    with pytest.raises(InputError) as err:
        merge_datasets({"perturbench": perturbench, "papalexi": papalexi}, dataset_col="ds")
    message = str(err.value)
    assert "different kinds of values" in message
    assert "'counts': ['papalexi']" in message and "'log1p': ['perturbench']" in message


def test_no_shared_gene_and_small_overlap(halves, caplog):
    norman, mcfaline = halves
    renamed = mcfaline.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with pytest.raises(InputError, match="share no gene"):
        merge_datasets({"norman19": norman, "mcfaline23": renamed})
    names = list(renamed.var_names)
    names[:100] = list(mcfaline.var_names[:100])
    renamed.var_names = names
    with caplog.at_level(logging.WARNING):
        merged = merge_datasets({"norman19": norman, "mcfaline23": renamed})
    assert merged.n_vars == 100 and "less than half of the smallest" in caplog.text


def test_empty_input():
    with pytest.raises(InputError, match="no dataset to merge"):
        merge_datasets({})
