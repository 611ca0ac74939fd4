"""H5RowReader: rows equal anndata's in-memory read, whatever the encoding, access or order."""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import shutil

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from perturbflow.exceptions import InputError
from perturbflow.loading import h5ranges, h5reader
from perturbflow.loading.h5reader import H5RowReader, h5ad_identity

N_OBS, N_VARS = 300, 40
ZERO_ROWS = np.r_[0, 5, 100:120, N_OBS - 1]  # all-zero rows of the CSR matrices


def _sparse(rng: np.random.Generator, shape: tuple[int, int], dtype) -> sp.csr_matrix:
    dense = rng.random(shape) * (rng.random(shape) < 0.2) * 10
    dense[ZERO_ROWS[ZERO_ROWS < shape[0]]] = 0
    return sp.csr_matrix(dense.astype(dtype))


def _adata(seed: int = 0, *, dense_x: bool = False) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = _sparse(rng, (N_OBS, N_VARS), np.float64)
    obs_names = [f"c{i}" for i in range(N_OBS)]
    return ad.AnnData(
        X=x.toarray() if dense_x else x,
        obs=pd.DataFrame({"pert": rng.choice(["a", "b"], N_OBS)}, index=obs_names),
        var=pd.DataFrame(index=[f"g{i}" for i in range(N_VARS)]),
        obsm={
            "X_hvg": rng.normal(size=(N_OBS, 16)).astype(np.float32),
            "X_sparse": _sparse(rng, (N_OBS, 24), np.float32),
            "meta": pd.DataFrame({"v": np.arange(N_OBS)}, index=obs_names),
        },
        layers={"counts": rng.poisson(2, (N_OBS, N_VARS)).astype(np.int32), "csc": x.tocsc()},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """CSR-X and dense-X files, uncompressed (memory-mapped) and gzip (read through HDF5)."""
    root = tmp_path_factory.mktemp("h5reader")
    out = {}
    for name, adata, compression in [
        ("csr", _adata(0), None),
        ("dense", _adata(1, dense_x=True), None),
        ("gzip", _adata(2), "gzip"),
    ]:
        out[name] = str(root / f"{name}.h5ad")
        adata.write_h5ad(out[name], compression=compression)
    return out


@functools.cache
def _load(path: str) -> ad.AnnData:
    return ad.read_h5ad(path)


def _expected(path: str, key: str, rows: np.ndarray) -> np.ndarray:
    adata = _load(path)
    name = key.split("/", 1)[-1]
    matrix = adata.X if key == "X" else adata.layers[name] if "layers/" in key else adata.obsm[name]
    got = matrix[rows]
    return (got.toarray() if sp.issparse(got) else np.asarray(got)).astype(np.float32)


ROW_SETS = {
    "random": np.random.default_rng(3).integers(0, N_OBS, 97),  # unsorted, duplicates
    "run": np.arange(40, 90),
    "runs_and_singles": np.r_[np.arange(10, 20), 33, 35, np.arange(200, 210)[::-1], 7],
    "single": np.array([150]),
    "empty": np.array([], dtype=np.int64),
    "ends": np.array([N_OBS - 1, 0, N_OBS - 1]),
    "zero_rows": np.r_[ZERO_ROWS, ZERO_ROWS[:3]],
}


def _reader(path: str, key: str, access: str, monkeypatch) -> H5RowReader:
    if access == "hdf5":  # no memory map, and few runs per HDF5 read to test the grouping
        monkeypatch.setattr(h5reader, "map_plan", lambda ds: None)
        monkeypatch.setattr(h5ranges, "RUNS_PER_READ", 3)
    return H5RowReader(path, key=key, preload=access == "preload")


@pytest.mark.parametrize("access", ["mmap", "hdf5", "preload"])
@pytest.mark.parametrize(
    ("file", "key", "encoding"),
    [
        ("csr", "X", "csr"),
        ("dense", "X", "dense"),
        ("gzip", "X", "csr"),
        ("csr", "X_hvg", "dense"),
        ("csr", "obsm/X_sparse", "csr"),
        ("gzip", "X_sparse", "csr"),
        ("dense", "layers/counts", "dense"),
    ],
)
def test_rows_equal_anndata(files, file, key, encoding, access, monkeypatch) -> None:
    reader = _reader(files[file], key, access, monkeypatch)
    assert (reader.n_rows, reader.encoding, reader.preloaded) == (
        N_OBS,
        encoding,
        access == "preload",
    )
    for name, rows in ROW_SETS.items():
        got = reader.read(rows)
        want = _expected(files[file], key, rows)
        assert got.dtype == np.float32 and got.shape == (len(rows), reader.n_cols), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    if key == "X":
        assert not reader.read(ROW_SETS["zero_rows"]).any()


def test_memory_map_only_where_possible(files, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=h5reader.__name__):
        assert len(H5RowReader(files["csr"], preload=False)._plans) == 2  # chunked data/indices
        assert len(H5RowReader(files["dense"], preload=False)._plans) == 1  # contiguous X
        assert H5RowReader(files["gzip"], preload=False)._plans == {}
    assert "memory-mapped" in caplog.text and "compressed: slow" in caplog.text


def test_perturbench_csr_float64_to_float32(perturbench_path, perturbench) -> None:
    rows = np.random.default_rng(0).integers(0, perturbench.n_obs, 500)
    want = perturbench.X[rows].toarray().astype(np.float32)
    lazy = H5RowReader(perturbench_path, preload=False)
    pre = H5RowReader(perturbench_path, preload=True)
    assert (lazy.encoding, lazy.n_rows, lazy.n_cols) == ("csr", 5961, 500)
    for reader in (lazy, pre):
        got = reader.read(rows)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_auto_preload_follows_budget(files, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=h5reader.__name__):
        assert H5RowReader(files["csr"]).preloaded
        assert "fits the 4096 MiB budget" in caplog.text
        tiny = H5RowReader(files["csr"], memory_budget_mib=0.001)
        assert not tiny.preloaded and "exceeds the 0.001 MiB budget" in caplog.text
    assert not H5RowReader(files["csr"], preload=False, memory_budget_mib=1e6).preloaded
    assert H5RowReader(files["csr"], preload=True, memory_budget_mib=0).preloaded
    rows = ROW_SETS["random"]
    np.testing.assert_array_equal(tiny.read(rows), H5RowReader(files["csr"]).read(rows))


def test_file_opened_once_per_process(files, monkeypatch) -> None:
    opened = []
    real = h5py.File
    monkeypatch.setattr(h5reader.h5py, "File", lambda *a, **k: opened.append(a) or real(*a, **k))
    reader = H5RowReader(files["gzip"], preload=False)
    for _ in range(5):
        reader.read(ROW_SETS["random"])
    assert len(opened) == 1


def test_reopens_after_pid_change(files, monkeypatch) -> None:
    for name in ("csr", "gzip"):
        reader = H5RowReader(files[name], preload=False)
        want = reader.read(ROW_SETS["random"])
        parent_file = reader._file
        monkeypatch.setattr(h5reader.os, "getpid", lambda: -12345)  # "we are a forked child"
        np.testing.assert_array_equal(reader.read(ROW_SETS["random"]), want)
        assert reader._file is not parent_file and reader._pid == -12345
        assert parent_file.id.valid  # the parent's handle is left alone
        monkeypatch.undo()
        reader.close()
        np.testing.assert_array_equal(reader.read(ROW_SETS["random"]), want)  # reopens


def test_pickle_drops_handle_and_maps(files) -> None:
    for preload in (False, True):
        reader = H5RowReader(files["csr"], preload=preload)
        reader.read(ROW_SETS["random"])  # open the handle and the maps
        blob = pickle.dumps(reader)
        clone = pickle.loads(blob)
        assert clone._file is None and clone._maps == {}
        np.testing.assert_array_equal(
            clone.read(ROW_SETS["random"]), reader.read(ROW_SETS["random"])
        )
        if not preload:
            assert len(blob) < 64 * 1024  # no matrix (a memmap would pickle as a full copy)


class _RowDataset(Dataset):
    def __init__(self, reader: H5RowReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.n_rows

    def __getitem__(self, i: int) -> torch.Tensor:
        rows = np.array([i, (i * 7) % self.reader.n_rows, i])
        return torch.from_numpy(self.reader.read(rows))


def test_dataloader_workers_same_rows(files) -> None:
    reader = H5RowReader(files["csr"], preload=False)
    reader.read(np.array([1, 2]))  # the parent holds an open handle before the fork

    def rows(num_workers: int) -> np.ndarray:
        loader = DataLoader(_RowDataset(reader), batch_size=16, num_workers=num_workers)
        out = torch.cat([b.reshape(-1, reader.n_cols) for b in loader]).numpy()
        return out[np.lexsort(out.T[::-1])]

    np.testing.assert_array_equal(rows(2), rows(0))


def test_userblock_big_endian_chunked_csr(tmp_path) -> None:
    """A plain-h5py file: a user block shifts every offset; big-endian data; tiny chunks."""
    x = _sparse(np.random.default_rng(4), (50, 30), np.float64)
    path = tmp_path / "plain.h5ad"
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("layers").create_group("raw")
        g.attrs.update({"encoding-type": "csr_matrix", "shape": x.shape})
        g.create_dataset("data", data=x.data.astype(">f8"), chunks=(7,))
        g.create_dataset("indices", data=x.indices, chunks=(5,))
        g.create_dataset("indptr", data=x.indptr)
        f.create_dataset("X", data=x.toarray().astype(">f4"))
    rows = np.array([49, 3, 3, 0, 10, 11, 12])
    want = x[rows].toarray().astype(np.float32)
    for key in ("layers/raw", "X"):
        reader = H5RowReader(path, key=key, preload=False)
        assert reader._plans  # memory-mapped despite the user block
        np.testing.assert_array_equal(reader.read(rows), want)


def test_bad_memory_map_falls_back_to_hdf5(files, monkeypatch, caplog) -> None:
    real = h5reader.map_plan

    def shifted(ds):
        plan = real(ds)
        return (plan[0], plan[1] + 8) if plan and plan[0] == "contiguous" else plan

    monkeypatch.setattr(h5reader, "map_plan", shifted)
    with caplog.at_level(logging.WARNING, logger=h5reader.__name__):
        reader = H5RowReader(files["dense"], preload=False)
    assert reader._plans == {} and "differs from HDF5" in caplog.text
    rows = ROW_SETS["random"]
    np.testing.assert_array_equal(reader.read(rows), _expected(files["dense"], "X", rows))


def test_unknown_key_lists_and_suggests(files) -> None:
    with pytest.raises(InputError) as err:
        H5RowReader(files["csr"], key="X_hvgg")
    msg = str(err.value)
    assert files["csr"] in msg and "'X_hvgg'" in msg
    assert "X_sparse" in msg and "layers/counts" in msg and "Did you mean 'X_hvg'" in msg


def test_csc_names_file_and_fix(files) -> None:
    with pytest.raises(InputError, match=r"CSC.*scipy\.sparse\.csr_matrix\(adata\.X\)") as err:
        H5RowReader(files["csr"], key="layers/csc")
    assert files["csr"] in str(err.value)


def test_dataframe_obsm_rejected(files) -> None:
    with pytest.raises(InputError, match="encoding 'dataframe'"):
        H5RowReader(files["csr"], key="meta")


def test_missing_and_non_hdf5_files(tmp_path) -> None:
    with pytest.raises(InputError, match="no such h5ad file"):
        H5RowReader(tmp_path / "nope.h5ad")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable h5ad"):
        H5RowReader(tmp_path / "text.h5ad")


def test_bad_rows(files) -> None:
    reader = H5RowReader(files["csr"], preload=False)
    for rows in ([N_OBS], [-1], [[1, 2]], [0.5]):
        with pytest.raises(IndexError):
            reader.read(np.array(rows))


def test_h5ad_identity(files, tmp_path) -> None:
    first = h5ad_identity(files["csr"])
    assert json.loads(json.dumps(first)) == first == h5ad_identity(files["csr"])
    assert (first["n_obs"], first["n_vars"]) == (N_OBS, N_VARS)
    assert first["path"] == os.path.abspath(files["csr"])
    copy = shutil.copy(files["csr"], tmp_path / "copy.h5ad")
    assert h5ad_identity(copy)["fingerprint"] == first["fingerprint"]  # same content
    adata = ad.read_h5ad(copy)
    adata.obs["new"] = 1
    adata.write_h5ad(copy)
    assert h5ad_identity(copy)["fingerprint"] != first["fingerprint"]
    with pytest.raises(InputError, match="no such h5ad file"):
        h5ad_identity(tmp_path / "nope.h5ad")


def _mapped_rss_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, current = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            current = len(fields) >= 6 and fields[-1] == str(path)
        elif current and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_release_drops_the_mapped_pages_from_resident_memory(tmp_path, monkeypatch):
    import anndata as ad
    import scipy.sparse as sp

    import perturbflow.loading.h5reader as h5reader
    from perturbflow.loading.h5reader import H5RowReader

    monkeypatch.setattr(h5reader, "RELEASE_EVERY", 1000)  # by hand first
    monkeypatch.setattr(h5reader, "READ_PIECE", 100_000)  # no read is cut in pieces here

    X = sp.random(20_000, 500, density=0.2, format="csr", dtype=np.float32, random_state=0)
    path = tmp_path / "big.h5ad"
    ad.AnnData(X=X).write_h5ad(path)
    reader = H5RowReader(path, preload=False)
    for start in range(0, 20_000, 2_000):
        reader.read(np.arange(start, start + 2_000))
    assert _mapped_rss_kib(path.resolve()) > 8_000  # ~16 MB of values and indices touched
    reader.release()
    assert _mapped_rss_kib(path.resolve()) < 1_000
    np.testing.assert_array_equal(reader.read(np.array([5, 3])), X[[5, 3]].toarray())
    # and by itself every RELEASE_EVERY lazy reads
    monkeypatch.setattr(h5reader, "RELEASE_EVERY", 4)
    reader._reads = 0
    for _ in range(3):
        reader.read(np.arange(20_000))
    assert _mapped_rss_kib(path.resolve()) > 8_000
    reader.read(np.arange(20_000))  # the 4th: released after the read
    assert _mapped_rss_kib(path.resolve()) < 1_000


def test_a_large_lazy_read_comes_in_pieces_and_equals_one_read(tmp_path, monkeypatch):
    import anndata as ad
    import scipy.sparse as sp

    import perturbflow.loading.h5reader as h5reader
    from perturbflow.loading.h5reader import H5RowReader

    X = sp.random(3_000, 40, density=0.3, format="csr", dtype=np.float32, random_state=1)
    path = tmp_path / "pieces.h5ad"
    ad.AnnData(X=X).write_h5ad(path)
    rows = np.random.default_rng(0).integers(0, 3_000, 2_500)  # unsorted, with repeats
    whole = H5RowReader(path, preload=False).read(rows)
    monkeypatch.setattr(h5reader, "READ_PIECE", 300)
    released = []
    reader = H5RowReader(path, preload=False)
    monkeypatch.setattr(reader, "release", lambda: released.append(1))
    np.testing.assert_array_equal(reader.read(rows), whole)
    np.testing.assert_array_equal(whole, X[rows].toarray())
    assert len(released) == 9  # one per piece
