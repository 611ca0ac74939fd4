"""Tests of the hand-written Kedro AnnData dataset (perturbflow.datasets.AnnDataDataset)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import uuid
from pathlib import Path

import anndata as ad
import fsspec
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version
from kedro_datasets.partitions import PartitionedDataset

from perturbflow.datasets import AnnDataDataset, describe_h5ad

DATASET_TYPE = "perturbflow.datasets.AnnDataDataset"


# ---- helpers -----------------------------------------------------------------------------


def make_adata(kind: str = "csr", n_obs: int = 40, n_vars: int = 12, seed: int = 0) -> ad.AnnData:
    """A small AnnData with string/int/float/categorical obs, obsm, a layer and uns."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.0, size=(n_obs, n_vars)).astype(np.float32)
    x = {"dense": dense, "csr": sp.csr_matrix(dense), "csc": sp.csc_matrix(dense)}[kind]
    obs = pd.DataFrame(
        {
            "pert": [f"p{i % 4}" for i in range(n_obs)],  # plain strings (object dtype)
            "celltype": pd.Categorical([["a", "b"][i % 2] for i in range(n_obs)]),
            "n_counts": dense.sum(axis=1).astype(np.int64),
            "score": rng.normal(size=n_obs),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(
        {"gene_symbol": [f"G{j}" for j in range(n_vars)]},
        index=[f"ENSG{j:05d}" for j in range(n_vars)],
    )
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.obsm["X_pca"] = rng.normal(size=(n_obs, 3))
    adata.layers["counts"] = sp.csr_matrix(dense)
    adata.uns["note"] = "generated"
    return adata


def to_array(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with categorical columns as object columns (write_h5ad categorizes strings)."""
    return df.apply(lambda col: col.astype(object) if col.dtype == "category" else col)


def assert_adata_equal(actual: ad.AnnData, expected: ad.AnnData) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(to_array(actual.X), to_array(expected.X))
    assert sp.issparse(actual.X) == sp.issparse(expected.X)
    pd.testing.assert_frame_equal(plain(actual.obs), plain(expected.obs))
    pd.testing.assert_frame_equal(plain(actual.var), plain(expected.var))
    assert set(actual.obsm) == set(expected.obsm)
    for key in expected.obsm:
        np.testing.assert_array_equal(to_array(actual.obsm[key]), to_array(expected.obsm[key]))
    assert set(actual.layers) == set(expected.layers)
    for key in expected.layers:
        np.testing.assert_array_equal(to_array(actual.layers[key]), to_array(expected.layers[key]))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_path(tmp_path: Path) -> Path:
    path = tmp_path / "small.h5ad"
    make_adata("csr").write_h5ad(path)
    return path


# ---- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_round_trip_generated(tmp_path: Path, kind: str) -> None:
    adata = make_adata(kind)
    dataset = AnnDataDataset(filepath=str(tmp_path / "nested" / "out.h5ad"))
    dataset.save(adata)
    loaded = dataset.load()
    assert not loaded.isbacked
    assert_adata_equal(loaded, adata)
    assert type(loaded.X) is type(adata.X)
    assert loaded.uns["note"] == "generated"


def test_round_trip_real_file_with_compression(perturbench: ad.AnnData, tmp_path: Path) -> None:
    dataset = AnnDataDataset(filepath=tmp_path / "pb.h5ad", save_args={"compression": "gzip"})
    dataset.save(perturbench)
    loaded = dataset.load()
    assert_adata_equal(loaded, perturbench)
    pd.testing.assert_frame_equal(loaded.obs, perturbench.obs)  # all categorical already
    with h5py.File(tmp_path / "pb.h5ad", "r") as f:
        assert f["X/data"].compression == "gzip"


def test_load_args_are_passed_to_read_h5ad(small_path: Path) -> None:
    dense_path = small_path.with_name("dense.h5ad")
    make_adata("dense").write_h5ad(dense_path)
    loaded = AnnDataDataset(filepath=dense_path, load_args={"as_sparse": ["X"]}).load()
    assert sp.issparse(loaded.X)


def test_save_does_not_modify_the_object(tmp_path: Path) -> None:
    adata = make_adata("csr")
    obs_before, var_before = adata.obs.copy(), adata.var.copy()
    x_before = adata.X.copy()
    AnnDataDataset(filepath=tmp_path / "out.h5ad").save(adata)
    assert adata.obs["pert"].dtype == object  # anndata's write_h5ad would make it categorical
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    pd.testing.assert_frame_equal(adata.var, var_before)
    assert (adata.X != x_before).nnz == 0
    assert not adata.isbacked


def test_save_view(tmp_path: Path) -> None:
    adata = make_adata("csr")
    view = adata[adata.obs["celltype"] == "a", 2:7]
    dataset = AnnDataDataset(filepath=tmp_path / "view.h5ad")
    dataset.save(view)
    assert view.is_view
    assert_adata_equal(dataset.load(), view.copy())


def test_save_rejects_non_anndata(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="can only save an anndata.AnnData"):
        AnnDataDataset(filepath=tmp_path / "x.h5ad").save(pd.DataFrame({"a": [1]}))


def test_saved_file_has_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "perm.h5ad"
    AnnDataDataset(filepath=target).save(make_adata())
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_memory_filesystem_round_trip() -> None:
    # kedro drops the "host" part of non-cloud URLs (memory://a/b -> /b): use an empty host
    path = f"memory:///perturbflow-tests/{uuid.uuid4().hex}/cells.h5ad"
    adata = make_adata("dense")
    dataset = AnnDataDataset(filepath=path)
    try:
        assert not dataset.exists()
        dataset.save(adata)
        assert dataset.exists()
        assert_adata_equal(dataset.load(), adata)
        assert dataset.preview(2)["summary"]["n_obs"] == adata.n_obs
        with pytest.raises(DatasetError, match="needs a local file"):
            AnnDataDataset(filepath=path, backed=True).load()
    finally:
        fsspec.filesystem("memory").rm(path.rsplit("/", 1)[0], recursive=True)


# ---- backed mode -------------------------------------------------------------------------


def test_backed_load_is_lazy(perturbench_path: Path) -> None:
    loaded = AnnDataDataset(filepath=perturbench_path, backed=True).load()
    try:
        assert loaded.isbacked
        assert Path(loaded.filename) == perturbench_path
        assert not sp.issparse(loaded.X)  # an on-disk CSR dataset, not a scipy matrix
        assert isinstance(loaded.X, ad.abc.CSRDataset)
        assert loaded.n_obs == 5961
        assert loaded.n_vars == 500
    finally:
        loaded.file.close()


def test_save_backed_object(perturbench_path: Path, perturbench: ad.AnnData, tmp_path: Path):
    backed = AnnDataDataset(filepath=perturbench_path, backed=True).load()
    try:
        out = AnnDataDataset(filepath=tmp_path / "copy.h5ad")
        out.save(backed)
        # the backed object still points at its own file, untouched
        assert backed.isbacked
        assert Path(backed.filename) == perturbench_path
        assert backed.file.is_open
        assert_adata_equal(out.load(), perturbench)
    finally:
        backed.file.close()


def test_backed_reader_survives_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "live.h5ad"
    first, second = make_adata("dense", seed=1), make_adata("dense", seed=2)
    AnnDataDataset(filepath=path).save(first)
    reader = AnnDataDataset(filepath=path, backed=True).load()
    try:
        AnnDataDataset(filepath=path).save(second)  # replaced, not written in place
        np.testing.assert_array_equal(reader.X[:], first.X)
        np.testing.assert_array_equal(AnnDataDataset(filepath=path).load().X, second.X)
    finally:
        reader.file.close()


def test_backed_must_be_bool_and_not_in_load_args(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'backed' must be true or false"):
        AnnDataDataset(filepath=tmp_path / "a.h5ad", backed="r+")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="instead of 'load_args"):
        AnnDataDataset(filepath=tmp_path / "a.h5ad", load_args={"backed": "r"})


# ---- atomic save -------------------------------------------------------------------------


def _failing_write(self: ad.AnnData, filename, **kwargs) -> None:
    Path(filename).write_bytes(b"\x89HDF\r\n\x1a\n half-written garbage")
    raise OSError("disk full (simulated)")


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "out.h5ad"
    original = make_adata("csr", seed=1)
    dataset = AnnDataDataset(filepath=target)
    dataset.save(original)
    digest = sha256(target)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(make_adata("csr", seed=2))
    monkeypatch.undo()

    assert sha256(target) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]  # no temp file left
    assert_adata_equal(dataset.load(), original)


def test_failed_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dataset = AnnDataDataset(filepath=tmp_path / "out.h5ad")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(make_adata())
    assert list(tmp_path.iterdir()) == []
    assert not dataset.exists()


# ---- versioning --------------------------------------------------------------------------


def test_versioned_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "versioned.h5ad"
    v1, v2 = "2024-01-01T00.00.00.000Z", "2024-01-02T00.00.00.000Z"
    first, second = make_adata("csr", seed=1), make_adata("dense", seed=2)

    assert not AnnDataDataset(filepath=path, version=Version(None, None)).exists()
    AnnDataDataset(filepath=path, version=Version(None, v1)).save(first)
    AnnDataDataset(filepath=path, version=Version(None, v2)).save(second)

    assert (path / v1 / "versioned.h5ad").is_file()
    assert (path / v2 / "versioned.h5ad").is_file()
    latest = AnnDataDataset(filepath=path, version=Version(None, None))
    assert latest.exists()
    assert latest.list_versions(full_path=False) == [v2, v1]
    assert_adata_equal(latest.load(), second)
    assert_adata_equal(AnnDataDataset(filepath=path, version=Version(v1, None)).load(), first)
    with pytest.raises(DatasetError, match="must not exist"):
        AnnDataDataset(filepath=path, version=Version(None, v1)).save(second)


def test_versioned_autogenerated_version(tmp_path: Path) -> None:
    dataset = AnnDataDataset(filepath=tmp_path / "auto.h5ad", version=Version(None, None))
    adata = make_adata()
    dataset.save(adata)
    assert len(dataset.list_versions()) == 1
    assert_adata_equal(dataset.load(), adata)
    assert dataset.preview(1)["summary"]["n_obs"] == adata.n_obs


def test_versioned_missing(tmp_path: Path) -> None:
    dataset = AnnDataDataset(filepath=tmp_path / "none.h5ad", version=Version(None, None))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="none.h5ad"):
        dataset.load()


# ---- exists / describe / errors ----------------------------------------------------------


def test_exists(tmp_path: Path) -> None:
    dataset = AnnDataDataset(filepath=tmp_path / "e.h5ad")
    assert not dataset.exists()
    dataset.save(make_adata())
    assert dataset.exists()
    dataset.release()
    assert dataset.exists()


def test_describe(tmp_path: Path) -> None:
    version = Version(None, None)
    dataset = AnnDataDataset(
        filepath=tmp_path / "d.h5ad",
        backed=True,
        load_args={"chunk_size": 100},
        save_args={"compression": "gzip"},
        version=version,
        metadata={"kedro-viz": {"layer": "raw"}},
    )
    described = dataset._describe()
    assert str(described["filepath"]) == (tmp_path / "d.h5ad").as_posix()
    assert described["backed"] is True
    assert described["load_args"] == {"chunk_size": 100}
    assert described["save_args"] == {"compression": "gzip"}
    assert described["version"] == version
    assert dataset.metadata == {"kedro-viz": {"layer": "raw"}}
    text = repr(dataset)
    assert "d.h5ad" in text
    assert "backed=True" in text


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "missing.h5ad"
    dataset = AnnDataDataset(filepath=missing)
    with pytest.raises(DatasetError, match=f"No h5ad file at '{missing}'"):
        dataset.load()
    with pytest.raises(DatasetError, match="missing.h5ad"):
        dataset.preview()
    with pytest.raises(FileNotFoundError, match="missing.h5ad"):
        describe_h5ad(missing)


def test_not_an_hdf5_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.h5ad"
    bogus.write_text("cell,gene\n1,2\n")
    dataset = AnnDataDataset(filepath=bogus)
    pattern = f"'{bogus}' is not a valid h5ad file"
    with pytest.raises(DatasetError, match=pattern):
        dataset.load()
    with pytest.raises(DatasetError, match=pattern):
        dataset.preview()
    with pytest.raises(ValueError, match=pattern):
        describe_h5ad(bogus)


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_hdf5_but_not_anndata(tmp_path: Path) -> None:
    other = tmp_path / "other.h5ad"
    with h5py.File(other, "w") as f:
        f["matrix"] = np.zeros((3, 3))
    with pytest.raises(DatasetError, match=f"Could not read '{other}' as an h5ad file"):
        AnnDataDataset(filepath=other).load()
    with pytest.raises(DatasetError, match=f"'{other}' is not a valid h5ad file"):
        AnnDataDataset(filepath=other).preview()


# ---- describe_h5ad / preview -------------------------------------------------------------


@pytest.mark.parametrize(("kind", "encoding"), [("dense", "array"), ("csr", "csr_matrix")])
def test_describe_h5ad_generated(tmp_path: Path, kind: str, encoding: str) -> None:
    path = tmp_path / f"{kind}.h5ad"
    make_adata(kind, n_obs=30, n_vars=7).write_h5ad(path)
    info = describe_h5ad(path)
    assert info["n_obs"] == 30
    assert info["n_vars"] == 7
    assert info["X_encoding"] == encoding
    assert info["X_format"] == {"array": "dense", "csr_matrix": "csr"}[encoding]
    assert info["X_dtype"] == "float32"
    assert info["obs_columns"] == ["pert", "celltype", "n_counts", "score"]
    assert info["var_columns"] == ["gene_symbol"]
    assert info["obsm_keys"] == ["X_pca"]
    assert info["layers_keys"] == ["counts"]
    assert info["has_raw"] is False


def test_describe_h5ad_real_file(perturbench_path: Path) -> None:
    info = describe_h5ad(perturbench_path)
    assert (info["n_obs"], info["n_vars"]) == (5961, 500)
    assert info["X_encoding"] == "csr_matrix"
    assert "condition" in info["obs_columns"]
    assert info["obsm_keys"] == []


@pytest.fixture
def x_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every h5py dataset read; make any full read of the file fail loudly."""
    reads: list[str] = []
    original = h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kwargs):
        reads.append(self.name)
        return original(self, args, *rest, **kwargs)

    def no_full_read(*args, **kwargs):
        raise AssertionError("preview must not load the whole AnnData")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(ad, "read_h5ad", no_full_read)
    return reads


def test_preview_real_file_reads_no_x(perturbench_path: Path, x_reads: list[str]) -> None:
    preview = AnnDataDataset(filepath=perturbench_path).preview(nrows=3)
    assert x_reads, "the spy should have seen the obs reads"
    assert not [name for name in x_reads if name.startswith("/X")]

    expected = ad.io.read_elem(h5py.File(perturbench_path, "r")["obs"]).iloc[:3]
    assert preview["columns"] == ["obs_name", *expected.columns]
    assert preview["index"] == [0, 1, 2]
    assert [row[0] for row in preview["data"]] == list(expected.index)
    assert preview["data"][0][1:] == expected.iloc[0].tolist()
    summary = preview["summary"]
    assert (summary["n_obs"], summary["n_vars"]) == (5961, 500)
    assert summary["X_encoding"] == "csr_matrix"
    assert summary["X_format"] == "csr"
    assert summary["obsm_keys"] == []
    json.dumps(preview, allow_nan=False)


def test_preview_generated_dense(tmp_path: Path, x_reads: list[str]) -> None:
    path = tmp_path / "dense.h5ad"
    adata = make_adata("dense", n_obs=10)
    adata.obs.loc["cell1", "score"] = np.nan
    adata.obs["maybe"] = pd.array([1, None] * 5, dtype="Int64")  # nullable column
    adata.write_h5ad(path)
    preview = AnnDataDataset(filepath=path).preview()
    assert not [name for name in x_reads if name.startswith("/X")]
    assert len(preview["data"]) == 5
    assert preview["columns"] == ["obs_name", "pert", "celltype", "n_counts", "score", "maybe"]
    first, second = preview["data"][0], preview["data"][1]
    assert first[:4] == ["cell0", "p0", "a", int(adata.obs["n_counts"].iloc[0])]
    assert isinstance(first[3], int)
    assert second[4] is None  # NaN score
    assert second[5] is None  # <NA>
    assert preview["summary"]["X_encoding"] == "array"
    assert preview["summary"]["obsm_keys"] == ["X_pca"]
    json.dumps(preview, allow_nan=False)


def test_preview_nrows_larger_than_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.h5ad"
    make_adata(n_obs=3).write_h5ad(path)
    assert len(AnnDataDataset(filepath=path).preview(nrows=50)["data"]) == 3
    assert AnnDataDataset(filepath=path).preview(nrows=0)["data"] == []


def test_preview_type_for_kedro_viz() -> None:
    # kedro-viz reads the return annotation's name to pick the renderer ("table")
    annotation = inspect.signature(AnnDataDataset.preview).return_annotation
    assert getattr(annotation, "__name__", str(annotation)) == "TablePreview"


# ---- Kedro integration -------------------------------------------------------------------


def test_data_catalog_from_config(perturbench_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "02_intermediate" / "cells.h5ad"
    catalog = DataCatalog.from_config(
        {
            "raw_adata": {"type": DATASET_TYPE, "filepath": str(perturbench_path)},
            "raw_backed": {"type": DATASET_TYPE, "filepath": str(perturbench_path), "backed": True},
            "cells": {
                "type": DATASET_TYPE,
                "filepath": str(out),
                "save_args": {"compression": "gzip"},
                "metadata": {"kedro-viz": {"layer": "intermediate"}},
            },
            "cells_versioned": {
                "type": DATASET_TYPE,
                "filepath": str(tmp_path / "v" / "cells.h5ad"),
                "versioned": True,
            },
        }
    )
    raw = catalog.load("raw_adata")
    assert raw.shape == (5961, 500)
    backed = catalog.load("raw_backed")
    assert backed.isbacked
    backed.file.close()

    subset = raw[:100].copy()
    catalog.save("cells", subset)
    assert catalog.exists("cells")
    assert_adata_equal(catalog.load("cells"), subset)

    catalog.save("cells_versioned", subset)
    assert len(list((tmp_path / "v" / "cells.h5ad").iterdir())) == 1
    assert_adata_equal(catalog.load("cells_versioned"), subset)


def test_partitioned_dataset(tmp_path: Path) -> None:
    partitions = PartitionedDataset(
        path=str(tmp_path / "parts"),
        dataset={"type": DATASET_TYPE},
        filename_suffix=".h5ad",
        overwrite=True,
    )
    data = {"split_a/model": make_adata(seed=1), "split_b/model": make_adata(seed=2)}
    partitions.save(data)
    loaded = partitions.load()
    assert sorted(loaded) == sorted(data)
    for key, load in loaded.items():
        assert_adata_equal(load(), data[key])
    assert "AnnDataDataset" in repr(partitions)  # builds a dataset with filepath=""


def test_h5ad_cells_dataset_reads_obs_and_var_only(perturbench_path, tmp_path):
    from perturbflow.datasets import H5adCellsDataset

    dataset = H5adCellsDataset(filepath=str(perturbench_path))
    cells = dataset.load()
    full = ad.read_h5ad(perturbench_path, backed="r")
    assert cells.filename == perturbench_path and cells.isbacked
    assert cells.obs.equals(full.obs)
    assert list(cells.var_names) == list(full.var_names)
    assert (cells.n_obs, cells.n_vars) == full.shape
    preview = dataset.preview(3)
    assert preview["summary"]["n_obs"] == full.n_obs and len(preview["data"]) == 3
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(full)
    with pytest.raises(DatasetError, match="Could not read the cells"):
        H5adCellsDataset(filepath=str(tmp_path / "missing.h5ad")).load()
