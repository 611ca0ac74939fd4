"""normalize_log1p and select_hvg on the real screens."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.preprocess import normalize_log1p, select_hvg
from tests.preprocess.support import assert_unchanged, snapshot


@pytest.fixture
def papalexi_log1p(papalexi: ad.AnnData) -> ad.AnnData:
    return normalize_log1p(papalexi, target_sum=1e4, kind="counts")


def test_normalize_counts(papalexi):
    before = snapshot(papalexi)
    out = normalize_log1p(papalexi, target_sum=1e4, kind="counts")
    assert_unchanged(papalexi, before)
    assert sp.issparse(out.X)
    np.testing.assert_allclose(np.asarray(out.X.expm1().sum(axis=1)).ravel(), 1e4, rtol=1e-3)
    np.testing.assert_array_equal(out.layers["counts"].toarray(), before["X"])
    record = out.uns["perturbflow"]["normalisation"]
    assert record["input"] == "counts" and record["normalised"] is True
    assert record["target_sum"] == 1e4 and record["target_sum_is_median"] is False
    assert "perturbflow" not in papalexi.uns


def test_normalize_median_target(papalexi):
    library = np.asarray(papalexi.X.sum(axis=1)).ravel()
    out = normalize_log1p(papalexi, target_sum=None, kind="counts")
    median = float(np.median(library[library > 0]))
    assert out.uns["perturbflow"]["normalisation"]["target_sum"] == median == 186.0
    np.testing.assert_allclose(np.asarray(out.X.expm1().sum(axis=1)).ravel(), median, rtol=1e-3)


def test_normalize_log1p_is_an_unchanged_copy(perturbench):
    out = normalize_log1p(perturbench, target_sum=None, kind="log1p")
    assert out is not perturbench and out.X is not perturbench.X
    np.testing.assert_array_equal(out.X.toarray(), perturbench.X.toarray())
    assert "counts" not in out.layers
    assert out.uns["perturbflow"]["normalisation"] == {"input": "log1p", "normalised": False}


def test_normalize_rejects_other_kind(perturbench):
    with pytest.raises(InputError, match="kind='other' must be 'counts' or 'log1p'"):
        normalize_log1p(perturbench, target_sum=None, kind="other")


@pytest.mark.parametrize("flavor", ["seurat", "cell_ranger"])
def test_hvg_on_papalexi(papalexi_log1p, flavor):
    before = snapshot(papalexi_log1p)
    out, genes = select_hvg(papalexi_log1p, n_top_genes=50, flavor=flavor)
    assert_unchanged(papalexi_log1p, before)
    assert len(genes) == 50 == int(out.var["highly_variable"].sum())
    positions = out.var_names.get_indexer(genes)
    assert list(positions) == sorted(positions)  # saved in var order
    assert out.obsm["X_hvg"].dtype == np.float32 and out.obsm["X_hvg"].shape == (out.n_obs, 50)
    np.testing.assert_array_equal(out.obsm["X_hvg"], out[:, genes].X.toarray())
    assert out.uns["perturbflow"]["hvg"] == {"flavor": flavor, "n_top_genes": 50, "n_selected": 50}


def test_hvg_capped_at_varying_genes(perturbench, caplog):
    n_constant = int((perturbench.X.max(axis=0).toarray() == 0).sum())
    assert n_constant > 0  # this subset holds genes with no count at all
    with caplog.at_level(logging.INFO):
        out, genes = select_hvg(perturbench, n_top_genes=2000, flavor="seurat")
    n_varying = perturbench.n_vars - n_constant
    assert len(genes) == n_varying
    # the default n_top_genes on a small panel: said once, at INFO, not a warning
    (record,) = [r for r in caplog.records if "n_top_genes=2000" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert f"500 genes, {n_varying} of which vary" in record.getMessage()
    expected = out[:, genes].X.toarray().astype(np.float32)  # float64 file, float32 obsm
    np.testing.assert_array_equal(out.obsm["X_hvg"], expected)


def test_hvg_constant_genes_cell_ranger():
    rng = np.random.default_rng(0)
    X = np.log1p(rng.poisson(2.0, (200, 30)).astype(np.float64))
    X[:, :5] = 0.0
    X[:, 5:8] = 1.0
    adata = ad.AnnData(X=sp.csr_matrix(X))
    adata.var_names = [f"g{i}" for i in range(30)]
    # raw scanpy fails here ("Bin edges must be unique")
    out, genes = select_hvg(adata, n_top_genes=25, flavor="cell_ranger")
    assert len(genes) == 22 and not set(genes) & {f"g{i}" for i in range(8)}
    out, genes = select_hvg(adata, n_top_genes=10, flavor="seurat")
    assert len(genes) == 10 and not set(genes) & {f"g{i}" for i in range(8)}


def test_hvg_rejects_counts_and_bad_arguments(papalexi, perturbench):
    with pytest.raises(InputError, match="X holds raw counts"):
        select_hvg(papalexi, n_top_genes=50)
    with pytest.raises(InputError, match="Did you mean 'seurat'"):
        select_hvg(perturbench, n_top_genes=50, flavor="surat")
    with pytest.raises(InputError, match="n_top_genes=0 must be at least 1"):
        select_hvg(perturbench, n_top_genes=0)
