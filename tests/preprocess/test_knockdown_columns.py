"""A disabled knockdown filter does not demand its columns; an enabled one names its key."""

from __future__ import annotations

import dataclasses

import anndata as ad
import pytest

from perturbflow.exceptions import InputError
from perturbflow.preprocess import preprocess_adata
from perturbflow.preprocess.stream import preprocess_h5ad
from tests.preprocess.test_stream import KNOCKDOWN, PARAMS
from tests.support import PERTURBENCH_COLUMNS, PERTURBENCH_PATH

# the user's file of the report: the perturbation and cell-type columns, nothing else
TYPE_PARAMS = dataclasses.replace(
    PARAMS, n_top_genes=200, knockdown=dataclasses.replace(KNOCKDOWN, type_col="perturbation_type")
)


@pytest.fixture(scope="module")
def without_type(tmp_path_factory) -> tuple[ad.AnnData, str]:
    adata = ad.read_h5ad(PERTURBENCH_PATH)
    adata.obs = adata.obs.drop(columns=["perturbation_type"])
    path = tmp_path_factory.mktemp("kd") / "no_type.h5ad"
    adata.write_h5ad(path)
    return adata, str(path)


def test_a_disabled_filter_runs_without_its_type_column(without_type):
    adata, path = without_type
    params = dataclasses.replace(
        TYPE_PARAMS, knockdown=dataclasses.replace(TYPE_PARAMS.knockdown, enabled=False)
    )
    processed, _, report = preprocess_adata(adata.copy(), PERTURBENCH_COLUMNS, params, source=path)
    assert processed.n_obs == adata.n_obs  # disabled: nothing dropped
    assert report["perturbations"]["dropped"] == 0
    written, _, _ = preprocess_h5ad(path, PERTURBENCH_COLUMNS, params, source=path)  # streamed
    assert ad.read_h5ad(written.path).n_obs == adata.n_obs


def test_an_enabled_filter_names_its_parameter_key(without_type):
    adata, path = without_type
    with pytest.raises(InputError) as err:
        preprocess_adata(adata.copy(), PERTURBENCH_COLUMNS, TYPE_PARAMS, source=path)
    message = str(err.value)
    assert message.startswith(f"{path}: obs column 'perturbation_type'")
    assert "(preprocessing.knockdown.type_col) is missing" in message
    with pytest.raises(InputError, match=r"\(preprocessing\.knockdown\.type_col\) is missing"):
        preprocess_h5ad(path, PERTURBENCH_COLUMNS, TYPE_PARAMS, source=path)
