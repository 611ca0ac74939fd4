"""Out-of-core preprocessing writes what the in-memory preprocessing returns."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import perturbflow.preprocess.stream as stream
import perturbflow.preprocess.stream_passes as stream_passes
from perturbflow.datasets import AnnDataDataset, read_h5ad_cells
from perturbflow.exceptions import InputError
from perturbflow.io_utils import WrittenH5ad
from perturbflow.params import KnockdownParams, PreprocessingParams
from perturbflow.pipelines.preprocessing.nodes import preprocess
from perturbflow.preprocess import preprocess_adata
from perturbflow.preprocess.stream import preprocess_h5ad, streams
from tests.support import PAPALEXI_COLUMNS, PAPALEXI_PATH, PERTURBENCH_COLUMNS, PERTURBENCH_PATH

KNOCKDOWN = KnockdownParams(
    enabled=True,
    target_col=None,
    type_col=None,
    knockdown_types=["CRISPRi"],
    residual_expression=0.3,
    cell_residual_expression=0.5,
    min_cells=30,
)
PARAMS = PreprocessingParams(
    expected_input="auto",
    target_sum=None,
    n_top_genes=100,
    hvg_flavor="seurat",
    knockdown=KNOCKDOWN,
)


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _assert_same(memory: ad.AnnData, written: ad.AnnData) -> None:
    assert list(written.obs_names) == list(memory.obs_names)
    assert list(written.var_names) == list(memory.var_names)
    np.testing.assert_array_equal(_dense(written.X), _dense(memory.X))
    np.testing.assert_array_equal(_dense(written.obsm["X_hvg"]), _dense(memory.obsm["X_hvg"]))
    assert set(written.layers) == set(memory.layers)
    for name in memory.layers:
        np.testing.assert_array_equal(_dense(written.layers[name]), _dense(memory.layers[name]))
    assert written.obs.dtypes.to_dict() == memory.obs.dtypes.to_dict()
    for col in memory.obs:
        assert written.obs[col].equals(memory.obs[col]), col
    np.testing.assert_array_equal(written.var["highly_variable"], memory.var["highly_variable"])
    for col in ("means", "dispersions", "dispersions_norm"):  # float64 sums vs scanpy's
        np.testing.assert_allclose(written.var[col], memory.var[col], rtol=1e-5, atol=1e-6)
    assert written.uns["perturbflow"] == memory.uns["perturbflow"]


@pytest.mark.parametrize(
    ("path", "columns", "params"),
    [
        (PAPALEXI_PATH, PAPALEXI_COLUMNS, PARAMS),  # raw counts, CRISPRi knockdowns
        (  # log1p, 500 genes: every varying gene is an HVG
            PERTURBENCH_PATH,
            PERTURBENCH_COLUMNS,
            dataclasses.replace(
                PARAMS,
                n_top_genes=2000,
                knockdown=dataclasses.replace(KNOCKDOWN, type_col="perturbation_type"),
            ),
        ),
    ],
)
def test_streamed_output_equals_the_in_memory_one(path, columns, params, monkeypatch):
    memory, memory_genes, memory_report = preprocess_adata(
        ad.read_h5ad(path), columns, params, source=str(path)
    )
    monkeypatch.setattr(stream_passes, "BLOCK_VALUES", 50_000)  # many blocks of a few hundred rows
    written, genes, report = preprocess_h5ad(path, columns, params)
    try:
        assert genes == memory_genes
        assert report == memory_report
        _assert_same(memory, ad.read_h5ad(written.path))
    finally:
        written.discard()
    assert not written.path.parent.exists()


def test_csr_hvg_and_the_catalog_moves_the_file(tmp_path):
    params = dataclasses.replace(PARAMS, hvg_format="csr", out_of_core="always")
    written, genes, _ = preprocess(read_h5ad_cells(PAPALEXI_PATH), PAPALEXI_COLUMNS, params)[:3]
    assert isinstance(written, WrittenH5ad)
    target = tmp_path / "out" / "preprocessed.h5ad"
    AnnDataDataset(filepath=str(target)).save(written)
    assert not written.path.exists() and target.is_file()
    with h5py.File(target) as f:
        assert f["obsm/X_hvg"].attrs["encoding-type"] == "csr_matrix"
    out = ad.read_h5ad(target)
    assert sp.issparse(out.obsm["X_hvg"]) and out.obsm["X_hvg"].shape[1] == len(genes)
    np.testing.assert_array_equal(out.obsm["X_hvg"].toarray(), out[:, genes].X.toarray())
    assert list(read_h5ad_cells(target).obsm_keys) == ["X_hvg"]


def test_bad_values_fail_naming_the_file_and_leave_nothing(tmp_path, papalexi, monkeypatch):
    papalexi.X = papalexi.X.astype(np.float32)
    papalexi.X.data[-5:] = np.nan  # in the last block
    path = tmp_path / "bad.h5ad"
    papalexi.write_h5ad(path)
    monkeypatch.setattr(stream_passes, "BLOCK_VALUES", 50_000)
    before = set(os.listdir(tempfile.gettempdir()))
    with pytest.raises(InputError, match=rf"{path}: X holds 5 NaN value"):
        preprocess_h5ad(path, PAPALEXI_COLUMNS, PARAMS)
    after = set(os.listdir(tempfile.gettempdir()))
    assert not {p for p in after - before if p.startswith("perturbflow-preprocess-")}


def test_when_it_streams(tmp_path, papalexi, monkeypatch):
    cells = read_h5ad_cells(PAPALEXI_PATH)
    assert not streams(cells, PARAMS)  # 12 MB: in memory
    assert streams(cells, dataclasses.replace(PARAMS, out_of_core="always"))
    assert not streams(cells, dataclasses.replace(PARAMS, out_of_core="never"))
    monkeypatch.setattr(stream, "OUT_OF_CORE_ABOVE_BYTES", 1000)
    assert streams(cells, PARAMS)
    assert not streams(papalexi, PARAMS)  # an AnnData in memory is processed in memory
    with pytest.raises(InputError, match="H5adCellsDataset"):
        streams(papalexi, dataclasses.replace(PARAMS, out_of_core="always"))


def test_the_cell_ranger_flavour_is_refused_before_work():
    params = dataclasses.replace(PARAMS, hvg_flavor="cell_ranger")
    with pytest.raises(InputError, match="seurat flavour"):
        preprocess_h5ad(PAPALEXI_PATH, PAPALEXI_COLUMNS, params)


def test_a_killed_runs_temporary_output_is_removed_by_the_next_run(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"{stream.TEMP_PREFIX}{dead.stdout.strip()}-abc"
    alive = tmp_path / f"{stream.TEMP_PREFIX}{os.getpid()}-def"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "preprocessed.h5ad").write_bytes(b"half written")
    written, _, _ = preprocess_h5ad(PAPALEXI_PATH, PAPALEXI_COLUMNS, PARAMS)
    written.discard()
    assert not stale.exists() and alive.exists()
