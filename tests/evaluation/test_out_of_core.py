"""Read by rows from the file, the baselines predict exactly what they predict in memory."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from perturbflow.datasets import read_h5ad_cells
from perturbflow.evaluation.benchmark import build_baseline_predictions
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.row_matrix import RowMatrix, matrix_sha256
from perturbflow.params import SplitsParams, SplitSpec
from perturbflow.preprocess.hvg import hvg_matrix
from perturbflow.splits import split_table_from_params
from perturbflow.splits.data import split_cells, split_design
from perturbflow.splits.effects import training_effects
from tests.support import PERTURBENCH_COLUMNS
from tests.synthetic import evaluation_params

PARAMS = evaluation_params()


@pytest.fixture(scope="module")
def screen(tmp_path_factory, _perturbench_session):
    """The real screen with a CSR ``X_hvg`` (its first 200 genes), on disk, and its splits."""
    adata = _perturbench_session.copy()
    genes = list(adata.var_names[:200])
    adata.obsm["X_hvg"] = hvg_matrix(adata.X, np.arange(200), "csr")
    path = tmp_path_factory.mktemp("ooc") / "screen.h5ad"
    adata.write_h5ad(path)
    specs = {
        "fs": SplitSpec(
            toml=None,
            training={},
            zeroshot={},
            fewshot={"norman19.k562": {"val": ["HK2"], "test": ["KLF1+TGFBR2", "FOXO4", "SGK1"]}},
        ),
        "zs": SplitSpec(toml=None, training={}, zeroshot={"mcfaline23.A172": "test"}, fewshot={}),
    }
    table = split_table_from_params(
        adata.obs, SplitsParams(splits=specs), PERTURBENCH_COLUMNS, project_root="."
    )
    return {"adata": adata, "path": path, "genes": genes, "table": table}


def test_hvg_matrix_formats():
    X = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    cols = np.array([3, 1, 7])
    dense = hvg_matrix(X, cols, "dense")
    csr = hvg_matrix(X, cols, "csr")
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    assert sp.issparse(csr) and csr.format == "csr" and csr.dtype == np.float32
    np.testing.assert_array_equal(csr.toarray(), dense)
    np.testing.assert_array_equal(dense, X[:, cols].toarray())
    assert isinstance(hvg_matrix(X, cols, "auto"), np.ndarray)  # small: dense
    assert isinstance(hvg_matrix(X.toarray(), cols, "auto"), np.ndarray)


def test_hvg_matrix_auto_is_csr_past_the_dense_budget(monkeypatch):
    import perturbflow.preprocess.hvg as hvg

    monkeypatch.setattr(hvg, "DENSE_HVG_MAX_BYTES", 100)
    X = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=0)
    assert sp.issparse(hvg.hvg_matrix(X, np.arange(10), "auto"))


@pytest.mark.parametrize("preload", [False, True])
def test_baselines_read_by_rows_match_the_in_memory_ones(screen, preload):
    adata, table, genes = screen["adata"], screen["table"], screen["genes"]
    dense = adata.copy()
    dense.obsm["X_hvg"] = dense.obsm["X_hvg"].toarray()
    in_memory = build_baseline_predictions(dense, table, genes, PERTURBENCH_COLUMNS, PARAMS)
    cells = read_h5ad_cells(screen["path"])
    assert cells.obsm_keys == ["X_hvg"] and cells.n_obs == adata.n_obs
    on_disk = build_baseline_predictions(
        cells, table, genes, PERTURBENCH_COLUMNS, PARAMS, preload=preload, memory_budget_mib=1
    )
    predictions, reals = in_memory[0], in_memory[1]
    assert set(on_disk[0]) == set(predictions) and set(on_disk[1]) == set(reals)
    for name, pred in predictions.items():
        np.testing.assert_allclose(on_disk[0][name].X, pred.X, rtol=1e-6, atol=1e-7)
        assert list(on_disk[0][name].obs_names) == list(pred.obs_names)
    for split, real in reals.items():
        np.testing.assert_array_equal(on_disk[1][split].X, real.X)
    assert on_disk[2].equals(in_memory[2])


def test_training_effects_and_digest_do_not_depend_on_storage(screen, monkeypatch):
    import perturbflow.loading.row_matrix as row_matrix

    adata, table, genes = screen["adata"], screen["table"], screen["genes"]
    dense = adata.obsm["X_hvg"].toarray()
    holder = ad.AnnData(obs=adata.obs[[]].copy())
    holder.obsm["X_hvg"] = dense
    reference = training_effects(split_cells(holder, table, "fs", genes=genes))
    reader = H5RowReader(screen["path"], key="X_hvg", preload=False)
    lazy = RowMatrix(reader)
    # small blocks: the sums are accumulated over many blocks of rows
    monkeypatch.setattr(row_matrix.row_blocks, "__defaults__", (None, 97))
    holder.obsm["X_hvg"] = adata.obsm["X_hvg"]  # CSR in RAM
    for data in (
        split_cells(holder, table, "fs", genes=genes),
        split_design(adata.obs_names, table, "fs", genes=genes, matrix=reader),
    ):
        assert isinstance(data.X, RowMatrix)
        effects = training_effects(data)
        assert effects.keys == reference.keys
        np.testing.assert_allclose(effects.deltas, reference.deltas, rtol=1e-9, atol=1e-9)
    with pytest.raises(TypeError, match="read by rows"):
        np.asarray(lazy)
    expected = matrix_sha256(dense, genes)
    assert matrix_sha256(lazy, genes) == expected
    assert matrix_sha256(RowMatrix(adata.obsm["X_hvg"]), genes) == expected
    import hashlib

    whole = hashlib.sha256(np.ascontiguousarray(dense).tobytes())
    whole.update("\n".join(genes).encode())
    assert expected == whole.hexdigest()  # the digest of runs hashed the old way


def test_the_streamed_target_signature_equals_the_one_piece_formula():
    from perturbflow.splits.evidence import _streamed_slopes

    rng = np.random.default_rng(0)
    t = rng.normal(2, 1, 500)
    X = np.column_stack([t, 3 * t + rng.normal(0, 0.1, 500), rng.normal(0, 1, (500, 4))])
    rows = np.arange(0, 500, 2)
    sub = X[rows]
    expected = ((sub - sub.mean(0)) * (sub[:, 0] - sub[:, 0].mean())[:, None]).mean(0)
    expected /= sub[:, 0].var()
    import perturbflow.loading.row_matrix as row_matrix

    defaults = row_matrix.row_blocks.__defaults__
    row_matrix.row_blocks.__defaults__ = (None, 37)  # many blocks
    try:
        got, other = _streamed_slopes(X.astype(np.float32), rows, np.array([0, 1]))
    finally:
        row_matrix.row_blocks.__defaults__ = defaults
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert abs(got[1] - 3.0) < 0.05
    constant = X.copy()
    constant[:, 0] = 1.5
    assert _streamed_slopes(constant, rows, np.array([0, 1]))[0] is None
    assert other is not None and abs(other[0] - 1 / 3) < 0.01  # gene 0 on gene 1


def test_target_signatures_in_one_pass_equal_the_per_gene_formula(monkeypatch):
    import perturbflow.loading.row_matrix as row_matrix
    from perturbflow.splits.evidence import Evidence
    from tests.synthetic import make_screen, split_table

    rng = np.random.default_rng(0)
    effects = {("A", p): rng.normal(0, 0.5, 12) for p in ("g1", "g2", "g3+g4")}
    adata = make_screen(effects, n_genes=12, contexts=["A"], noise=0.3)
    table = split_table(adata, {"s": {("A", "g3+g4"): "test"}})
    genes = list(adata.var_names)
    data = split_design(adata.obs_names, table, "s", genes=genes, matrix=adata.X)
    controls = data.X[data.control_rows("ds.A")].astype(np.float64)
    for blocks in (None, 50):  # one block, and many blocks of the controls
        monkeypatch.setattr(row_matrix.row_blocks, "__defaults__", (None, blocks))
        evidence = Evidence(data, training_effects(data))
        assert evidence._target_genes() == ["g1", "g2", "g3", "g4"]
        for gene in ("g1", "g2", "g3", "g4"):
            t = controls[:, genes.index(gene)]
            expected = ((controls - controls.mean(0)) * (t - t.mean())[:, None]).mean(0) / t.var()
            got = evidence._signature("ds.A", gene)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
        assert set(evidence._signatures) == {("ds.A", g) for g in ("g1", "g2", "g3", "g4")}
